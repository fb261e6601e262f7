// fs_helpers.h: what the file-system tests share.
//
// A Region is an anonymous mapping that holds one file system.  fork_of()
// simulates a space's fork the way the kernel will do it: the child's region
// is a byte copy of the parent's (here at another address; the region holds
// no pointers, so that is the same thing), and the child calls begin_child.
// MemReader lets reconcile read a child's region by memcpy, standing in for
// process_vm_readv.
#pragma once

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>

#include <cstring>
#include <string>

#include "fs/fs.h"

namespace detux::fs::testing {

class Region {
 public:
  explicit Region(size_t size) : size_(size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    base_ = p;
  }
  ~Region() { munmap(base_, size_); }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  void* base() const { return base_; }
  size_t size() const { return size_; }

 private:
  void* base_;
  size_t size_;
};

class MemReader : public RegionReader {
 public:
  explicit MemReader(const Region& r) : r_(r) {}
  Status read(uint64_t off, void* dst, size_t len) override {
    if (off > r_.size() || len > r_.size() - off) return err_status(-EFAULT);
    std::memcpy(dst, static_cast<const char*>(r_.base()) + off, len);
    return ok_status();
  }

 private:
  const Region& r_;
};

inline Fs format_in(Region& r) {
  auto fs = Fs::format(r.base(), r.size());
  EXPECT_TRUE(fs.ok()) << fs.err();
  return *fs;
}

// The child's side of a fork: a copy of the parent's region, begin_child.
inline Fs fork_of(const Fs& parent, Region& child) {
  std::memcpy(child.base(), parent.base(), parent.size());
  auto fs = Fs::attach(child.base(), child.size());
  EXPECT_TRUE(fs.ok()) << fs.err();
  fs->begin_child();
  return *fs;
}

inline void write_file(Fs& fs, const std::string& path, const std::string& data,
                       int flags = O_WRONLY | O_CREAT | O_TRUNC) {
  auto fd = fs.open(path, flags);
  ASSERT_TRUE(fd.ok()) << path << ": " << error_text(fd.err());
  auto n = fs.write(*fd, data.data(), data.size());
  ASSERT_TRUE(n.ok()) << error_text(n.err());
  ASSERT_EQ(*n, data.size());
  ASSERT_TRUE(fs.close(*fd).ok());
}

inline void append_file(Fs& fs, const std::string& path, const std::string& data) {
  write_file(fs, path, data, O_WRONLY | O_CREAT | O_APPEND);
}

// The whole file, or "<error NAME>".
inline std::string read_file(Fs& fs, const std::string& path) {
  auto fd = fs.open(path, O_RDONLY);
  if (!fd.ok()) return "<error " + error_text(fd.err()) + ">";
  std::string out;
  char buf[8192];
  for (;;) {
    auto n = fs.read(*fd, buf, sizeof buf);
    if (!n.ok()) return "<error " + error_text(n.err()) + ">";
    if (*n == 0) break;
    out.append(buf, *n);
  }
  EXPECT_TRUE(fs.close(*fd).ok());
  return out;
}

inline std::string names(Fs& fs, const std::string& dir) {
  auto es = fs.readdir(dir);
  if (!es.ok()) return "<error " + error_text(es.err()) + ">";
  std::string out;
  for (auto& e : *es) out += (out.empty() ? "" : " ") + e.name;
  return out;
}

inline void expect_sound(const Fs& fs) {
  FsckReport r = fsck(fs);
  for (auto& p : r.problems) ADD_FAILURE() << "fsck: " << p;
}

}  // namespace detux::fs::testing
