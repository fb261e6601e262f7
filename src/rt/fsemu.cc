// fsemu.cc: the detux file system inside spaces.
//
// Every space holds a whole file system (src/fs) in one region at a fixed
// address, made by the master when it starts (empty, or loaded from the
// image named by DETUX_FS_IMAGE).  A space's region is a copy-on-write copy
// of its parent's, taken at the fork; Fs::begin_child starts recording what
// the child changes.  At a join (or a wait) the parent reconciles per file
// (fs/reconcile.cc), reading only what the child changed, with Get/Copy.
//
// Programs reach it through the ordinary calls: the filter raises SIGSYS
// for open, openat, stat, unlink, mkdir, rename ... (confine::kEmulatedCalls)
// and sysemu.cc hands those on fds >= 3 and on paths to fs_emulate.  So
// fopen/fprintf/fclose and std::fstream work unchanged.  Paths are taken
// from the root; there is no current directory.  In the master the same
// calls are Linux's: the master reaches the detux file system through
// det_fs_save / det_fs_load (and `detux run --fs IMAGE`).
#include "rt/fsemu.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <dirent.h>

#include <string>
#include <vector>

#include "fs/fs.h"
#include "ptrace/birth.h"

namespace detux::rt {
namespace {

constexpr uint64_t kFsBase = 0x600000000000ULL;  // 96 TiB
constexpr uint64_t kFsSize = 64ULL << 30;
fs::Fs g_fs;
bool g_ready = false;

void* region() { return reinterpret_cast<void*>(kFsBase); }

long err(long e) { return e; }
template <typename T>
long value_or_err(const Result<T>& r) {
  return r.ok() ? static_cast<long>(r.value()) : err(r.err());
}
long status(const Status& s) { return s.ok() ? 0 : s.err(); }

void to_stat(const fs::Stat& in, struct stat* out) {
  memset(out, 0, sizeof *out);
  out->st_dev = 0xde7;
  out->st_ino = in.ino;
  out->st_mode = (in.type == fs::kTypeDir ? S_IFDIR : S_IFREG) | (in.perm & 07777);
  out->st_nlink = in.nlink;
  out->st_size = static_cast<off_t>(in.size);
  out->st_blksize = 4096;
  out->st_blocks = static_cast<blkcnt_t>(in.blocks * 8);
  out->st_mtim.tv_sec = static_cast<time_t>(in.mtime);  // logical time, never the host's
  out->st_ctim.tv_sec = static_cast<time_t>(in.ctime);
}

long stat_path(const char* path, struct stat* out) {
  auto r = g_fs.stat(path);
  if (!r.ok()) return r.err();
  to_stat(*r, out);
  return 0;
}

long stat_fd(long fd, struct stat* out) {
  auto r = g_fs.fstat(static_cast<int>(fd));
  if (!r.ok()) return r.err();
  to_stat(*r, out);
  return 0;
}

// dirfd must be AT_FDCWD (or the path absolute): there is no directory fd.
bool at_ok(long dirfd, const char* path) { return dirfd == AT_FDCWD || (path && path[0] == '/'); }

// Directory descriptors (for opendir/readdir): a snapshot of the entries,
// sorted by name, taken at open.  They live in the runtime's own data, not
// in the region, and are numbered from kFirstDirFd so as never to meet the
// file system's descriptors.
constexpr int kFirstDirFd = 1000, kDirFds = 16;
struct DirFd {
  bool used = false;
  uint32_t ino = 0;
  std::vector<fs::DirEntry>* entries = nullptr;
  size_t pos = 0;
  std::string* path = nullptr;  // as opened: what names relative to it start from
};
DirFd g_dirs[kDirFds];

DirFd* dir_of(long fd) {
  long i = fd - kFirstDirFd;
  return i >= 0 && i < kDirFds && g_dirs[i].used ? &g_dirs[i] : nullptr;
}

long open_dir(const char* path) {
  auto st = g_fs.stat(path);
  if (!st.ok()) return st.err();
  if (st->type != fs::kTypeDir) return -ENOTDIR;
  auto list = g_fs.readdir(path);
  if (!list.ok()) return list.err();
  for (int i = 0; i < kDirFds; ++i) {
    if (g_dirs[i].used) continue;
    g_dirs[i] = DirFd{true, st->ino, new std::vector<fs::DirEntry>(std::move(*list)), 0,
                      new std::string(path)};
    return kFirstDirFd + i;
  }
  return -EMFILE;
}

long close_dir(DirFd* d) {
  delete d->entries;
  delete d->path;
  *d = DirFd{};
  return 0;
}

// linux_dirent64 records, as many as fit.
long getdents(DirFd* d, char* buf, size_t len) {
  size_t at = 0;
  for (; d->pos < d->entries->size(); ++d->pos) {
    const fs::DirEntry& e = (*d->entries)[d->pos];
    size_t reclen = (19 + e.name.size() + 1 + 7) & ~size_t{7};
    if (at + reclen > len) break;
    char* r = buf + at;
    memset(r, 0, reclen);
    uint64_t ino = e.ino, off = d->pos + 1;
    uint16_t rl = static_cast<uint16_t>(reclen);
    memcpy(r, &ino, 8);
    memcpy(r + 8, &off, 8);
    memcpy(r + 16, &rl, 2);
    r[18] = e.type == fs::kTypeDir ? DT_DIR : DT_REG;
    memcpy(r + 19, e.name.data(), e.name.size());
    at += reclen;
  }
  if (at == 0 && d->pos < d->entries->size()) return -EINVAL;  // buffer too small
  return static_cast<long>(at);
}

long do_open(const char* path, long flags, long mode) {
  if (flags & O_DIRECTORY) return open_dir(path);  // opendir
  int keep = static_cast<int>(flags & (O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_APPEND));
  return value_or_err(g_fs.open(path, keep, static_cast<uint32_t>(mode & 07777)));
}

long do_fcntl(long fd, long cmd) {
  if (!g_fs.fstat(static_cast<int>(fd)).ok()) return -EBADF;
  switch (cmd) {
    case F_GETFD: case F_SETFD: case F_SETFL: return 0;
    case F_GETFL: return O_RDWR;
    default: return -EINVAL;
  }
}

struct ChildReader : fs::RegionReader {
  det_child_t child;
  explicit ChildReader(det_child_t c) : child(c) {}
  Status read(uint64_t off, void* dst, size_t len) override {
    if (off > kFsSize || len > kFsSize - off) return Err{-EIO};
    long r = dget(child, DET_COPY, dst, len, reinterpret_cast<char*>(kFsBase) + off);
    return r < 0 ? Status(Err{-EIO}) : ok_status();
  }
};

}  // namespace

void fs_master_init() {
  if (g_ready) return;
  void* p = mmap(region(), kFsSize, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED) return;  // no file system for spaces: its calls fail with ENOSYS
  const char* image = getenv("DETUX_FS_IMAGE");
  std::string why;
  // Held from this load to the save at exit, as `detux fs` commands do: a
  // second run or command on the same image waits instead of losing changes.
  // Never destroyed, nor is the path below: a space that calls exit() runs
  // the master's destructors too, and closed (in the space) a descriptor of
  // its own with the lock's number, and freed the path the master later
  // saved to, once a dlopen had reused its bytes (a review, December 8).
  static fs::ImageLock& s_lock = *new fs::ImageLock;
  if (image && *image && !s_lock.take(image, &why).ok()) {
    fprintf(stderr, "detux: %s\n", why.c_str());
    exit(2);
  }
  if (image && *image && access(image, F_OK) == 0) {
    auto r = fs::load(image, region(), kFsSize, &why);
    if (!r.ok()) {
      fprintf(stderr, "detux: refusing file-system image %s: %s\n", image, why.c_str());
      exit(2);
    }
    g_fs = *r;
  } else {
    fs::FormatOptions opt;
    opt.ninodes = 1 << 16;
    opt.region_is_zero = true;  // just mapped
    auto r = fs::Fs::format(region(), kFsSize, opt);
    if (!r.ok()) return;
    g_fs = *r;
  }
  g_ready = true;
  if (image && *image) {
    static const std::string& s_image = *new std::string(image);
    atexit([] {
      if (g_in_space) return;  // spaces run the master's atexit list too
      std::string why;
      const std::string path = s_image;
      if (!fs::save(g_fs, path, &why, &s_lock).ok()) {
        // The run's file changes are lost: it must not look like a success.
        // (Registered at start-up, this handler runs after the program's.)
        fprintf(stderr, "detux: could not save the file system to %s: %s\n", s_image.c_str(),
                why.c_str());
        fflush(nullptr);
        _exit(74);  // EX_IOERR
      }
    });
  }
}

void fs_region(uint64_t* base, uint64_t* size) {
  *base = kFsBase;
  *size = g_ready ? kFsSize : 0;
}

void fs_exec_init() {
  mmap(region(), kFsSize, PROT_READ | PROT_WRITE,
       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
}

void fs_exec_attach() {
  auto r = fs::Fs::attach(region(), kFsSize);
  if (!r.ok()) return;  // the old program had none: nor has this one
  g_fs = *r;
  g_ready = true;
}

bool fs_read_file(const char* path, std::vector<uint8_t>* out) {
  if (!g_ready) return false;
  auto st = g_fs.stat(path);
  if (!st.ok() || st->type != fs::kTypeFile) return false;
  auto fd = g_fs.open(path, O_RDONLY);
  if (!fd.ok()) return false;
  out->resize(st->size);
  auto n = g_fs.pread(*fd, out->data(), out->size(), 0);
  (void)g_fs.close(*fd);
  return n.ok() && *n == out->size();
}

void fs_child_start() {
  // The parent's directory descriptors hold the parent's memory: a child
  // forgets them (never frees them) and starts with none.  Only those in
  // use are written: the table shares a page of libdetux's data with the
  // master, and a write for nothing would copy it.
  for (DirFd& d : g_dirs)
    if (d.used || d.entries || d.ino || d.pos) d = DirFd{};
  if (g_ready) g_fs.begin_child();
}

long fs_join(det_child_t child, std::string* report) {
  if (!g_ready) return 0;
  ChildReader reader(child);
  auto r = fs::reconcile(g_fs, reader);
  if (!r.ok()) return r.err();
  for (const fs::Conflict& c : r->conflicts) *report += c.path + ": " + c.what + "\n";
  return static_cast<long>(r->conflicts.size());
}

long fs_save(const char* path, std::string* why) {
  if (!g_ready) return -ENOSYS;
  return status(fs::save(g_fs, path, why));
}

long fs_load(const char* path, std::string* why) {
  if (!g_ready) return -ENOSYS;
  // Checked in a scratch region first: a refused image leaves the file
  // system exactly as it was.  The file is read once, so what is checked is
  // what is loaded, even if the file changes meanwhile.
  auto bytes = fs::read_image(path, why);
  if (!bytes.ok()) return bytes.err();
  void* scratch = mmap(nullptr, kFsSize, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (scratch == MAP_FAILED) return -ENOMEM;
  auto check = fs::load_bytes(bytes->data(), bytes->size(), scratch, kFsSize, why);
  munmap(scratch, kFsSize);
  if (!check.ok()) return check.err();
  auto r = fs::load_bytes(bytes->data(), bytes->size(), region(), kFsSize, why);
  if (!r.ok()) return r.err();
  g_fs = *r;
  return 0;
}

bool fs_emulate(long nr, const long a[6], long* result) {
  if (!g_ready) return false;
  auto s = [&](int i) { return reinterpret_cast<const char*>(a[i]); };
  auto fd = [&](int i) { return a[i] >= fs::kFirstFd; };
  long r;
  if (DirFd* d = dir_of(a[0])) {  // a directory descriptor
    switch (nr) {
      case SYS_getdents64: *result = getdents(d, reinterpret_cast<char*>(a[1]), a[2]); return true;
      case SYS_close: *result = close_dir(d); return true;
      case SYS_newfstatat:
        if (s(1) && *s(1)) {  // a name in that directory, not the directory
          std::string name = s(1)[0] == '/' ? std::string(s(1)) : *d->path + "/" + s(1);
          *result = stat_path(name.c_str(), reinterpret_cast<struct stat*>(a[2]));
          return true;
        }
        [[fallthrough]];
      case SYS_fstat: {
        struct stat* out = reinterpret_cast<struct stat*>(nr == SYS_fstat ? a[1] : a[2]);
        memset(out, 0, sizeof *out);
        out->st_mode = S_IFDIR | 0755;
        out->st_ino = d->ino;
        out->st_blksize = 4096;
        *result = 0;
        return true;
      }
      case SYS_lseek: if (a[1] == 0 && a[2] == SEEK_SET) d->pos = 0; *result = 0; return true;
      case SYS_fcntl: *result = 0; return true;
      default: return false;
    }
  }
  switch (nr) {
    case SYS_open: r = do_open(s(0), a[1], a[2]); break;
    case SYS_openat: if (!at_ok(a[0], s(1))) return false; r = do_open(s(1), a[2], a[3]); break;
    case SYS_close: if (!fd(0)) return false; r = status(g_fs.close(static_cast<int>(a[0]))); break;
    case SYS_read: if (!fd(0)) return false; r = value_or_err(g_fs.read(static_cast<int>(a[0]), reinterpret_cast<void*>(a[1]), a[2])); break;
    case SYS_write: if (!fd(0)) return false; r = value_or_err(g_fs.write(static_cast<int>(a[0]), reinterpret_cast<void*>(a[1]), a[2])); break;
    case SYS_pread64: if (!fd(0)) return false; r = value_or_err(g_fs.pread(static_cast<int>(a[0]), reinterpret_cast<void*>(a[1]), a[2], a[3])); break;
    case SYS_pwrite64: if (!fd(0)) return false; r = value_or_err(g_fs.pwrite(static_cast<int>(a[0]), reinterpret_cast<void*>(a[1]), a[2], a[3])); break;
    case SYS_lseek: if (!fd(0)) return false; r = value_or_err(g_fs.lseek(static_cast<int>(a[0]), a[1], static_cast<int>(a[2]))); break;
    case SYS_fstat: if (!fd(0)) return false; r = stat_fd(a[0], reinterpret_cast<struct stat*>(a[1])); break;
    case SYS_newfstatat:
      if ((a[3] & AT_EMPTY_PATH) && s(1) && !*s(1)) {
        if (!fd(0)) return false;
        r = stat_fd(a[0], reinterpret_cast<struct stat*>(a[2]));
      } else {
        if (!at_ok(a[0], s(1))) return false;
        r = stat_path(s(1), reinterpret_cast<struct stat*>(a[2]));
      }
      break;
    case SYS_stat: case SYS_lstat: r = stat_path(s(0), reinterpret_cast<struct stat*>(a[1])); break;
    case SYS_access: r = g_fs.stat(s(0)).ok() ? 0 : -ENOENT; break;
    case SYS_faccessat: case 439 /* faccessat2 */:
      if (!at_ok(a[0], s(1))) return false;
      r = g_fs.stat(s(1)).ok() ? 0 : -ENOENT;
      break;
    case SYS_dup: if (!fd(0)) return false; r = value_or_err(g_fs.dup(static_cast<int>(a[0]))); break;
    case SYS_fcntl: if (!fd(0)) return false; r = do_fcntl(a[0], a[1]); break;
    case SYS_ftruncate: if (!fd(0)) return false; r = status(g_fs.ftruncate(static_cast<int>(a[0]), a[1])); break;
    case SYS_truncate: r = status(g_fs.truncate(s(0), a[1])); break;
    case SYS_unlink: r = status(g_fs.unlink(s(0))); break;
    case SYS_unlinkat:
      if (!at_ok(a[0], s(1))) return false;
      r = status((a[2] & AT_REMOVEDIR) ? g_fs.rmdir(s(1)) : g_fs.unlink(s(1)));
      break;
    case SYS_mkdir: r = status(g_fs.mkdir(s(0), static_cast<uint32_t>(a[1]))); break;
    case SYS_mkdirat: if (!at_ok(a[0], s(1))) return false; r = status(g_fs.mkdir(s(1), static_cast<uint32_t>(a[2]))); break;
    case SYS_rmdir: r = status(g_fs.rmdir(s(0))); break;
    case SYS_rename: r = status(g_fs.rename(s(0), s(1))); break;
    case SYS_renameat: case SYS_renameat2:
      if (!at_ok(a[0], s(1)) || !at_ok(a[2], s(3)) || (nr == SYS_renameat2 && a[4])) return false;
      r = status(g_fs.rename(s(1), s(3)));
      break;
    case SYS_link: r = status(g_fs.link(s(0), s(1))); break;
    case SYS_linkat:
      if (!at_ok(a[0], s(1)) || !at_ok(a[2], s(3)) || a[4]) return false;
      r = status(g_fs.link(s(1), s(3)));
      break;
    default: return false;
  }
  *result = r;
  return true;
}

}  // namespace detux::rt
