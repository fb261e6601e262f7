// hostile_escape_test.cc: the ways out that are not system calls -- the
// vsyscall page, rdtsc and cpuid, the CPU number, file mappings, /proc, the
// master itself -- and a fork bomb.  The rules are in hostile.h.
#include <sys/resource.h>

#include <fstream>

#include "confine/cpuid.h"
#include "hostile.h"

using namespace detux::hostile;

namespace {

// ---- 5. The vsyscall page ----------------------------------------------------

TEST(Vsyscall, CallingTheLegacyPageFaultsAndGivesNoTime) {
  std::string out = twice([](std::string& out) {
    static timeval s_tv;
    static volatile long s_after;
    static volatile long s_time;
    const uint64_t entries[] = {0xffffffffff600000ULL /* gettimeofday */,
                                0xffffffffff600400ULL /* time */,
                                0xffffffffff600800ULL /* getcpu */};
    static uint64_t s_entry;
    int i = 0;
    for (uint64_t e : entries) {
      s_entry = e;
      s_tv = timeval{};
      s_after = 0;
      s_time = 0;
      if (dfork(i) == 0) {
        using fn = long (*)(void*, void*, void*);
        long r = reinterpret_cast<fn>(s_entry)(&s_tv, nullptr, nullptr);
        s_time = r;
        s_after = 1;
        ret_forever();
      }
      det_status st = status_of(i);
      out += status_str(st) + "; ";
      CHECK_EQ(st.state, DET_S_FAULTED);
      timeval tv{};
      long after = -1, t = -1;
      CHECK_EQ(dget(i, DET_COPY, &tv, sizeof tv, &s_tv), 0L);
      CHECK_EQ(dget(i, DET_COPY, &after, sizeof after, const_cast<long*>(&s_after)), 0L);
      CHECK_EQ(dget(i, DET_COPY, &t, sizeof t, const_cast<long*>(&s_time)), 0L);
      CHECK_EQ(static_cast<long>(tv.tv_sec), 0L);
      CHECK_EQ(static_cast<long>(tv.tv_usec), 0L);
      CHECK_EQ(after, 0L);
      CHECK_EQ(t, 0L);
      kill_child(i);
      ++i;
    }
    master_still_works(out);
  });
  note(out);
  EXPECT_NE(out.find("master-ok"), std::string::npos) << out;
}

// ---- 6. rdtsc, rdtscp, cpuid --------------------------------------------------

// Both traps need the machine's help (confine/cpuid.h): where it is not
// given, the hole is real and these tests say so instead of passing.
constexpr const char* kNoTscTrap =
    "HOST HOLE: this machine accepts PR_SET_TSC but rdtsc does not fault (seen under a PVM "
    "hypervisor), so rdtsc and rdtscp in a space read the real clock; detux run warns of it";
constexpr const char* kNoCpuidTrap =
    "HOST HOLE: this machine has no CPUID faulting, so cpuid in a space reads the real CPU; "
    "detux run warns of it";

TEST(TrappedInstructions, RdtscAndRdtscpReadTheSameCounterOnEveryRun) {
  if (!detux::confine::tsc_faulting_honoured()) GTEST_SKIP() << kNoTscTrap;
  std::string out = twice([](std::string& out) {
    static volatile uint64_t tsc[5];
    static volatile uint64_t aux;
    if (dfork(0) == 0) {
      for (int k = 0; k < 3; ++k) {
        uint32_t lo, hi;
        asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
        tsc[k] = (static_cast<uint64_t>(hi) << 32) | lo;
      }
      for (int k = 3; k < 5; ++k) {
        uint32_t lo, hi, c;
        asm volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(c));
        tsc[k] = (static_cast<uint64_t>(hi) << 32) | lo;
        aux = c;
      }
      ret_forever();
    }
    det_status st{};
    CHECK_EQ(djoin_status(0, &st), 0);
    for (int k = 0; k < 5; ++k) out += std::to_string(tsc[k]) + " ";
    for (int k = 1; k < 5; ++k) CHECK(tsc[k] > tsc[k - 1]);
    out += "aux " + std::to_string(aux);
  });
  note(out);
  EXPECT_NE(out.find("aux "), std::string::npos) << out;
}

