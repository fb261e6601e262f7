// answers_test.cc: what a call returns, and what a failed call leaves,
// however the space that made it is resumed.  Each test pins a defect a
// review of the call and merge paths found (December 7): a space's fork
// whose answer a Copy could overwrite, a parent's registers losing their rax,
// a stale event after a failed birth, a conflict flag that outlived its
// merge, a conflicting merge that left new mappings in the parent, a refresh
// that failed on pages the caller had mapped since, and a Zero that wrote
// before it hit the memory limit.
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>

#include "harness.h"

using detux::test::in_master;
using detux::test::kill_child;
using detux::test::ret_forever;
using detux::test::status_of;
using detux::test::twice;

namespace {

constexpr uint64_t kPage = 4096;

// One read-write page mapped at exactly `addr` in the master.
volatile uint8_t* page_at(uint64_t addr) {
  void* p = mmap(reinterpret_cast<void*>(addr), kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  CHECK(p == reinterpret_cast<void*>(addr));
  return static_cast<volatile uint8_t*>(p);
}

// ---- A space's fork: Put Copy over the new child's stack before its start ----

volatile long g_started;   // set in the child before it starts
volatile long g_answer;    // what the started child's dput returned
volatile long g_reported;  // the grandchild's answer, as its parent saw it

// In a space: makes child 3 with a Put that, in the child, must return
// DET_CHILD; copies the caller's stack just below its frame over the child's
// (where the call's answer lies) before starting it.
__attribute__((noinline)) long fork_then_cover_the_answer() {
  g_started = 0;
  g_answer = 99;
  char here;
  uintptr_t hi = (reinterpret_cast<uintptr_t>(&here) - 64) & ~7UL;
  uintptr_t lo = hi - 4 * kPage;
  long r = dput(3, DET_COPY, reinterpret_cast<void*>(lo), hi - lo, reinterpret_cast<void*>(lo));
  if (g_started) {  // the child, once started
    g_answer = r;
    ret_forever();
  }
  g_started = 1;
  dput(3, DET_COPY, const_cast<long*>(&g_started), sizeof g_started, const_cast<long*>(&g_started));
  dput(3, DET_START, nullptr, 0, nullptr);
  det_status st{};
  dget(3, DET_STATUS, &st, sizeof st, nullptr);
  long got = -7;
  dget(3, DET_COPY, &got, sizeof got, const_cast<long*>(&g_answer));
  dput(3, DET_KILL, nullptr, 0, nullptr);
  return got;
}

TEST(Answers, ASpacesForkReturnsDetChildEvenIfACopyCoveredItsStackBeforeItStarted) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      g_reported = fork_then_cover_the_answer();
      ret_forever();
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    long got = -1;
    CHECK_EQ(dget(0, DET_COPY, &got, sizeof got, const_cast<long*>(&g_reported)), 0L);
    out += "child's dput returned " + std::to_string(got);
    CHECK_EQ(got, static_cast<long>(DET_CHILD));
    kill_child(0);
  });
  EXPECT_EQ(out, "child's dput returned " + std::to_string(DET_CHILD));
}

// ---- A parent's registers at a refused call --------------------------------

volatile long g_rax_seen = 0x1234;

TEST(Answers, RegistersAParentPutsAtARefusedCallKeepTheirRax) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      long rax;
      asm volatile("syscall" : "=a"(rax) : "a"(static_cast<long>(SYS_getpid)) : "rcx", "r11", "memory");
      g_rax_seen = rax;
      ret_forever();
    }
    det_status st = status_of(0);
    CHECK_EQ(st.state, DET_S_FAULTED);
    CHECK_EQ(st.fault, DET_FAULT_SYSCALL);
    det_regs regs;
    CHECK_EQ(dget(0, DET_REGS, &regs, sizeof regs, nullptr), 0L);
    regs.rax = 42;  // the parent answers getpid itself
    CHECK_EQ(dput(0, DET_REGS | DET_START, &regs, sizeof regs, nullptr), 0L);
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    long seen = 0;
    CHECK_EQ(dget(0, DET_COPY, &seen, sizeof seen, const_cast<long*>(&g_rax_seen)), 0L);
    out += "the child saw " + std::to_string(seen);
    CHECK_EQ(seen, 42L);
    kill_child(0);
  });
  EXPECT_EQ(out, "the child saw 42");
}

// ---- Children killed from outside -------------------------------------------

std::set<pid_t> my_children() {
  std::set<pid_t> s;
  std::ifstream f("/proc/self/task/" + std::to_string(getpid()) + "/children");
  pid_t p;
  while (f >> p) s.insert(p);
  return s;
}

