// birth_test.cc: what Linux shows of a space's birth.
//
// Linux's fork copies no page-table entries of a file mapping that has never
// held an anonymous page, so a space used to fault in again, 16 pages around
// each fault, the code its master had already run: 13 of the 37 faults of a
// dfork + djoin.  The master now gives each of its code mappings one
// anonymous page when it becomes master (prepare_master_mappings in
// ptrace/birth.h), and a fork copies the entries.  The test reads, in
// /proc/PID/smaps, how much of the C library's code each new process (the
// space and its snapshot) has mapped before it ran any of it beyond its
// birth: all that the master had, where it used to be a few fault-arounds.
#include <detux/detux.h>
#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "harness.h"

using detux::test::children_of;
using detux::test::in_master;
using detux::test::ret_forever;
using detux::test::status_of;

namespace {

// Resident kB of the mapping of `pid` that contains addr; -1 if none.
long resident_kb(pid_t pid, uintptr_t addr) {
  std::string path = "/proc/" + std::to_string(pid) + "/smaps";
  FILE* f = std::fopen(path.c_str(), "re");
  if (!f) return -1;
  char line[512];
  bool inside = false;
  long kb = -1;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {  // a mapping's first line
      inside = addr >= lo && addr < hi;
      continue;
    }
    if (inside && std::sscanf(line, "Rss: %ld kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb;
}

// The master finds its code mappings with PROCMAP_QUERY (Linux 6.11).
bool kernel_asks_mappings_one_by_one() {
  utsname u{};
  int major = 0, minor = 0;
  return uname(&u) == 0 && std::sscanf(u.release, "%d.%d", &major, &minor) == 2 &&
         (major > 6 || (major == 6 && minor >= 11));
}

// Whether Linux lets a process write its own read-only code through
// /proc/self/mem, as the master does (not with proc_mem.force_override=never).
// Tried on this test's own code, with the byte already there.
bool kernel_allows_forced_writes() {
  int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  const auto at = static_cast<off_t>(reinterpret_cast<uintptr_t>(&kernel_allows_forced_writes));
  unsigned char b;
  bool ok = pread(fd, &b, 1, at) == 1 && pwrite(fd, &b, 1, at) == 1;
  close(fd);
  return ok;
}

}  // namespace

TEST(Birth, ASpaceHasTheCodeItsMasterRanMappedWithoutFaultingItIn) {
  if (!kernel_asks_mappings_one_by_one()) GTEST_SKIP() << "no PROCMAP_QUERY before Linux 6.11";
  if (!kernel_allows_forced_writes()) GTEST_SKIP() << "this kernel refuses forced writes to /proc/self/mem";
  auto r = in_master([](std::string& out) {
    const auto libc_code = reinterpret_cast<uintptr_t>(&std::fopen);
    const long master_kb = resident_kb(getpid(), libc_code);
    CHECK(master_kb > 0);
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    size_t seen = 0;
    for (pid_t pid : children_of(getpid())) {
      const long kb = resident_kb(pid, libc_code);
      out += std::to_string(pid) + ": " + std::to_string(kb) + " of " + std::to_string(master_kb) + " kB; ";
      CHECK(kb >= master_kb);
      ++seen;
    }
    CHECK_EQ(seen, 2u);  // the space and its snapshot
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}
