// fs_cmd.cc: `detux fs ...`, working with file-system images from the host.
//
//   detux fs mkfs IMAGE [--size MIB] [--inodes N]   make an empty image
//   detux fs ls IMAGE [PATH]                        list a directory
//   detux fs cat IMAGE PATH                         print a file
//   detux fs put IMAGE HOSTFILE PATH                copy a host file in
//   detux fs get IMAGE PATH HOSTFILE                copy a file out
//   detux fs mkdir IMAGE PATH                       make a directory
//   detux fs rm IMAGE PATH                          remove a file or empty directory
//   detux fs fsck IMAGE                             validate an image
//   detux fs mount IMAGE DIR [-f]                   mount read-only (FUSE)
//
// Each command loads the whole image into an anonymous region (the loader
// validates it), works on it through the same Fs API a space uses, and, if
// it changed anything, saves it back atomically, holding the image's lock
// from the load to the save (fs.h's ImageLock), so that two commands at once
// never lose one's change.  Errors print one line and exit 1.
#include "fs_cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "fs/fs.h"

namespace {

using detux::fs::Fs;

struct Options {
  std::string image, path, host, mountpoint;
  uint64_t size_mib = 64;
  uint32_t inodes = 0;
  bool foreground = false;
  std::string command;
};

Options g_opt;
detux::fs::ImageLock g_lock;  // held by a command that saves the image back

// An anonymous mapping holding one file system.
class Region {
 public:
  explicit Region(size_t size) : size_(size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    base_ = p == MAP_FAILED ? nullptr : p;
  }
  ~Region() {
    if (base_) munmap(base_, size_);
  }
  void* base() const { return base_; }
  size_t size() const { return size_; }

 private:
  void* base_;
  size_t size_;
};

int fail(const std::string& what) {
  std::fprintf(stderr, "detux fs: %s\n", what.c_str());
  return 1;
}

int fail(const std::string& what, long err) { return fail(what + ": " + detux::fs::error_text(err)); }

// Loads g_opt.image into a fresh region; prints why on failure.
bool open_image(std::unique_ptr<Region>& region, Fs& fs) {
  std::string why;
  auto need = detux::fs::image_region_bytes(g_opt.image, &why);
  if (!need.ok()) return fail(g_opt.image + ": " + why), false;
  region = std::make_unique<Region>(*need);
  if (!region->base()) return fail("cannot map " + std::to_string(*need) + " bytes"), false;
  auto loaded = detux::fs::load(g_opt.image, region->base(), region->size(), &why);
  if (!loaded.ok()) return fail(g_opt.image + ": " + why), false;
  fs = *loaded;
  return true;
}

int save_image(const Fs& fs) {
  std::string why;
  if (!detux::fs::save(fs, g_opt.image, &why, &g_lock).ok()) return fail(why);
  return 0;
}

// What a command printed must have reached stdout (`> /dev/full` is a failure).
int flushed(int rc) {
  if (rc == 0 && (std::fflush(stdout) != 0 || std::ferror(stdout))) return fail("writing to stdout", -errno);
  return rc;
}

int cmd_mkfs() {
  Region r(g_opt.size_mib << 20);
  if (!r.base()) return fail("cannot map the region");
  auto fs = Fs::format(r.base(), r.size(), {g_opt.inodes});
  if (!fs.ok()) return fail("cannot make a file system of " + std::to_string(g_opt.size_mib) + " MiB", fs.err());
  return save_image(*fs);
}

int cmd_ls(Fs& fs) {
  std::string path = g_opt.path.empty() ? "/" : g_opt.path;
  auto st = fs.stat(path);
  if (!st.ok()) return fail(path, st.err());
  if (st->type != detux::fs::kTypeDir) {
    std::printf("%s\n", path.c_str());
    return 0;
  }
  auto es = fs.readdir(path);
  if (!es.ok()) return fail(path, es.err());
  for (const auto& e : *es) {
    auto s = fs.stat(path + "/" + e.name);
    bool dir = e.type == detux::fs::kTypeDir;
    std::printf("%c%s %4u %10llu v%-4llu %s%s\n", dir ? 'd' : '-', s->conflicted ? "!" : " ", s->nlink,
                static_cast<unsigned long long>(s->size), static_cast<unsigned long long>(s->version),
                e.name.c_str(), dir ? "/" : "");
  }
  return 0;
}

int cmd_cat(Fs& fs) {
  auto fd = fs.open(g_opt.path, O_RDONLY);
  if (!fd.ok()) return fail(g_opt.path, fd.err());
  char buf[1 << 16];
  for (;;) {
    auto n = fs.read(*fd, buf, sizeof buf);
    if (!n.ok()) return fail(g_opt.path, n.err());
    if (*n == 0) break;
    if (std::fwrite(buf, 1, *n, stdout) != *n) return fail("writing to stdout", -errno);
  }
  return 0;
}

int cmd_put(Fs& fs) {
  int in = ::open(g_opt.host.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return fail(g_opt.host, -errno);
  auto fd = fs.open(g_opt.path, O_WRONLY | O_CREAT | O_TRUNC);
  if (!fd.ok()) return ::close(in), fail(g_opt.path, fd.err());
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ::close(in), fail(g_opt.host, -errno);
    if (n == 0) break;
    auto w = fs.write(*fd, buf, static_cast<size_t>(n));
    if (!w.ok() || *w != static_cast<size_t>(n)) return ::close(in), fail(g_opt.path, w.ok() ? -ENOSPC : w.err());
  }
  ::close(in);
  return save_image(fs);
}

int cmd_get(Fs& fs) {
  // Everything that can refuse is asked before the host file is truncated.
  auto st = fs.stat(g_opt.path);
  if (!st.ok()) return fail(g_opt.path, st.err());
  if (st->type != detux::fs::kTypeFile) return fail(g_opt.path, -EISDIR);
  struct stat image, host;
  if (::stat(g_opt.image.c_str(), &image) == 0 && ::stat(g_opt.host.c_str(), &host) == 0 &&
      image.st_dev == host.st_dev && image.st_ino == host.st_ino)
    return fail(g_opt.host + ": is the image itself");
  auto fd = fs.open(g_opt.path, O_RDONLY);
  if (!fd.ok()) return fail(g_opt.path, fd.err());
  int out = ::open(g_opt.host.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) return fail(g_opt.host, -errno);
  char buf[1 << 16];
  for (;;) {
    auto n = fs.read(*fd, buf, sizeof buf);
    if (!n.ok()) return ::close(out), fail(g_opt.path, n.err());
    if (*n == 0) break;
    if (::write(out, buf, *n) != static_cast<ssize_t>(*n)) return ::close(out), fail(g_opt.host, -errno);
  }
  return ::close(out) == 0 ? 0 : fail(g_opt.host, -errno);
}

int cmd_rm(Fs& fs) {
  auto st = fs.stat(g_opt.path);
  if (!st.ok()) return fail(g_opt.path, st.err());
  auto r = st->type == detux::fs::kTypeDir ? fs.rmdir(g_opt.path) : fs.unlink(g_opt.path);
  if (!r.ok()) return fail(g_opt.path, r.err());
  return save_image(fs);
}

int cmd_mkdir(Fs& fs) {
  auto r = fs.mkdir(g_opt.path);
  if (!r.ok()) return fail(g_opt.path, r.err());
  return save_image(fs);
}

int cmd_fsck(Fs& fs) {
  auto report = detux::fs::fsck(fs);
  for (const auto& p : report.problems) std::printf("%s\n", p.c_str());
  if (!report.ok()) return 1;
  std::printf("%s: sound, %llu files, %llu directories, %llu blocks used\n", g_opt.image.c_str(),
              static_cast<unsigned long long>(report.files), static_cast<unsigned long long>(report.dirs),
              static_cast<unsigned long long>(report.used_blocks));
  return 0;
}

}  // namespace