TEST(TrappedInstructions, CpuidAnswersTheFixedTableWithoutRdrandOrRdseed) {
  if (!detux::confine::cpuid_faulting_supported()) GTEST_SKIP() << kNoCpuidTrap;
  std::string out = twice([](std::string& out) {
    static volatile uint32_t leaf0[4], leaf1[4], leaf7[4];
    if (dfork(0) == 0) {
      auto cpuid = [](uint32_t leaf, volatile uint32_t* r) {
        uint32_t a, b, c, d;
        asm volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(0));
        r[0] = a;
        r[1] = b;
        r[2] = c;
        r[3] = d;
      };
      cpuid(0, leaf0);
      cpuid(1, leaf1);
      cpuid(7, leaf7);
      ret_forever();
    }
    det_status st{};
    CHECK_EQ(djoin_status(0, &st), 0);
    char vendor[13] = {};
    uint32_t v[3] = {leaf0[1], leaf0[3], leaf0[2]};
    std::memcpy(vendor, v, 12);
    out += std::string("vendor ") + vendor;
    CHECK(std::strcmp(vendor, "GenuineIntel") == 0);
    CHECK_EQ(leaf1[2] & (1u << 30), 0u);  // no RDRAND
    CHECK_EQ(leaf7[1] & (1u << 18), 0u);  // no RDSEED
    char b[64];
    std::snprintf(b, sizeof b, " 1:%08x %08x 7:%08x", leaf1[0], leaf1[2], leaf7[1]);
    out += b;
  });
  note(out);
  EXPECT_NE(out.find("GenuineIntel"), std::string::npos) << out;
}

// The probes decide what the tests above expect, so they must not lie: a
// space's rdtsc reads the same on two runs exactly where the probe says it
// faults, and its cpuid gives the fixed table's signature exactly where the
// probe says cpuid faults (a host reading a fresh clock twice never agrees).
TEST(TrappedInstructions, ASpaceTrapsRdtscAndCpuidExactlyWhereTheProbesSayItCan) {
  const bool tsc = detux::confine::tsc_faulting_honoured();
  const bool cpuid = detux::confine::cpuid_faulting_supported();
  auto scenario = [](std::string& out) {
    static volatile uint64_t t;
    static volatile uint32_t signature;
    if (dfork(0) == 0) {
      uint32_t lo, hi, a, b, c, d;
      asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
      t = (static_cast<uint64_t>(hi) << 32) | lo;
      asm volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
      signature = a;
      ret_forever();
    }
    det_status st{};
    CHECK_EQ(djoin_status(0, &st), 0);
    out += std::to_string(t) + " " + std::to_string(signature);
  };
  detux::test::Run a = in_master(scenario), b = in_master(scenario);
  ASSERT_TRUE(a.ok() && b.ok()) << a.out << " / " << b.out;
  uint64_t ta = 0, tb = 0;
  uint32_t sa = 0, sb = 0;
  ASSERT_EQ(std::sscanf(a.out.c_str(), "%lu %u", &ta, &sa), 2) << a.out;
  ASSERT_EQ(std::sscanf(b.out.c_str(), "%lu %u", &tb, &sb), 2) << b.out;
  EXPECT_EQ(ta == tb, tsc) << a.out << " / " << b.out;
  EXPECT_EQ(sa == 0x106A5u && sb == 0x106A5u, cpuid) << a.out << " / " << b.out;
}

// The C library's rseq area would hold the number of the CPU the space runs
// on, written by Linux; sched_getcpu() reads it without a system call.
uint32_t g_rseq_cpu;
TEST(TrappedInstructions, TheCpuNumberIsNeverVisibleThroughRseq) {
  if (__rseq_size == 0) GTEST_SKIP() << "the C library does not use rseq here";
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      char* tp;
      asm("mov %%fs:0, %0" : "=r"(tp));
      for (int i = 0; i < 1000; ++i)  // long enough to be moved between CPUs
        g_rseq_cpu |= reinterpret_cast<volatile struct rseq*>(tp + __rseq_offset)->cpu_id;
      dret();
      sched_getcpu();  // must fault: the vDSO is gone and getcpu is refused
      ret_forever();
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    uint32_t seen = 0;
    CHECK_EQ(dget(0, DET_COPY, &seen, sizeof seen, &g_rseq_cpu), 0L);
    CHECK_EQ(dput(0, DET_START, nullptr, 0, nullptr), 0L);
    det_status st = status_of(0);
    out = "rseq cpu " + std::to_string(static_cast<int32_t>(seen)) + ", sched_getcpu " +
          (st.state == DET_S_FAULTED ? "faults" : "returns");
  });
  EXPECT_EQ(out, "rseq cpu -2, sched_getcpu faults");
}

// ---- File mappings ----------------------------------------------------------

