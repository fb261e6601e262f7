// kernel_test.cc: the semantics of Put, Get, Ret, Snap and Merge against
// real spaces (processes traced by the real supervisor).
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "harness.h"

using detux::test::in_master;
using detux::test::ret_forever;
using detux::test::status_of;
using detux::test::status_str;
using detux::test::twice;

namespace {

alignas(4096) volatile uint64_t g_words[1024];
alignas(4096) volatile uint8_t g_bytes[3 * 4096];
volatile int g_spin;

}  // namespace

TEST(Fork, ChildSeesSnapshotAndParentSeesMergeAfterJoin) {
  std::string out = twice([](std::string& out) {
    g_words[0] = 1;
    int r = dfork(0);
    if (r == 0) {
      g_words[1] = g_words[0] + 41;  // reads the snapshot
      ret_forever();
    }
    CHECK_EQ(r, 1);
    g_words[2] = 7;  // the parent's own change, made while the child runs
    CHECK_EQ(djoin(0), 0);
    out += std::to_string(g_words[0]) + " " + std::to_string(g_words[1]) + " " +
           std::to_string(g_words[2]);
  });
  EXPECT_EQ(out, "1 42 7");
}

TEST(Fork, ChildIdInUseIsRefused) {
  auto r = in_master([](std::string&) {
    if (dfork(3) == 0) ret_forever();
    CHECK_EQ(dfork(3), -EEXIST);
    CHECK_EQ(djoin(3), 0);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

// The master finishes a dfork's birth at its next call, so a burst of
// dforks overlaps each birth with the next fork.  Every child of every burst
// must still run and be joined.  (Every birth must join the spaces' process
// group, which every wait uses, and a group is gone once all its spaces are
// reaped: a first version left every other child of such a burst in a group
// of its own, never waited for.  The actor example hung on it; this test
// needs the reaping to happen at just the wrong time to show it.)
TEST(Fork, BurstsOfForksAfterEverySpaceWasReapedAllRunAndAllJoin) {
  std::string out = twice([](std::string& out) {
    for (int round = 1; round <= 3; ++round) {
      for (int c = 0; c < 5; ++c) {
        if (dfork(c) == 0) {
          g_words[c] = static_cast<uint64_t>(round * 10 + c);
          ret_forever();
        }
      }
      for (int c = 0; c < 5; ++c) CHECK_EQ(djoin(c), 0);
      for (int c = 0; c < 5; ++c) out += std::to_string(g_words[c]) + " ";
    }
  });
  EXPECT_EQ(out, "10 11 12 13 14 20 21 22 23 24 30 31 32 33 34 ");
}

// A child killed right after its dfork, before its birth was finished: the
// kill finishes the birth first, so neither it nor its snapshot is left.
TEST(Fork, AChildKilledRightAfterItsForkLeavesNoProcessBehind) {
  auto r = in_master([](std::string& out) {
    if (dfork(0) == 0) ret_forever();
    if (dfork(1) == 0) ret_forever();  // its birth overlaps nothing: killed next
    CHECK_EQ(dput(1, DET_KILL, nullptr, 0, nullptr), 0L);
    CHECK_EQ(status_of(1).state, DET_S_ABSENT);
    CHECK_EQ(djoin(0), 0);
    auto alive = [](pid_t, char state) { return state != 'Z' && state != 'X'; };
    for (int i = 0; i < 2000 && !detux::test::children_of(getpid(), alive).empty(); ++i)
      usleep(1000);
    out += std::to_string(detux::test::children_of(getpid(), alive).size());
  });
  EXPECT_TRUE(r.ok()) << r.out;
  EXPECT_EQ(r.out, "0") << "processes left (spaces or snapshots)";
}

TEST(Merge, ChildrenJoinedInIdOrderEachMergeTheirOwnBytes) {
  std::string out = twice([](std::string& out) {
    for (int i = 0; i < 8; ++i)
      if (dfork(i) == 0) {
        g_words[i] = 100 + i;
        ret_forever();
      }
    for (int i = 0; i < 8; ++i) CHECK_EQ(djoin(i), 0);
    for (int i = 0; i < 8; ++i) out += std::to_string(g_words[i]) + ",";
  });
  EXPECT_EQ(out, "100,101,102,103,104,105,106,107,");
}

TEST(Merge, BytesChangedOnBothSidesAreAConflictAtTheLowestAddressAndNothingIsMerged) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      g_bytes[10] = 1;     // no conflict: only the child
      g_bytes[4100] = 2;   // conflict (lowest)
      g_bytes[8200] = 3;   // conflict
      ret_forever();
    }
    g_bytes[4100] = 9;
    g_bytes[8200] = 9;
    det_status st{};
    CHECK_EQ(djoin_status(0, &st), -DET_ECONFLICT);
    CHECK_EQ(st.conflict, 1);
    CHECK_EQ(st.conflict_addr, reinterpret_cast<uint64_t>(&g_bytes[4100]));
    CHECK_EQ(static_cast<int>(g_bytes[10]), 0);  // nothing half-merged
    out += "ok";
  });
  EXPECT_EQ(out, "ok");
}

