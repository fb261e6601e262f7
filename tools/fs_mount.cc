// fs_mount.cc: `detux fs mount IMAGE DIR`, an image seen through FUSE.
//
// Read-only: ls, stat and cat work; anything that would write gets EROFS
// (the mount is also made with -o ro).  The file system is loaded into
// memory once and served single-threaded (-s), since an Fs is not meant to
// be shared between threads.  Inode numbers, sizes, link counts and logical
// times (as seconds) come from the image, so what a user sees is as
// deterministic as the image; owners are the user who mounted it.
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "fs_cmd.h"

namespace {

using detux::fs::Fs;

Fs* g_fs = nullptr;

// Our errors are -errno, except the conflict mark, which FUSE cannot carry.
int errno_of(long err) { return err == -detux::fs::kEConflict ? -EIO : static_cast<int>(err); }

void fill(const detux::fs::Stat& s, struct stat* st) {
  std::memset(st, 0, sizeof *st);
  st->st_ino = s.ino;
  st->st_mode = (s.type == detux::fs::kTypeDir ? S_IFDIR : S_IFREG) | (s.perm & 0555);
  st->st_nlink = s.nlink;
  st->st_size = static_cast<off_t>(s.size);
  st->st_blocks = static_cast<blkcnt_t>(s.blocks * (detux::fs::kBlockSize / 512));
  st->st_blksize = detux::fs::kBlockSize;
  st->st_mtim.tv_sec = static_cast<time_t>(s.mtime);
  st->st_ctim.tv_sec = static_cast<time_t>(s.ctime);
  st->st_atim = st->st_mtim;
  st->st_uid = getuid();
  st->st_gid = getgid();
}

int op_getattr(const char* path, struct stat* st, fuse_file_info*) {
  auto s = g_fs->stat(path);
  if (!s.ok()) return errno_of(s.err());
  fill(*s, st);
  return 0;
}

int op_readdir(const char* path, void* buf, fuse_fill_dir_t filler, off_t, fuse_file_info*,
               fuse_readdir_flags) {
  auto es = g_fs->readdir(path);
  if (!es.ok()) return errno_of(es.err());
  filler(buf, ".", nullptr, 0, fuse_fill_dir_flags(0));
  filler(buf, "..", nullptr, 0, fuse_fill_dir_flags(0));
  for (const auto& e : *es)
    if (filler(buf, e.name.c_str(), nullptr, 0, fuse_fill_dir_flags(0))) break;
  return 0;
}

int op_open(const char* path, fuse_file_info* fi) {
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) return -EROFS;
  auto fd = g_fs->open(path, O_RDONLY);
  // The image's 256-entry descriptor table is the mount's, not the caller's.
  if (fd.err() == -EMFILE) return -ENFILE;
  if (!fd.ok()) return errno_of(fd.err());
  fi->fh = static_cast<uint64_t>(*fd);
  return 0;
}

int op_read(const char*, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  auto n = g_fs->pread(static_cast<int>(fi->fh), buf, size, static_cast<uint64_t>(off));
  return n.ok() ? static_cast<int>(*n) : errno_of(n.err());
}

int op_release(const char*, fuse_file_info* fi) {
  (void)g_fs->close(static_cast<int>(fi->fh));
  return 0;
}

}  // namespace

int mount_fs(Fs& fs, const std::string& dir, bool foreground) {
  g_fs = &fs;
  fuse_operations ops{};
  ops.getattr = op_getattr;
  ops.readdir = op_readdir;
  ops.open = op_open;
  ops.read = op_read;
  ops.release = op_release;
  std::vector<std::string> args = {"detux-fs", dir, "-s", "-o", "ro,default_permissions,fsname=detux"};
  if (foreground) args.push_back("-f");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return fuse_main(static_cast<int>(argv.size()), argv.data(), &ops, nullptr);
}