// A space's memory never reads a file: a shared mapping and a private
// writable one (whose untouched pages Linux serves from the file) are both
// private copies from its birth on.  One mapping is made before the process
// is master (prepare_master_mappings copies it then, for the master too, and
// births skip it), one after (each birth copies it).  The file then changes
// on disk, and the space writes through the shared mapping: neither crosses.
char g_map_seen[3];
TEST(FileMappings, ASpaceKeepsItsBirthViewAndNeverWritesTheFile) {
  std::string out = twice([](std::string& out) {
    char path[] = "/tmp/detux-mapXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unlink(path);
    std::string a(2 * 4096, 'A');
    CHECK_EQ(pwrite(fd, a.data(), a.size(), 0), static_cast<ssize_t>(a.size()));
    auto map = [&](int flags) {
      void* m = mmap(nullptr, 2 * 4096, PROT_READ | PROT_WRITE, flags, fd, 0);
      CHECK(m != MAP_FAILED);
      return static_cast<volatile char*>(m);
    };
    volatile char* before = map(MAP_PRIVATE);  // no page of it touched
    CHECK_EQ(det_become_master(), 0);
    volatile char* after = map(MAP_PRIVATE);
    volatile char* shared = map(MAP_SHARED);
    long r = dput(0, DET_FORK | DET_SNAP, nullptr, 0, nullptr);
    if (r == DET_CHILD) {
      g_map_seen[0] = before[4096];
      g_map_seen[1] = after[4096];
      g_map_seen[2] = shared[4096];
      shared[0] = 'S';
      ret_forever();
    }
    CHECK_EQ(r, 0L);
    std::string b(2 * 4096, 'B');
    CHECK_EQ(pwrite(fd, b.data(), b.size(), 0), static_cast<ssize_t>(b.size()));
    CHECK_EQ(dput(0, DET_START, nullptr, 0, nullptr), 0L);
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    CHECK_EQ(dget(0, DET_COPY, g_map_seen, sizeof g_map_seen, g_map_seen), 0L);
    char first = 0;
    CHECK_EQ(pread(fd, &first, 1, 0), 1);
    out += std::string("space saw ") + std::string(g_map_seen, 3) + ", the file starts with " + first +
           ", the master sees " + before[4096] + after[4096] + shared[4096];
    close(fd);
  });
  EXPECT_EQ(out, "space saw AAA, the file starts with B, the master sees ABB");
}

// ---- 7. /proc and 8. killing the master ---------------------------------------

// open and openat reach the space's own detux file system, never Linux's:
// /proc is not there.
long g_open_result[3];
TEST(RawSyscalls, OpeningProcFindsOnlyTheSpacesOwnFileSystem) {
  NEEDS_DETUX_MALLOC();  // the file system's code allocates
  std::string out = twice([](std::string& out) {
    static char path[64];
    static long s_pid;
    s_pid = getpid();
    std::snprintf(path, sizeof path, "/proc/%ld/mem", s_pid);
    if (dfork(0) == 0) {
      g_open_result[0] =
          raw_syscall(SYS_open, reinterpret_cast<long>("/proc/self/maps"), O_RDONLY, 0, 0, 0, 0);
      ret_forever();
    }
    if (dfork(1) == 0) {
      g_open_result[1] = raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/maps"),
                                     O_RDONLY, 0, 0, 0);
      ret_forever();
    }
    if (dfork(2) == 0) {
      g_open_result[2] = raw_syscall(SYS_open, reinterpret_cast<long>(path), O_RDWR, 0, 0, 0, 0);
      ret_forever();
    }
    for (int i = 0; i < 3; ++i) {
      det_status st = status_of(i);
      CHECK_EQ(st.state, DET_S_STOPPED);
      long got = 0;
      CHECK_EQ(dget(i, DET_COPY, &got, sizeof got, &g_open_result[i]), 0L);
      CHECK_EQ(got, long{-ENOENT});
      out += std::to_string(got) + "; ";
      kill_child(i);
    }
    master_still_works(out);
  });
  note(out);
  EXPECT_NE(out.find("master-ok"), std::string::npos) << out;
}

TEST(RawSyscalls, KillingTheMasterFaultsAndNoSignalArrives) {
  host_has_int80();  // probed here, not in the master
  std::string out = twice([](std::string& out) {
    watch_signals();
    g_master_pid = getpid();
    if (dfork(0) == 0) {
      raw_syscall(SYS_kill, g_master_pid, SIGKILL, 0, 0, 0, 0);
      ret_forever();
    }
    if (dfork(1) == 0) {
      raw_syscall(SYS_tgkill, g_master_pid, g_master_pid, SIGKILL, 0, 0, 0);
      ret_forever();
    }
    if (dfork(2) == 0) {
      raw_syscall(SYS_kill, g_master_pid, SIGTERM, 0, 0, 0, 0);
      ret_forever();
    }
    if (dfork(3) == 0) {
      raw_int80(37 /* i386 kill */, g_master_pid, SIGTERM, 0);
      ret_forever();
    }
    const int64_t want[] = {SYS_kill, SYS_tgkill, SYS_kill};
    for (int i = 0; i < 4; ++i) {
      det_status st = status_of(i);
      out += status_str(st) + "; ";
      if (i == 3) {
        check_int80_refused(st, 37);
      } else {
        CHECK_EQ(st.state, DET_S_FAULTED);
        CHECK_EQ(st.fault, DET_FAULT_SYSCALL);
        CHECK_EQ(st.syscall, want[i]);
      }
      kill_child(i);
    }
    usleep(20 * 1000);  // a signal in flight would have landed by now
    check_no_signal();
    master_still_works(out);
  });
  note(out);
  EXPECT_NE(out.find("master-ok"), std::string::npos) << out;
}