// The master's heap is merged in place: every page is checked before any is
// stored into, so a conflict on the last page leaves the earlier ones
// exactly as they were, both one the parent never touched (copied whole
// otherwise) and one it also wrote (merged byte by byte otherwise).
TEST(Merge, AConflictOnALaterPageOfTheMastersHeapLeavesEveryEarlierPageUnmerged) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    auto* b = static_cast<uint8_t*>(aligned_alloc(4096, 3 * 4096));
    CHECK(b != nullptr);
    memset(b, 0, 3 * 4096);
    if (dfork(0) == 0) {
      b[10] = 1;            // page 0: only the child
      b[4096 + 10] = 2;     // page 1: the parent writes elsewhere in it
      b[8192 + 10] = 3;     // page 2: both, the conflict
      ret_forever();
    }
    b[4096 + 20] = 7;
    b[8192 + 10] = 9;
    det_status st{};
    CHECK_EQ(djoin_status(0, &st), -DET_ECONFLICT);
    CHECK_EQ(st.conflict_addr, reinterpret_cast<uint64_t>(&b[8192 + 10]));
    CHECK_EQ(static_cast<int>(b[10]), 0);
    CHECK_EQ(static_cast<int>(b[4096 + 10]), 0);
    CHECK_EQ(static_cast<int>(b[4096 + 20]), 7);
    CHECK_EQ(static_cast<int>(b[8192 + 10]), 9);
    out += "nothing merged";
    free(b);
  });
  EXPECT_EQ(out, "nothing merged");
}

