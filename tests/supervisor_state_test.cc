// supervisor_state_test.cc: a space made by the master is a copy of the
// master in the middle of a detux call, so it starts with whatever the
// supervisor had in hand: dead stack frames, its heap and that heap's
// bookkeeping, the pids it was given, glibc's copy of the thread id, errno.
// Those differ from run to run, and hostile code can read any of them.
// Each test here reads one of them in a space, twice (two fresh masters),
// and demands the same bytes.  Each failed before the fix it pins
// (ptrace/birth.h, PtraceMachine::start_clean, dput() in lib/api.cc).
#include <detux/detux.h>
#include <errno.h>
#include <link.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "harness.h"

using detux::test::ret_forever;
using detux::test::twice;

namespace {

#ifdef DETUX_SANITIZED
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// What a scenario saw, printed with DETUX_TEST_VERBOSE=1.
void note(const std::string& out) {
  if (getenv("DETUX_TEST_VERBOSE")) std::printf("  saw: %s\n", out.c_str());
}

// Below a new space's stack pointer lies what the supervisor left on the
// master's stack while it made the space (pids, wait statuses, clock
// readings).  A space reading it must find the same bytes on every run.
volatile uint64_t g_dead_stack_hash;

__attribute__((noinline, no_sanitize("address"))) uint64_t hash_below_my_frame() {
  auto* sp = static_cast<volatile uint64_t*>(__builtin_frame_address(0));
  uint64_t h = 1469598103934665603ULL;
  for (int i = 64; i < 8192; ++i) h = (h ^ sp[-i]) * 1099511628211ULL;  // 64 KiB
  return h;
}

TEST(DeadStack, WhatTheSupervisorLeftBelowANewSpacesStackIsTheSameEveryRun) {
  std::string out = twice([](std::string& out) {
    for (int round = 0; round < 3; ++round) {  // the supervisor's stack fills up
      if (dfork(round) == 0) {
        g_dead_stack_hash = hash_below_my_frame();
        ret_forever();
      }
      CHECK_EQ(djoin(round), 0);
      char hex[24];
      std::snprintf(hex, sizeof hex, "%016llx ", static_cast<unsigned long long>(g_dead_stack_hash));
      out += hex;
    }
  });
  note(out);
}

// errno is thread-local memory too: a new space has the value its creator
// had when it called dfork, whatever the supervisor's own calls left there.
volatile int g_child_errno;

TEST(SupervisorState, ANewSpaceStartsWithTheErrnoItsCreatorHadAtTheCall) {
  std::string out = twice([](std::string& out) {
    for (int round = 0; round < 3; ++round) {
      errno = 1000 + round;
      if (dfork(round) == 0) {
        g_child_errno = errno;
        ret_forever();
      }
      CHECK_EQ(djoin(round), 0);
      CHECK_EQ(g_child_errno, 1000 + round);
      out += std::to_string(g_child_errno) + " ";
    }
  });
  note(out);
}

// What the supervisor keeps in the master's memory (its heap: the tree of
// spaces, their pids) is the master's, not the program's: a space reading
// there must find the same bytes on every run.
__attribute__((noinline, no_sanitize("address"))) uint64_t hash_range(uint64_t at, size_t len) {
  auto* p = reinterpret_cast<volatile const uint64_t*>(at);
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < len / 8; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

volatile uint64_t g_state_hash[3];
// The supervisor's heap starts at 0x500000000000, and its bookkeeping lies
// in the pages just below (rt/heap.cc): 64 KiB below covers it.
constexpr uint64_t kSysBooks = 0x500000000000ULL - 0x10000;

// The writable segments of libdetux (the supervisor's globals among them),
// found in the master: dl_iterate_phdr would touch the vDSO, which a space
// does not have.
struct Segment {
  uint64_t lo = 0, len = 0;
};
std::vector<Segment> libdetux_data() {
  std::vector<Segment> out;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* segs) {
        if (!info->dlpi_name || !std::strstr(info->dlpi_name, "libdetux.so")) return 0;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_W)) continue;
          static_cast<std::vector<Segment>*>(segs)->push_back(
              {(info->dlpi_addr + ph.p_vaddr) & ~7ULL, ph.p_memsz & ~7ULL});
        }
        return 1;
      },
      &out);
  return out;
}