// ---- 9. Fork bomb ---------------------------------------------------------------

constexpr int kBombWidth = 24;
volatile long g_slot[kBombWidth];   // child i's subtree size, merged up on join
volatile long g_limit[kBombWidth];  // child i's subtree count of -DET_ELIMIT

// Forks kBombWidth children (ignoring errors), each doing the same, then
// joins them.  Each child leaves only its own slot changed so siblings'
// merges never conflict.  Returns {spaces created below, ELIMITs seen}.
struct Bomb {
  long made, limited, other;
};
Bomb bomb() {
  bool made[kBombWidth] = {};
  Bomb b{0, 0, 0};
  for (int i = 0; i < kBombWidth; ++i) {
    int r = dfork(i);
    if (r == 0) {
      Bomb sub = bomb();
      for (int k = 0; k < kBombWidth; ++k) {
        g_slot[k] = 0;
        g_limit[k] = 0;
      }
      g_slot[i] = sub.other ? -1000000 : 1 + sub.made;
      g_limit[i] = sub.limited;
      ret_forever();
    }
    if (r == 1)
      made[i] = true;
    else if (r == -DET_ELIMIT)
      ++b.limited;
    else
      ++b.other;
  }
  for (int i = 0; i < kBombWidth; ++i) {
    if (!made[i]) continue;
    if (djoin(i) != 0) {
      ++b.other;
      continue;
    }
    if (g_slot[i] < 0) ++b.other;
    b.made += g_slot[i];
    b.limited += g_limit[i];
  }
  return b;
}

long isqrt(long v) {
  long r = static_cast<long>(std::sqrt(static_cast<double>(v)));
  while (r * r > v) --r;
  while ((r + 1) * (r + 1) <= v) ++r;
  return r;
}

// The quota rule of detux.h, for a space holding `quota`.
Bomb model(long quota) {
  Bomb b{0, 0, 0};
  long free = quota;
  for (int i = 0; i < kBombWidth; ++i) {
    if (free < 1) {
      ++b.limited;
      continue;
    }
    long give = isqrt(free - 1);
    free -= 1 + give;
    Bomb sub = model(give);
    b.made += 1 + sub.made;
    b.limited += sub.limited;
  }
  return b;
}

// A space that dies of a core-dumping signal (a forged sigreturn frame can
// block SIGSYS, and the next refused call then kills it with SIGSYS) wrote
// a core file into the master's directory, walking detux's terabyte
// reservations for minutes while its parent waited: found by a review on
// December 8.  Every space and snapshot now has no core-file allowance,
// whatever the master's.
TEST(CoreFiles, NoSpaceOrSnapshotMayWriteOne) {
  std::string out = twice([](std::string& out) {
    const rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
    CHECK_EQ(setrlimit(RLIMIT_CORE, &unlimited), 0);
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    int seen = 0;
    for (pid_t pid : children_of(getpid())) {
      std::ifstream limits("/proc/" + std::to_string(pid) + "/limits");
      std::string line;
      while (std::getline(limits, line))
        if (line.starts_with("Max core file size")) {
          seen++;
          CHECK(line.find(" 0 ") != std::string::npos && line.find("unlimited") == std::string::npos);
        }
    }
    out += "processes checked: " + std::to_string(seen);
    kill_child(0);
  });
  EXPECT_EQ(out, "processes checked: 2");  // the space and its snapshot
}

TEST(ForkBomb, StaysWithinTheQuotaDeterministically) {
  std::string out = twice([](std::string& out) {
    det_limits l{};
    l.max_spaces = 200;
    CHECK_EQ(det_set_limits(&l), 0);
    CHECK_EQ(det_set_wait_timeout(20000), 0);
    Bomb b = bomb();
    Bomb want = model(200);
    out += "made " + std::to_string(b.made) + " limited " + std::to_string(b.limited) + " other " +
           std::to_string(b.other);
    CHECK_EQ(b.other, 0L);
    CHECK(b.made <= 200);
    CHECK_EQ(b.made, want.made);
    CHECK_EQ(b.limited, want.limited);
    master_still_works(out);
  });
  note(out);
  EXPECT_NE(out.find("master-ok"), std::string::npos) << out;
}

}  // namespace