TEST(Merge, SameValueWrittenOnBothSidesIsStillAConflict) {
  auto r = in_master([](std::string&) {
    if (dfork(0) == 0) {
      g_bytes[5] = 4;
      ret_forever();
    }
    g_bytes[5] = 4;
    CHECK_EQ(djoin(0), -DET_ECONFLICT);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST(Merge, OnlyTheGivenRangeIsMerged) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      g_bytes[100] = 1;
      g_bytes[200] = 2;
      g_bytes[9000] = 3;  // far outside the range
      ret_forever();
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    void* a = const_cast<uint8_t*>(&g_bytes[150]);
    CHECK_EQ(dget(0, DET_MERGE, a, 100, a), 0L);
    out += std::to_string(g_bytes[100]) + std::to_string(g_bytes[200]) +
           std::to_string(g_bytes[9000]);
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_EQ(out, "020");
}

// Memory the child mapped after its snapshot has no reference copy: the
// snapshot's side reads as zeros, so every byte the child wrote there is
// its change, and the parent gets the pages (mapped for it).  Also the case
// where the snapshot's reads fail and fall back to page by page.
TEST(Merge, PagesTheChildMappedAfterItsSnapshotMergeAgainstZeros) {
  std::string out = twice([](std::string& out) {
    constexpr uint64_t kAt = 0x300000000000ULL;  // unmapped in the master
    if (dfork(0) == 0) {
      auto* p = reinterpret_cast<volatile uint8_t*>(kAt);
      if (dget(0, DET_PERM | DET_PROT_READ | DET_PROT_WRITE, const_cast<uint8_t*>(p), 3 * 4096,
               nullptr) != 0)
        _exit(3);
      p[10] = 7;
      p[4096 + 20] = 8;
      ret_forever();
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    auto* a = reinterpret_cast<void*>(kAt);
    CHECK_EQ(dget(0, DET_MERGE, a, 3 * 4096, a), 0L);
    const auto* p = reinterpret_cast<const volatile uint8_t*>(kAt);
    size_t nonzero = 0;
    for (size_t i = 0; i < 3 * 4096; ++i) nonzero += p[i] != 0;
    out += std::to_string(p[10]) + " " + std::to_string(p[4096 + 20]) + " " + std::to_string(nonzero);
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_EQ(out, "7 8 2");
}

TEST(Merge, WithoutSnapshotIsInvalid) {
  auto r = in_master([](std::string&) {
    long c = dput(0, 0, nullptr, 0, nullptr);  // created, never snapshotted
    CHECK_EQ(c, 0L);
    void* a = const_cast<uint64_t*>(g_words);
    CHECK_EQ(dget(0, DET_MERGE, a, 64, a), -EINVAL);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST(Copy, PutAndGetAtOddOffsetsAndSizes) {
  std::string out = twice([](std::string& out) {
    static char src[10000], back[10000];
    for (int i = 0; i < 10000; ++i) src[i] = static_cast<char>(i * 7);
    if (dput(1, 0, nullptr, 0, nullptr) == DET_CHILD) ret_forever();
    // Copy 5001 bytes from src+3 to g_bytes+1001 in the child, then back.
    void* dst = const_cast<uint8_t*>(&g_bytes[1001]);
    CHECK_EQ(dput(1, DET_COPY, src + 3, 5001, dst), 0L);
    CHECK_EQ(dget(1, DET_COPY, back, 5001, dst), 0L);
    CHECK(std::memcmp(back, src + 3, 5001) == 0);
    CHECK_EQ(static_cast<int>(g_bytes[1001]), 0);  // the parent's own copy is untouched
    out += "ok";
  });
  EXPECT_EQ(out, "ok");
}

TEST(Copy, BadRangesAreErrorsNotCrashes) {
  auto r = in_master([](std::string&) {
    static char buf[64];
    if (dput(0, 0, nullptr, 0, nullptr) == DET_CHILD) ret_forever();
    // Wrapping, beyond user space, unmapped source.
    CHECK_EQ(dput(0, DET_COPY, buf, 64, reinterpret_cast<void*>(~0UL - 10)), -EINVAL);
    CHECK_EQ(dput(0, DET_COPY, buf, 64, reinterpret_cast<void*>(0x800000000000UL)), -EINVAL);
    CHECK_EQ(dget(0, DET_COPY, reinterpret_cast<void*>(16), 64, buf), -EINVAL);  // page 0
    void* nowhere = reinterpret_cast<void*>(0x400000000000UL);  // valid, unmapped
    CHECK_EQ(dput(0, DET_COPY, nowhere, 64, buf), -EFAULT);
    CHECK_EQ(dget(0, DET_COPY, buf, 64, nowhere), -EFAULT);
    // Into the master's own read-only memory: refused, the master unharmed.
    static const char kReadOnly[64] = "the master's read-only data";
    CHECK_EQ(dget(0, DET_COPY, const_cast<char*>(kReadOnly), 64, buf), -EFAULT);
    CHECK(std::strcmp(kReadOnly, "the master's read-only data") == 0);
    // Perm must be page aligned.
    CHECK_EQ(dput(0, DET_PERM | DET_PROT_READ, nullptr, 100, buf), -EINVAL);
    // Get with both Copy and Merge; Put with Merge.
    CHECK_EQ(dget(0, DET_COPY | DET_MERGE, buf, 8, buf), -EINVAL);
    CHECK_EQ(dput(0, DET_MERGE, buf, 8, buf), -EINVAL);
    CHECK_EQ(dget(7, DET_COPY, buf, 8, buf), -ESRCH);
    CHECK_EQ(dput(0, 1UL << 40, buf, 8, buf), -EINVAL);  // undefined flag, from the master
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST(Copy, UnmappedDestinationIsMappedReadWrite) {
  auto r = in_master([](std::string&) {
    static uint64_t v = 0x1234;
    uint64_t far = 0x300000000000ULL;
    if (dput(0, 0, nullptr, 0, nullptr) == DET_CHILD) ret_forever();
    CHECK_EQ(dput(0, DET_COPY, &v, 8, reinterpret_cast<void*>(far + 12)), 0L);
    uint64_t back[2] = {};
    CHECK_EQ(dget(0, DET_COPY, back, 16, reinterpret_cast<void*>(far + 4)), 0L);
    CHECK_EQ(back[0], 0ULL);
    CHECK_EQ(back[1], 0x1234ULL);
    uint64_t got = 0;
    CHECK_EQ(dget(0, DET_COPY, &got, 8, reinterpret_cast<void*>(far + 12)), 0L);
    CHECK_EQ(got, 0x1234ULL);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST(Zero, PutZeroClearsPartialAndWholePagesOfTheChild) {
  auto r = in_master([](std::string&) {
    std::memset(const_cast<uint8_t*>(g_bytes), 0xab, sizeof g_bytes);
    if (dput(0, 0, nullptr, 0, nullptr) == DET_CHILD) ret_forever();
    void* z = const_cast<uint8_t*>(&g_bytes[100]);
    CHECK_EQ(dput(0, DET_ZERO, nullptr, 8192, z), 0L);
    static uint8_t back[sizeof g_bytes];
    CHECK_EQ(dget(0, DET_COPY, back, sizeof back, const_cast<uint8_t*>(g_bytes)), 0L);
    for (size_t i = 0; i < sizeof back; ++i) CHECK_EQ(static_cast<int>(back[i]), (i >= 100 && i < 8292) ? 0 : 0xab);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST(Perm, GetPermOnSelfAllocatesZeroPagesInASpace) {
  std::string out = twice([](std::string& out) {
    static volatile long result = -1;
    if (dfork(0) == 0) {
      uint64_t at = 0x400000000000ULL;
      long r = dget(0, DET_PERM | DET_PROT_READ | DET_PROT_WRITE, reinterpret_cast<void*>(at),
                    3 * 4096, nullptr);
      auto* p = reinterpret_cast<volatile uint64_t*>(at);
      p[1000] = 5;
      result = r + static_cast<long>(p[1000]) + static_cast<long>(p[0]);
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    out += std::to_string(result);
  });
  EXPECT_EQ(out, "5");
}

TEST(Perm, ReadOnlyPageFaultsTheChildOnWrite) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      for (;;) {
        g_bytes[4096] = g_bytes[4096] + 1;
        dret();
      }
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    // Make page 1 of g_bytes read-only in the child and run it again.
    CHECK_EQ(dput(0, DET_PERM | DET_PROT_READ, nullptr, 4096,
                  const_cast<uint8_t*>(&g_bytes[4096])), 0L);
    CHECK_EQ(dput(0, DET_START, nullptr, 0, nullptr), 0L);
    det_status st = status_of(0);
    out += status_str(st);
    CHECK_EQ(st.addr, reinterpret_cast<uint64_t>(&g_bytes[4096]));
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_NE(out.find("state=4"), std::string::npos) << out;
  EXPECT_NE(out.find("sig=11"), std::string::npos) << out;
}

TEST(Regs, GetRegsThenPutRegsResumesWhereTold) {
  std::string out = twice([](std::string& out) {
    static volatile long phase = 0;
    if (dfork(0) == 0) {
      for (;;) {
        phase = phase + 1;
        dret();
      }
    }
    det_regs regs;
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    CHECK_EQ(dget(0, DET_REGS, &regs, sizeof regs, nullptr), 0L);
    // Restart it with its own registers: it goes round the loop once more.
    CHECK_EQ(dput(0, DET_REGS | DET_START, &regs, sizeof regs, nullptr), 0L);
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    long got = 0;
    CHECK_EQ(dget(0, DET_COPY, &got, sizeof got, const_cast<long*>(&phase)), 0L);
    out += std::to_string(got);
    CHECK_EQ(dput(0, DET_REGS, &regs, 8, nullptr), -EINVAL);  // wrong size
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_EQ(out, "2");
}

TEST(Status, ReportsExitCodeAndAbsentChildren) {
  std::string out = twice([](std::string& out) {
    if (dfork(2) == 0) _exit(42);
    det_status st = status_of(2);
    out += status_str(st);
    CHECK_EQ(djoin(2), -DET_EEXITED);
    CHECK_EQ(status_of(2).state, DET_S_ABSENT);
  });
  EXPECT_NE(out.find("state=3 exit=42"), std::string::npos) << out;
}

TEST(Status, DontWaitPollsARunningChild) {
  auto r = in_master([](std::string&) {
    if (dfork(0) == 0) {
      while (g_spin == 0) {
      }
      ret_forever();
    }
    det_status st{};
    CHECK_EQ(dget(0, DET_STATUS | DET_DONT_WAIT, &st, sizeof st, nullptr), 0L);
    CHECK_EQ(st.state, DET_S_RUNNING);
    CHECK_EQ(dget(0, DET_COPY | DET_DONT_WAIT, &st, 4, const_cast<int*>(&g_spin)), -EAGAIN);
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

// Polling used to answer from the last state it knew, and never served the
// spaces' stops: a child that had long since stopped read as running for as
// long as the master polled (a review, December 8).
TEST(Status, DontWaitSeesAChildThatStoppedWhileTheMasterPolled) {
  auto r = in_master([](std::string& out) {
    if (dfork(0) == 0) ret_forever();
    det_status st{};
    int polls = 0;
    for (; polls < 2000; ++polls) {
      CHECK_EQ(dget(0, DET_STATUS | DET_DONT_WAIT, &st, sizeof st, nullptr), 0L);
      if (st.state != DET_S_RUNNING) break;
      usleep(1000);
    }
    CHECK_EQ(st.state, DET_S_STOPPED);
    out += "stopped after fewer than 2000 polls";
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST(Status, WallClockTimeoutLeavesTheChildRunning) {
  auto r = in_master([](std::string&) {
    if (dfork(0) == 0) {
      for (;;) {
      }
    }
    CHECK_EQ(det_set_wait_timeout(100), 0);
    det_status st{};
    CHECK_EQ(dget(0, DET_STATUS, &st, sizeof st, nullptr), -ETIMEDOUT);
    CHECK_EQ(dget(0, DET_STATUS | DET_DONT_WAIT, &st, sizeof st, nullptr), 0L);
    CHECK_EQ(st.state, DET_S_RUNNING);
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

namespace {
volatile sig_atomic_t g_sigint_seen;
void on_sigint(int) { g_sigint_seen = 1; }
}  // namespace

TEST(Status, AllowedSignalInterruptsTheMastersWaitAndIsDelivered) {
  auto r = in_master([](std::string&) {
    signal(SIGINT, on_sigint);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    CHECK_EQ(det_allow_signals(&set), 0);
    if (dfork(0) == 0) {
      for (;;) {
      }
    }
    pid_t me = getpid();
    if (fork() == 0) {  // an ordinary process, outside detux
      usleep(100 * 1000);
      kill(me, SIGINT);
      _exit(0);
    }
    det_status st{};
    CHECK_EQ(dget(0, DET_STATUS, &st, sizeof st, nullptr), -EINTR);
    CHECK_EQ(static_cast<int>(g_sigint_seen), 1);
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST(Tree, ThreeLevelsDeepMergeUpwardsInOrder) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      for (int i = 0; i < 2; ++i) {
        if (dfork(i) == 0) {
          if (dfork(0) == 0) {
            g_words[10 + i] = 1000 + i;  // the grandchild's write
            ret_forever();
          }
          if (djoin(0) != 0) _exit(3);
          g_words[20 + i] = g_words[10 + i] + 1;
          ret_forever();
        }
      }
      for (int i = 0; i < 2; ++i)
        if (djoin(i) != 0) _exit(4);
      g_words[30] = g_words[20] + g_words[21];
      ret_forever();
    }
    det_status st{};
    int r = djoin_status(0, &st);
    out += std::to_string(r) + " " + status_str(st) + " ";
    CHECK_EQ(r, 0);
    out += std::to_string(g_words[10]) + " " + std::to_string(g_words[21]) + " " +
           std::to_string(g_words[30]);
  });
  EXPECT_NE(out.find("1000 1002 2003"), std::string::npos) << out;
}

TEST(Tree, SpaceWaitsOnItsRunningChildInPutAndGet) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      if (dfork(5) == 0) {
        g_words[50] = 0;
        for (int k = 0; k < 1000000; ++k) g_words[50] = g_words[50] + 1;  // run a while
        ret_forever();
      }
      det_status st{};
      long r = dget(5, DET_STATUS, &st, sizeof st, nullptr);  // blocks until it stops
      g_words[51] = static_cast<uint64_t>(r * 10 + st.state);
      if (djoin(5) != 0) _exit(5);
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    out += std::to_string(g_words[50]) + " " + std::to_string(g_words[51]);
  });
  EXPECT_EQ(out, "1000000 2");
}

TEST(Limits, SpaceQuotaIsHitDeterministically) {
  std::string out = twice([](std::string& out) {
    det_limits l{};
    l.max_spaces = 50;
    CHECK_EQ(det_set_limits(&l), 0);
    int made = 0;
    long err = 0;
    for (int i = 0; i < 100; ++i) {
      int r = dfork(i);
      if (r == 0) ret_forever();
      if (r < 0) {
        err = r;
        break;
      }
      ++made;
    }
    out += std::to_string(made) + " " + std::to_string(err);
    CHECK_EQ(err, static_cast<long>(-DET_ELIMIT));
    for (int i = 0; i < made; ++i) CHECK_EQ(djoin(i), 0);
    CHECK_EQ(dfork(0) == 0 ? 0 : 1, 1);  // the quota came back
    if (false) ret_forever();
  });
  EXPECT_FALSE(out.empty());
}

TEST(Limits, MemoryLimitRefusesGrowthDeterministically) {
  std::string out = twice([](std::string& out) {
    det_limits l{};
    l.max_space_bytes = 1 << 20;
    CHECK_EQ(det_set_limits(&l), 0);
    static volatile long r1 = 0, r2 = 0;
    if (dfork(0) == 0) {
      auto* at = reinterpret_cast<void*>(0x410000000000ULL);
      r1 = dget(0, DET_PERM | DET_PROT_READ | DET_PROT_WRITE, at, 1 << 19, nullptr);
      r2 = dget(0, DET_PERM | DET_PROT_READ | DET_PROT_WRITE,
                reinterpret_cast<char*>(at) + (1 << 19), 1 << 20, nullptr);
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    out += std::to_string(r1) + " " + std::to_string(r2);
  });
  EXPECT_EQ(out, "0 -12");
}

TEST(Master, SignalMaskAndCpuidAreTheProgramsOwnAfterEveryCall) {
  auto r = in_master([](std::string&) {
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);  // a call that waited
    CHECK_EQ(djoin(0), 0);
    sigset_t now;
    pthread_sigmask(SIG_BLOCK, nullptr, &now);
    CHECK_EQ(sigismember(&now, SIGCHLD), 0);  // the supervisor blocked it only meanwhile
    unsigned a = 0, b, c, d;
    asm volatile("cpuid" : "+a"(a), "=b"(b), "=c"(c), "=d"(d));  // would fault if left on
    CHECK(a > 0);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

namespace {

// What the master's calls gave on a thread that is not the master thread.
struct FromOtherThread {
  long status = 1, start = 1, fork = 1, become = 1, join = 1;
};

void* call_from_other_thread(void* arg) {
  auto* seen = static_cast<FromOtherThread*>(arg);
  det_status st{};
  seen->status = dget(0, DET_STATUS, &st, sizeof st, nullptr);
  seen->start = dput(0, DET_START, nullptr, 0, nullptr);
  seen->fork = dfork(1);
  seen->become = det_become_master();
  seen->join = djoin(0);
  return nullptr;
}

}  // namespace

// ptrace ties every space to the thread that became master.  Another thread
// used to get ESRCH for a Start, and a dfork from it made a child that no
// thread could trace (it ended up faulted); now every call from it, or from
// a fork() of the master, is refused before it changes anything.
TEST(Master, CallsFromAnotherThreadOrAForkedCopyAreRefusedAndChangeNothing) {
  auto r = in_master([](std::string&) {
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    FromOtherThread seen;
    pthread_t t;
    CHECK_EQ(pthread_create(&t, nullptr, call_from_other_thread, &seen), 0);
    CHECK_EQ(pthread_join(t, nullptr), 0);
    const long refused = -DET_ETHREAD;
    CHECK_EQ(seen.status, refused);
    CHECK_EQ(seen.start, refused);
    CHECK_EQ(seen.fork, refused);
    CHECK_EQ(seen.become, refused);
    CHECK_EQ(seen.join, refused);
    pid_t copy = fork();
    if (copy == 0) {
      det_status st{};
      _exit(dget(0, DET_STATUS, &st, sizeof st, nullptr) == refused ? 0 : 1);
    }
    int wst = 0;
    CHECK_EQ(waitpid(copy, &wst, 0), copy);
    CHECK(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    CHECK_EQ(status_of(1).state, DET_S_ABSENT);
    CHECK_EQ(djoin(0), 0);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

namespace {
alignas(4096) volatile uint8_t g_big[600 * 4096];
}

TEST(Merge, ManyPagesMixedWithParentEditsArriveWholeAcrossBatches) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      for (size_t p = 0; p < 600; p += 1)
        for (size_t b = 0; b < 4096; b += 512) g_big[p * 4096 + b] = static_cast<uint8_t>(p + b / 512);
      ret_forever();
    }
    for (size_t p = 3; p < 600; p += 7) g_big[p * 4096 + 1] = 0xee;  // the parent's own bytes
    CHECK_EQ(djoin(0), 0);
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof g_big; ++i) sum = sum * 31 + g_big[i];
    CHECK_EQ(static_cast<int>(g_big[599 * 4096 + 3584]), (599 + 7) & 0xff);
    CHECK_EQ(static_cast<int>(g_big[10 * 4096 + 1]), 0xee);
    out += std::to_string(sum);
  });
  EXPECT_FALSE(out.empty());
}

// A merge into a space (not the master) goes through buffers: 256 pages at a
// time, the changed ones packed together.  Here the grandchild dirties 600
// pages but changes only two in three (it writes the others' old value
// back), and its parent wrote into every page too, so all 600 are merged
// byte by byte and every packing step is exercised.
TEST(Merge, ASpaceMergingManyPagesWhereOnlySomeChangedGetsExactlyThose) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      if (dfork(0) == 0) {
        for (size_t p = 0; p < 600; ++p) {
          const uint8_t old = g_big[p * 4096 + 8];
          g_big[p * 4096 + 8] = p % 3 == 0 ? old : static_cast<uint8_t>(p % 251 + 1);
        }
        ret_forever();
      }
      for (size_t p = 0; p < 600; ++p) g_big[p * 4096 + 16] = 0xcc;
      if (djoin(0) != 0) _exit(5);
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    size_t right = 0;
    for (size_t p = 0; p < 600; ++p) {
      const int want = p % 3 == 0 ? 0 : static_cast<int>(p % 251 + 1);
      right += g_big[p * 4096 + 8] == want && g_big[p * 4096 + 16] == 0xcc;
    }
    out += std::to_string(right) + " pages right";
  });
  EXPECT_EQ(out, "600 pages right");
}

TEST(Merge, APageTheParentCannotWriteFailsTheWholeMergeBeforeAnyWrite) {
  std::string out = twice([](std::string& out) {
    auto* base = static_cast<uint8_t*>(mmap(reinterpret_cast<void*>(0x310000000000ULL), 2 * 4096,
                                            PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
    CHECK(base != MAP_FAILED);
    CHECK_EQ(mprotect(base + 4096, 4096, PROT_READ), 0);  // page 1: read-only in the master
    if (dfork(0) == 0) {
      dget(0, DET_PERM | DET_PROT_READ | DET_PROT_WRITE, base + 4096, 4096, nullptr);
      base[10] = 1;    // writable in the parent
      base[4106] = 2;  // read-only in the parent
      ret_forever();
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    CHECK_EQ(dget(0, DET_MERGE, base, 2 * 4096, base), static_cast<long>(-EFAULT));
    out += std::to_string(base[10]) + std::to_string(base[4106]);  // both untouched
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_EQ(out, "00");
}

TEST(Zero, GetZeroOnItselfClearsASpacesOwnRangeAndPermZeroRemovesAccess) {
  std::string out = twice([](std::string& out) {
    static volatile long r_zero = -1, r_perm = -1;
    static volatile int before = 0, after = 0;
    std::memset(const_cast<uint8_t*>(g_bytes), 0x5a, sizeof g_bytes);
    if (dfork(0) == 0) {
      before = g_bytes[5000];
      r_zero = dget(0, DET_ZERO, const_cast<uint8_t*>(&g_bytes[100]), 8000, nullptr);
      after = g_bytes[5000] + g_bytes[99] * 1000;  // 0 + 0x5a * 1000
      r_perm = dget(0, DET_PERM, const_cast<uint8_t*>(&g_bytes[8192]), 4096, nullptr);
      g_spin = g_bytes[8192];  // no access any more: faults
      ret_forever();
    }
    det_status st = status_of(0);
    out += status_str(st) + " ";
    CHECK_EQ(st.state, DET_S_FAULTED);
    CHECK_EQ(st.addr, reinterpret_cast<uint64_t>(&g_bytes[8192]));
    long got[4] = {};
    CHECK_EQ(dget(0, DET_COPY, &got[0], 8, const_cast<long*>(&r_zero)), 0L);
    CHECK_EQ(dget(0, DET_COPY, &got[1], 8, const_cast<long*>(&r_perm)), 0L);
    int vals[2] = {};
    CHECK_EQ(dget(0, DET_COPY, &vals[0], 4, const_cast<int*>(&before)), 0L);
    CHECK_EQ(dget(0, DET_COPY, &vals[1], 4, const_cast<int*>(&after)), 0L);
    out += std::to_string(got[0]) + " " + std::to_string(got[1]) + " " + std::to_string(vals[0]) +
           " " + std::to_string(vals[1]);
    CHECK_EQ(dput(0, DET_KILL, nullptr, 0, nullptr), 0L);
  });
  EXPECT_NE(out.find("0 0 90 90000"), std::string::npos) << out;
}

// A space runs birth and runtime code its master never called.  Were the
// program or libdetux bound lazily, every new space would resolve those
// symbols again and write the GOT page (a copy-on-write fault, ~20 us on a
// PVM guest).  So libdetux and every program linked with detux::detux are
// linked -z now; this one is such a program.
TEST(Linking, ProgramsLinkedWithLibdetuxAndLibdetuxItselfAreBoundAtLoad) {
  struct Seen {
    bool main_now = false, lib_now = false, lib_found = false;
  } seen;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* arg) {
        auto* seen = static_cast<Seen*>(arg);
        bool is_main = info->dlpi_name == nullptr || info->dlpi_name[0] == 0;
        bool is_lib = info->dlpi_name && std::strstr(info->dlpi_name, "libdetux.so");
        if (!is_main && !is_lib) return 0;
        bool now = false;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          if (info->dlpi_phdr[i].p_type != PT_DYNAMIC) continue;
          auto* d = reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
          for (; d->d_tag != DT_NULL; ++d) {
            if (d->d_tag == DT_FLAGS && (d->d_un.d_val & DF_BIND_NOW)) now = true;
            if (d->d_tag == DT_FLAGS_1 && (d->d_un.d_val & DF_1_NOW)) now = true;
          }
        }
        if (is_main) seen->main_now = now;
        if (is_lib) seen->lib_found = true, seen->lib_now = now;
        return 0;
      },
      &seen);
  EXPECT_TRUE(seen.main_now) << "the test program was linked for lazy binding";
  ASSERT_TRUE(seen.lib_found) << "libdetux.so is not loaded (a static build?)";
  EXPECT_TRUE(seen.lib_now) << "libdetux was linked for lazy binding";
}