// Child 1's birth is left for the master's next call; it is killed from
// outside meanwhile, and killed again by its parent in that very call.  The
// report of its death must go with it, not reach child 2.
TEST(Answers, ABirthKilledFromOutsideLeavesNoReportForTheNextChild) {
  auto r = in_master([](std::string& out) {
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);  // the group has a member
    std::set<pid_t> before = my_children();
    if (dfork(1) == 0) ret_forever();
    pid_t victim = 0;
    for (pid_t p : my_children())
      if (!before.count(p)) victim = p;  // the space (its snapshot comes later)
    CHECK(victim > 0);
    kill(victim, SIGKILL);
    usleep(100 * 1000);
    CHECK_EQ(dput(1, DET_KILL, nullptr, 0, nullptr), 0L);
    if (dfork(2) == 0) ret_forever();
    det_status st = status_of(2);
    out += "child 2 state " + std::to_string(st.state) + " signal " + std::to_string(st.signal);
    CHECK_EQ(st.state, DET_S_STOPPED);
    kill_child(0);
    kill_child(2);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

// ---- Merges and limits ---------------------------------------------------------

alignas(4096) volatile uint8_t g_both[kPage];
alignas(4096) volatile uint8_t g_child_only[kPage];

TEST(Answers, TheConflictFlagTellsOfTheLastMergeOnly) {
  std::string out = twice([](std::string& out) {
    g_both[0] = 1;
    if (dfork(0) == 0) {
      g_both[0] = 2;
      g_child_only[0] = 3;
      ret_forever();
    }
    g_both[0] = 4;
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    void* both = const_cast<uint8_t*>(g_both);
    void* mine = const_cast<uint8_t*>(g_child_only);
    CHECK_EQ(dget(0, DET_MERGE, both, kPage, both), static_cast<long>(-DET_ECONFLICT));
    CHECK_EQ(status_of(0).conflict, 1);
    CHECK_EQ(dget(0, DET_MERGE, mine, kPage, mine), 0L);
    det_status st = status_of(0);
    out += "conflict " + std::to_string(st.conflict) + " at " + std::to_string(st.conflict_addr);
    CHECK_EQ(st.conflict, 0);
    CHECK_EQ(g_child_only[0], 3);
    kill_child(0);
  });
  EXPECT_EQ(out, "conflict 0 at 0");
}

constexpr uint64_t kNear = 0x5d0000000000ULL;  // one page mapped here, a hole above it

TEST(Answers, AMergeThatConflictsLeavesNoNewMappingInTheParent) {
  std::string out = twice([](std::string& out) {
    volatile uint8_t* y = page_at(kNear);
    y[0] = 1;
    auto* x = reinterpret_cast<volatile uint8_t*>(kNear + kPage);
    if (dfork(0) == 0) {
      dget(0, DET_ZERO, const_cast<uint8_t*>(x), kPage, nullptr);  // its own new page
      x[0] = 5;
      y[0] = 2;
      ret_forever();
    }
    y[0] = 4;
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    long r = dget(0, DET_MERGE, reinterpret_cast<void*>(kNear), 2 * kPage, reinterpret_cast<void*>(kNear));
    det_status st = status_of(0);
    bool x_mapped = msync(const_cast<uint8_t*>(x), kPage, MS_ASYNC) == 0;
    out += "merge " + std::to_string(r) + " at +" + std::to_string(st.conflict_addr - kNear) +
           ", the child's new page mapped in the parent: " + (x_mapped ? "yes" : "no");
    CHECK_EQ(r, static_cast<long>(-DET_ECONFLICT));
    CHECK(!x_mapped);
    CHECK_EQ(y[0], 4);
    kill_child(0);
  });
  EXPECT_EQ(out, "merge " + std::to_string(-DET_ECONFLICT) +
                     " at +0, the child's new page mapped in the parent: no");
}

constexpr uint64_t kNew = 0x5c0000000000ULL;  // one page mapped before the fork, one after

TEST(Answers, ARefreshGivesTheChildPagesTheCallerMappedSinceItsSnapshot) {
  std::string out = twice([](std::string& out) {
    volatile uint8_t* a = page_at(kNew);
    a[0] = 1;
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    volatile uint8_t* b = page_at(kNew + kPage);
    a[0] = 2;
    b[0] = 7;
    long r = dput(0, DET_MERGE, reinterpret_cast<void*>(kNew), 2 * kPage, reinterpret_cast<void*>(kNew));
    uint8_t seen[2] = {0, 0};
    if (r == 0) {
      CHECK_EQ(dget(0, DET_COPY, &seen[0], 1, reinterpret_cast<void*>(kNew)), 0L);
      CHECK_EQ(dget(0, DET_COPY, &seen[1], 1, reinterpret_cast<void*>(kNew + kPage)), 0L);
    }
    out += "refresh " + std::to_string(r) + ", the child has " + std::to_string(seen[0]) + " " +
           std::to_string(seen[1]);
    CHECK_EQ(r, 0L);
    kill_child(0);
  });
  EXPECT_EQ(out, "refresh 0, the child has 2 7");
}

constexpr uint64_t kFar = 0x5e0000000000ULL;  // one page mapped here, holes above it

TEST(Answers, AZeroThatHitsTheMemoryLimitChangesNothing) {
  std::string out = twice([](std::string& out) {
    det_limits l{};
    l.max_spaces = 64;
    l.max_space_bytes = 64L << 20;
    CHECK_EQ(det_set_limits(&l), 0);
    volatile uint8_t* at = page_at(kFar);
    for (uint64_t i = 0; i < kPage; ++i) at[i] = 0x77;
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    // The child's range: the last 256 bytes of that page, then 65 MiB of
    // holes, more than the limit lets it gain.
    const uint64_t start = kFar + kPage - 256;
    long r = dput(0, DET_ZERO, nullptr, 256 + (65L << 20), reinterpret_cast<void*>(start));
    uint8_t tail[256];
    CHECK_EQ(dget(0, DET_COPY, tail, sizeof tail, reinterpret_cast<void*>(start)), 0L);
    size_t zeroed = 0;
    for (uint8_t b : tail) zeroed += b == 0;
    out += "zero " + std::to_string(r) + ", bytes zeroed " + std::to_string(zeroed);
    CHECK_EQ(r, static_cast<long>(-ENOMEM));
    CHECK_EQ(zeroed, size_t{0});
    kill_child(0);
  });
  EXPECT_EQ(out, "zero " + std::to_string(-ENOMEM) + ", bytes zeroed 0");
}

}  // namespace