CLI::App* add_fs_command(CLI::App& app) {
  auto* fs = app.add_subcommand("fs", "work with detux file-system images");
  fs->require_subcommand(1);
  auto image = [](CLI::App* c) { c->add_option("image", g_opt.image, "the image file")->required(); };
  auto sub = [&](const char* name, const char* help) {
    auto* c = fs->add_subcommand(name, help);
    c->callback([name] { g_opt.command = name; });
    image(c);
    return c;
  };
  auto* mkfs = sub("mkfs", "make an empty image");
  mkfs->add_option("--size", g_opt.size_mib, "size of the file system in MiB (default 64)");
  mkfs->add_option("--inodes", g_opt.inodes, "number of inodes (default: one per 8 blocks)")
      ->check(CLI::Range(uint32_t{2}, static_cast<uint32_t>(detux::fs::kMaxInodes)));
  sub("ls", "list a directory")->add_option("path", g_opt.path, "directory (default /)");
  sub("cat", "print a file")->add_option("path", g_opt.path)->required();
  auto* put = sub("put", "copy a host file into the image");
  put->add_option("hostfile", g_opt.host)->required();
  put->add_option("path", g_opt.path)->required();
  auto* get = sub("get", "copy a file out of the image");
  get->add_option("path", g_opt.path)->required();
  get->add_option("hostfile", g_opt.host)->required();
  sub("mkdir", "make a directory")->add_option("path", g_opt.path)->required();
  sub("rm", "remove a file or an empty directory")->add_option("path", g_opt.path)->required();
  sub("fsck", "validate an image");
  auto* mount = sub("mount", "mount an image read-only with FUSE");
  mount->add_option("dir", g_opt.mountpoint, "mount point")->required();
  mount->add_flag("-f,--foreground", g_opt.foreground, "stay in the foreground");
  return fs;
}

int run_fs_command() {
  const bool writes = g_opt.command == "mkfs" || g_opt.command == "put" || g_opt.command == "mkdir" ||
                      g_opt.command == "rm";
  std::string why;
  if (writes && !g_lock.take(g_opt.image, &why).ok()) return fail(why);
  if (g_opt.command == "mkfs") return cmd_mkfs();
  std::unique_ptr<Region> region;
  Fs fs;
  if (!open_image(region, fs)) return 1;
  if (g_opt.command == "ls") return flushed(cmd_ls(fs));
  if (g_opt.command == "cat") return flushed(cmd_cat(fs));
  if (g_opt.command == "put") return cmd_put(fs);
  if (g_opt.command == "get") return cmd_get(fs);
  if (g_opt.command == "mkdir") return cmd_mkdir(fs);
  if (g_opt.command == "rm") return cmd_rm(fs);
  if (g_opt.command == "fsck") return flushed(cmd_fsck(fs));
  if (g_opt.command == "mount") return mount_fs(fs, g_opt.mountpoint, g_opt.foreground);
  return fail("unknown command " + g_opt.command);
}