// The readable parts of [lo, hi) in this process (the sanitizer build has
// no supervisor heap, and the thread descriptor's neighbours vary).
std::vector<Segment> readable_parts(uint64_t lo, uint64_t hi) {
  std::vector<Segment> out;
  FILE* f = std::fopen("/proc/self/maps", "re");
  char line[512];
  while (f && std::fgets(line, sizeof line, f)) {
    unsigned long s, e;
    char perms[8];
    if (std::sscanf(line, "%lx-%lx %7s", &s, &e, perms) != 3 || perms[0] != 'r') continue;
    uint64_t a = std::max<uint64_t>(s, lo), b = std::min<uint64_t>(e, hi);
    if (a < b) out.push_back({a, b - a});
  }
  if (f) std::fclose(f);
  return out;
}

uint64_t hash_parts(const std::vector<Segment>& parts) {
  uint64_t h = 0;
  for (const Segment& d : parts) h ^= hash_range(d.lo, d.len);
  return h;
}

TEST(SupervisorState, ASpaceReadingTheSupervisorsHeapGlobalsAndThreadDescriptorSeesTheSameEveryRun) {
  std::string out = twice([](std::string& out) {
    static std::vector<Segment> parts[3];  // found here: a space cannot read /proc
    uint64_t tp;
    asm("mov %%fs:0, %0" : "=r"(tp));
    parts[2] = libdetux_data();  // the supervisor's globals
    CHECK_EQ(parts[2].empty(), false);
    // Round 0 warms up: the first detux call changes the master itself (the
    // runtime's lazily bound wrappers), so only later rounds are compared.
    for (int round = 0; round < 3; ++round) {
      parts[0] = readable_parts(kSysBooks, 0x500000100000ULL);  // the supervisor's heap, its books
      // glibc's thread descriptor and the static TLS below it (in the
      // sanitizer build only 4 KiB: AddressSanitizer's own per-thread state
      // lies further down and moves with its timing).
      parts[1] = readable_parts(tp - (kSanitized ? 4096 : 65536), tp + 2304);
      if (dfork(round) == 0) {
        for (int k = 0; k < 3; ++k) g_state_hash[k] = hash_parts(parts[k]);
        ret_forever();
      }
      CHECK_EQ(djoin(round), 0);
      char hex[64];
      std::snprintf(hex, sizeof hex, "%016llx %016llx %016llx ",
                    static_cast<unsigned long long>(g_state_hash[0]),
                    static_cast<unsigned long long>(g_state_hash[1]),
                    static_cast<unsigned long long>(g_state_hash[2]));
      if (round > 0) out += hex;
    }
  });
  note(out);
}

// A space gets the supervisor's heap and its books as zeros without copying
// them: the master marks them MADV_WIPEONFORK for the span of that one fork.
// Any other fork of the master, the program's own, must still copy them, or
// a forked copy that frees or reads what the supervisor allocated would find
// zeros.
alignas(4096) const uint8_t g_zero_page[1 << 20] = {};

TEST(SupervisorState, TheProgramsOwnForkOfTheMasterStillCopiesTheSupervisorsHeap) {
  if (kSanitized) GTEST_SKIP() << "the sanitizer build has no supervisor heap";
  detux::test::Run r = detux::test::in_master([](std::string& out) {
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(djoin(0), 0);
    const std::vector<Segment> heap = readable_parts(kSysBooks, 0x500000100000ULL);
    CHECK(!heap.empty());
    uint64_t zeros = 0;  // the hash of the same parts all zero: the copy must differ from it
    const auto zero_page = reinterpret_cast<uint64_t>(g_zero_page);
    for (const Segment& d : heap) zeros ^= hash_range(zero_page, d.len);
    const uint64_t here = hash_parts(heap);
    CHECK(here != zeros);
    pid_t pid = fork();
    if (pid == 0) _exit(hash_parts(heap) == here ? 0 : 1);
    int st = 0;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    out += WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "copied" : "lost";
  });
  EXPECT_TRUE(r.ok()) << r.out;
  EXPECT_EQ(r.out, "copied");
}

}  // namespace
