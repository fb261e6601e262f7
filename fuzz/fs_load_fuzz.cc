// fs_load_fuzz.cc: libFuzzer target for the image loader (src/fs/image.cc).
//
// Every input is handed to load_bytes as if it were an image file.  The
// loader must refuse it with a reason or give a file system that is sound:
// so after a successful load this target runs fsck (which must find
// nothing), lists every directory and reads every file, and then changes
// the loaded file system a little and checks it again.  A crash, a
// sanitizer report, a refusal without a reason, or an unsound result is a
// finding.
#include <fcntl.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "fs/fs.h"

namespace {

constexpr size_t kRegion = 4 << 20;

void* region() {
  static void* r = mmap(nullptr, kRegion, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (r == MAP_FAILED) std::abort();
  return r;
}

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fs_load_fuzz: %s\n", what);
  std::abort();
}

// Lists and reads everything under dir, at most a few levels down.
void walk(detux::fs::Fs& fs, const std::string& dir, int depth) {
  auto es = fs.readdir(dir);
  check(es.ok(), "readdir of a directory failed");
  for (const auto& e : *es) {
    std::string path = (dir == "/" ? "" : dir) + "/" + e.name;
    if (e.type == detux::fs::kTypeDir) {
      if (depth < 8) walk(fs, path, depth + 1);
      continue;
    }
    auto fd = fs.open(path, O_RDONLY);
    if (!fd.ok()) continue;  // a conflicted file refuses, as it should
    char buf[4096];
    for (int i = 0; i < 64; ++i) {
      auto n = fs.read(*fd, buf, sizeof buf);
      check(n.ok(), "read of an open file failed");
      if (*n == 0) break;
    }
    check(fs.close(*fd).ok(), "close failed");
  }
}

void try_load(const uint8_t* data, size_t size);

}  // namespace

// Each input is tried twice: as it is (the checksums must catch almost any
// mutation) and with its checksums made to match, which takes the mutation
// past them to the structural validation.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try_load(data, size);
  std::vector<uint8_t> fixed(data, data + size);
  if (detux::fs::fix_image_checksums(fixed.data(), fixed.size())) try_load(fixed.data(), fixed.size());
  return 0;
}

namespace {

void try_load(const uint8_t* data, size_t size) {
  std::string why;
  auto fs = detux::fs::load_bytes(data, size, region(), kRegion, &why);
  if (!fs.ok()) {
    check(!why.empty(), "refused without a reason");
    return;
  }
  check(detux::fs::fsck(*fs).ok(), "a loaded image is unsound");
  walk(*fs, "/", 0);
  auto fd = fs->open("/fuzz-new", O_RDWR | O_CREAT);
  if (fd.ok()) {
    (void)fs->write(*fd, data, size < 10000 ? size : 10000);
    (void)fs->close(*fd);
  }
  (void)fs->mkdir("/fuzz-dir");
  check(detux::fs::fsck(*fs).ok(), "changing a loaded image made it unsound");
}

}  // namespace
