// runtime_test.cc: the runtime library in real spaces -- the deterministic
// heap, console I/O, threads, barriers, parallel loops, fork/wait, and the
// C++ face.  Every scenario runs twice and must report the same bytes.
//
// The sanitizer build cannot run these: AddressSanitizer's allocator owns
// malloc there and asks Linux for memory, which a space may not do.
#include <detux/detux.hpp>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include <cmath>
#include <cstring>
#include <iostream>

#include "harness.h"
#include "mapped.h"

using namespace detux::test;

namespace {


std::string hex(const void* p) {
  char b[32];
  snprintf(b, sizeof b, "%p", p);
  return b;
}

int* g_blocks[8];
long g_values[8];
int g_same;

}  // namespace

// ---- Heap -------------------------------------------------------------------

TEST(Heap, ChildAllocationsAreUsableAndFreeableByTheParentAfterJoin) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    for (int c = 0; c < 4; ++c) {
      if (dfork(c) == 0) {
        g_blocks[c] = static_cast<int*>(malloc(1000 * sizeof(int)));
        for (int i = 0; i < 1000; ++i) g_blocks[c][i] = c * 1000 + i;
        ret_forever();
      }
    }
    for (int c = 0; c < 4; ++c) CHECK_EQ(djoin(c), 0);
    for (int c = 0; c < 4; ++c) {
      CHECK(g_blocks[c] != nullptr);
      CHECK_EQ(g_blocks[c][999], c * 1000 + 999);
      out += hex(g_blocks[c]) + " ";
      free(g_blocks[c]);
    }
    void* again = malloc(1000 * sizeof(int));  // the parent's own allocator still works
    CHECK(again != nullptr);
    free(again);
  });
  EXPECT_FALSE(out.empty());
}

TEST(Heap, ChildrenAllocatingAtOnceNeverOverlapAndGetTheSameAddressesOnEveryRun) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    for (int c = 0; c < 8; ++c) {
      if (dfork(c) == 0) {
        std::vector<std::string> v;  // many allocations of many sizes
        for (int i = 0; i < 200; ++i) v.push_back(std::string(i * 7 + c, 'a' + c));
        g_blocks[c] = static_cast<int*>(malloc(64 << 10));
        g_blocks[c][0] = static_cast<int>(v[199].size());
        ret_forever();
      }
    }
    for (int c = 0; c < 8; ++c) CHECK_EQ(djoin(c), 0);
    std::vector<uintptr_t> starts;
    for (int c = 0; c < 8; ++c) {
      CHECK_EQ(g_blocks[c][0], 199 * 7 + c);
      starts.push_back(reinterpret_cast<uintptr_t>(g_blocks[c]));
      out += hex(g_blocks[c]) + " ";
    }
    std::sort(starts.begin(), starts.end());
    for (size_t i = 1; i < starts.size(); ++i) CHECK(starts[i] - starts[i - 1] >= (64 << 10));
  });
  EXPECT_FALSE(out.empty());
}

TEST(Heap, ABlockTheChildFreesIsFreedByTheParentAtJoin) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    int* mine = static_cast<int*>(malloc(4096));
    g_blocks[0] = mine;
    if (dfork(0) == 0) {
      free(g_blocks[0]);  // the parent's block: deferred to the parent
      g_blocks[0] = nullptr;
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    CHECK(g_blocks[0] == nullptr);
    int* next = static_cast<int*>(malloc(4096));  // the freed block is reused
    out += mine == next ? "reused" : "not reused";
    free(next);
  });
  EXPECT_EQ(out, "reused");
}

// A space that forks allocates (the runtime's own bookkeeping) and frees
// it all again.  Its extent must come back whole at its join, or the next
// child gets a new extent further down: then every round leaves populated
// pages in another 512 GiB of the heap, which every later fork, exit and
// dirty-page scan walks (qsort's inner spaces: 0.06 -> 0.6 ms a scan).
void inner_forks_one(void*) {
  void* mine = malloc(100);
  g_blocks[g_same] = static_cast<int*>(mine);  // where this round's extent lies
  free(mine);
  if (det_thread_start(0, [](void*) {}, nullptr) < 0 || djoin(0) != 0) _exit(3);
}

TEST(Heap, ASpaceThatFreedEverythingGivesItsWholeExtentBackAndTheNextGetsTheSame) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    for (g_same = 0; g_same < 6; ++g_same) {
      CHECK_EQ(det_thread_start(0, inner_forks_one, nullptr), 0);
      CHECK_EQ(djoin(0), 0);
    }
    for (int i = 0; i < 6; ++i) out += " " + hex(g_blocks[i]);
  });
  std::string first = out.substr(0, out.find(' ', 1));
  std::string want;
  for (int i = 0; i < 6; ++i) want += first;
  EXPECT_EQ(out, want) << "each round's space got a new extent";
}

// The other side: a block a space keeps must keep its extent from coming
// back, even when the space also freed a block its own child allocated
// (that free must not count against the space's own blocks).
int* g_kept;
int* g_from_grandchild;
void inner_keeps_one(void*) {
  g_kept = static_cast<int*>(malloc(64));
  for (int i = 0; i < 16; ++i) g_kept[i] = 7 * i;
  auto grandchild = [](void*) { g_from_grandchild = static_cast<int*>(malloc(64)); };
  if (det_thread_start(0, grandchild, nullptr) < 0 || djoin(0) != 0) _exit(3);
  free(g_from_grandchild);
}

TEST(Heap, ABlockASpaceKeepsIsNeverGivenToTheNextAllocation) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    CHECK_EQ(det_thread_start(0, inner_keeps_one, nullptr), 0);
    CHECK_EQ(djoin(0), 0);
    auto next_child = [](void*) {  // stored, or the compiler drops the pair
      g_from_grandchild = static_cast<int*>(malloc(64));
      free(g_from_grandchild);
    };
    CHECK_EQ(det_thread_start(0, next_child, nullptr), 0);
    CHECK_EQ(djoin(0), 0);
    for (int round = 0; round < 64; ++round) {
      auto* p = static_cast<int*>(malloc(64));
      if (p == g_kept) out += "the kept block was given out again; ";
      std::memset(p, 0xff, 64);
    }
    for (int i = 0; i < 16; ++i)
      if (g_kept[i] != 7 * i) out += "kept[" + std::to_string(i) + "] overwritten; ";
  });
  EXPECT_EQ(out, "");
}

TEST(Heap, RunningOutOfMemoryIsReportedAtTheSameAllocationOnEveryRun) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    det_limits l{};
    l.max_space_bytes = 64L << 20;
    CHECK_EQ(det_set_limits(&l), 0);
    if (dfork(0) == 0) {
      long n = 0;
      while (malloc(1 << 20)) ++n;
      g_values[0] = n;
      g_values[1] = errno;
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    CHECK_EQ(g_values[1], long{ENOMEM});
    out += std::to_string(g_values[0]);
  });
  EXPECT_GT(std::stol(out), 50);
  EXPECT_LT(std::stol(out), 64);
}

// Waits until every space the master killed has finished dying: one still
// tearing down holds its pages busy, and the master's huge-page collapse then
// fails with EAGAIN (it is tried again at a later fork).  Live spaces and
// snapshots are stopped ('t'); the dead are zombies.
void wait_for_the_dying() {
  auto dying = [](pid_t, char state) { return state != 'Z' && state != 'X' && state != 't'; };
  while (!children_of(getpid(), dying).empty()) usleep(1000);
}

// A large block of the master, every byte `fill`; also left in g_blocks[0],
// where the children find it.
uint8_t* big_block(size_t len, int fill) {
  auto* big = static_cast<uint8_t*>(malloc(len));
  CHECK(big != nullptr);
  memset(big, fill, len);
  g_blocks[0] = reinterpret_cast<int*>(big);
  return big;
}

// big_block(len, 1), its bounds, and how much of it is in huge pages (KiB).
struct HugeBlock {
  uint8_t* big;
  uint64_t lo, hi;
  long whole;
};
HugeBlock huge_block(size_t len) {
  uint8_t* big = big_block(len, 1);
  const auto lo = reinterpret_cast<uint64_t>(big);
  return {big, lo, lo + len, huge_kib(lo, lo + len)};
}

// The master's large blocks are backed by huge pages (fewer page-table
// entries for every fork to copy): a child's write still moves exactly its
// own bytes, and a byte written on both sides is still a conflict.
TEST(Heap, ChildrenMergeByteExactIntoAHugePageBackedBlockOfTheMaster) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    constexpr size_t kLen = 16 << 20;
    uint8_t* big = big_block(kLen, 1);
    for (int c = 0; c < 4; ++c) {
      if (dfork(c) == 0) {
        auto* b = reinterpret_cast<uint8_t*>(g_blocks[0]);
        for (size_t at = c; at < kLen; at += 1 << 20) b[at] = static_cast<uint8_t>(10 + c);
        ret_forever();
      }
    }
    big[(5 << 20) + 100] = 7;  // the master's own write, between the children's bytes
    for (int c = 0; c < 4; ++c) CHECK_EQ(djoin(c), 0);
    size_t changed = 0;
    for (size_t i = 0; i < kLen; ++i) changed += big[i] != 1;
    CHECK_EQ(changed, size_t{4 * 16 + 1});
    CHECK_EQ(int{big[(3 << 20) + 2]}, 12);
    CHECK_EQ(int{big[(5 << 20) + 100]}, 7);
    if (dfork(9) == 0) {
      reinterpret_cast<uint8_t*>(g_blocks[0])[(9 << 20) + 100] = 3;
      ret_forever();
    }
    big[(9 << 20) + 100] = 4;
    det_status st{};
    CHECK_EQ(djoin_status(9, &st), -DET_ECONFLICT);
    out += std::to_string(reinterpret_cast<uintptr_t>(big) % 4096) + " conflict at +" +
           std::to_string(st.conflict_addr - reinterpret_cast<uintptr_t>(big));
    free(big);
  });
  EXPECT_NE(out.find("conflict at +" + std::to_string((9 << 20) + 100)), std::string::npos) << out;
}

// A large block of the master is placed so that everything after its first
// page lies on 2 MiB boundaries: its ends are huge pages too, and a fork
// copies no small page-table entries for it.
TEST(Heap, ALargeBlockOfTheMasterIsHugePagesPastItsFirstPage) {
  NEEDS_DETUX_MALLOC();
  detux::test::Run r = in_master([](std::string& out) {
    CHECK_EQ(det_become_master(), 0);
    void* small = malloc(100);  // the heap is not empty before it
    constexpr size_t kLen = 8 << 20;
    auto* big = static_cast<uint8_t*>(malloc(kLen));
    CHECK(big != nullptr);
    const auto at = reinterpret_cast<uint64_t>(big);
    CHECK_EQ((at + 4096) % (2 << 20), uint64_t{16});  // the 16-byte header ends the page
    memset(big, 1, kLen);
    const long kib = huge_kib(at, at + kLen);
    out += kib == 0 ? "no huge pages" : std::to_string(kib / 1024) + " MiB huge";
    free(big);
    free(small);
  });
  EXPECT_TRUE(r.ok()) << r.out;
  if (r.out == "no huge pages") GTEST_SKIP() << "no transparent huge pages here";
  EXPECT_EQ(r.out, "8 MiB huge");
}

// A child's first touch of memory in a huge-page block that the master never
// touched gets a whole huge page of its own: the join finds it by one
// pagemap entry per 2 MiB, and must merge every byte written there.
TEST(Heap, AChildsWritesIntoUntouchedHugePageMemoryOfTheMasterAreMerged) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    constexpr size_t kLen = 16 << 20;
    auto* big = static_cast<uint8_t*>(malloc(kLen));
    CHECK(big != nullptr);
    g_blocks[0] = reinterpret_cast<int*>(big);
    if (dfork(0) == 0) {
      auto* b = reinterpret_cast<uint8_t*>(g_blocks[0]);
      for (size_t at = 0; at < kLen; at += 1 << 20) b[at + 77] = static_cast<uint8_t>(at >> 20);
      b[kLen - 1] = 99;
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    size_t changed = 0;
    for (size_t i = 0; i < kLen; ++i) changed += big[i] != 0;
    CHECK_EQ(changed, size_t{16});  // the write at offset 77 of MiB 0 wrote 0
    CHECK_EQ(int{big[(9 << 20) + 77]}, 9);
    CHECK_EQ(int{big[kLen - 1]}, 99);
    out += "merged";
    free(big);
  });
  EXPECT_EQ(out, "merged");
}

// A merge into the master splits its huge pages (each byte written copies
// one small page), and Linux leaves them split.  The master's next dfork
// collapses them again, so forks after the first batch of a program like lu
// still copy one entry per 2 MiB.  Skipped where Linux gives no huge pages.
TEST(Heap, HugePagesAMergeSplitInTheMasterAreWholeAgainAtItsNextFork) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    constexpr size_t kLen = 16 << 20;
    auto [big, lo, hi, whole] = huge_block(kLen);
    if (whole == 0) {
      out += "no huge pages";
      return;
    }
    for (int c = 0; c < 4; ++c) {
      if (dfork(c) == 0) {
        auto* b = reinterpret_cast<uint8_t*>(g_blocks[0]);
        b[(c << 22) + (1 << 21) + c] = static_cast<uint8_t>(10 + c);
        ret_forever();
      }
    }
    for (int c = 0; c < 4; ++c) CHECK_EQ(djoin(c), 0);
    const long split = huge_kib(lo, hi);
    CHECK(split < whole);
    wait_for_the_dying();
    if (dfork(7) == 0) ret_forever();
    CHECK_EQ(huge_kib(lo, hi), whole);
    CHECK_EQ(djoin(7), 0);
    size_t changed = 0;
    for (size_t i = 0; i < kLen; ++i) changed += big[i] != 1;
    CHECK_EQ(changed, size_t{4});
    CHECK_EQ(int{big[(3 << 22) + (1 << 21) + 3]}, 13);
    out += "split by " + std::to_string((whole - split) / 2048) + ", whole again";
    free(big);
  });
  if (out.find("no huge pages") != std::string::npos)
    GTEST_SKIP() << "no transparent huge pages here";
  EXPECT_EQ(out, "split by 4, whole again");
}

// A collapse that finds a page busy (EAGAIN: here a pipe holds a reference
// to it; in lu, a space killed at its join and still exiting) is tried
// again at the next dfork.  It used to be given up for good, which left lu
// 2048^2's matrix in small pages for the rest of the run after one busy page.
TEST(Heap, AHugePageCollapseThatFoundAPageBusyIsTriedAgainAtTheNextFork) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    constexpr size_t kLen = 16 << 20;
    auto [big, lo, hi, whole] = huge_block(kLen);
    if (whole == 0) {
      out += "no huge pages";
      return;
    }
    if (dfork(0) == 0) {
      reinterpret_cast<uint8_t*>(g_blocks[0])[(1 << 21) + 5] = 9;
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);  // splits the huge page holding the byte
    int p[2];
    CHECK_EQ(pipe(p), 0);
    uint8_t* held = reinterpret_cast<uint8_t*>(((lo + (1 << 21)) & ~uint64_t{(1 << 21) - 1}) + 4096);
    iovec iov{held, 4096};
    CHECK_EQ(vmsplice(p[1], &iov, 1, 0), 4096);  // the pipe now holds a reference
    if (dfork(1) == 0) ret_forever();
    const long busy = huge_kib(lo, hi);
    close(p[0]);
    close(p[1]);
    wait_for_the_dying();  // child 0; child 1 is alive and stopped
    if (dfork(2) == 0) ret_forever();
    out += std::to_string((whole - busy) / 2048) + " split while busy, " +
           (huge_kib(lo, hi) == whole ? "whole again" : "still split");
    CHECK_EQ(djoin(1), 0);
    CHECK_EQ(djoin(2), 0);
    CHECK_EQ(int{big[(1 << 21) + 5]}, 9);
    free(big);
  });
  if (out.find("no huge pages") != std::string::npos)
    GTEST_SKIP() << "no transparent huge pages here";
  EXPECT_EQ(out, "1 split while busy, whole again");
}

TEST(Heap, FreeingAPointerTheHeapNeverGaveFaultsTheSpaceAndTheParentIsTold) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    std::string text = captured([&] {
      if (dfork(0) == 0) {
        static int not_heap[8];
        free(&not_heap[2]);
        ret_forever();
      }
      det_status st{};
      CHECK_EQ(djoin_status(0, &st), -DET_EFAULTED);
      out += status_str(st) + "\n";
    });
    CHECK(text.find("free of a pointer the heap never gave out") != std::string::npos);
  });
  EXPECT_NE(out.find("state=4"), std::string::npos) << out;
  EXPECT_NE(out.find("sig=4"), std::string::npos) << out;  // SIGILL
}

TEST(Heap, CallocReallocAndAlignedAllocationWorkInSpaces) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      auto* z = static_cast<long*>(calloc(1000, sizeof(long)));
      long sum = 0;
      for (int i = 0; i < 1000; ++i) sum += z[i];
      auto* r = static_cast<char*>(malloc(10));
      strcpy(r, "detux");
      r = static_cast<char*>(realloc(r, 1 << 20));
      void* a = nullptr;
      int pm = posix_memalign(&a, 4096, 100);
      void* b = aligned_alloc(1 << 16, 1 << 16);
      g_values[0] = sum;
      g_values[1] = strcmp(r, "detux");
      g_values[2] = pm == 0 && (reinterpret_cast<uintptr_t>(a) & 4095) == 0;
      g_values[3] = b && (reinterpret_cast<uintptr_t>(b) & 0xffff) == 0;
      free(a);
      free(b);
      free(r);
      free(z);
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    for (int i = 0; i < 4; ++i) out += std::to_string(g_values[i]) + " ";
  });
  EXPECT_EQ(out, "0 0 1 1 ");
}

// ---- Console ----------------------------------------------------------------

TEST(Console, ManyChildrenPrintingAtOnceAppearInJoinOrder) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = captured([] {
      printf("master first\n");
      for (int c = 0; c < 16; ++c) {
        if (dfork(c) == 0) {
          for (int line = 0; line < 50; ++line) printf("child %d line %d\n", c, line);
          fflush(stdout);
          ret_forever();
        }
      }
      for (int c = 15; c >= 0; --c) CHECK_EQ(djoin(c), 0);  // joined in reverse
      printf("master last\n");
    });
  });
  std::string want = "master first\n";
  for (int c = 15; c >= 0; --c)
    for (int line = 0; line < 50; ++line)
      want += "child " + std::to_string(c) + " line " + std::to_string(line) + "\n";
  want += "master last\n";
  EXPECT_EQ(out, want);
}

TEST(Console, StdoutStderrCoutAndCerrKeepTheOrderTheChildWroteThem) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = captured([] {
      if (dfork(0) == 0) {
        printf("one\n");
        fflush(stdout);
        fprintf(stderr, "two\n");
        std::cout << "three" << std::endl;
        std::cerr << "four\n";
        puts("five");
        fwrite("six\n", 1, 4, stdout);
        fflush(stdout);
        ret_forever();
      }
      CHECK_EQ(djoin(0), 0);
    });
  });
  EXPECT_EQ(out, "one\ntwo\nthree\nfour\nfive\nsix\n");
}

TEST(Console, OutputTheParentHadBufferedIsPrintedOnceByTheParent) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = captured([] {
      setvbuf(stdout, nullptr, _IOFBF, 1 << 16);
      printf("before fork\n");  // still in the master's buffer
      if (dfork(0) == 0) {
        printf("in child\n");
        fflush(stdout);
        ret_forever();
      }
      printf("after fork\n");
      CHECK_EQ(djoin(0), 0);
      printf("after join\n");
    });
  });
  EXPECT_EQ(out, "before fork\nafter fork\nin child\nafter join\n");
}

TEST(Console, SpacesReadStandardInputFromTheMasterAtAnyDepth) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    int p[2];
    CHECK_EQ(pipe(p), 0);
    std::string input;
    for (int i = 0; i < 3000; ++i) input += "line " + std::to_string(i) + "\n";
    if (fork() == 0) {  // a writer outside, dribbling
      close(p[0]);
      for (size_t at = 0; at < input.size(); at += 1000)
        (void)!write(p[1], input.data() + at, std::min<size_t>(1000, input.size() - at));
      _exit(0);
    }
    close(p[1]);
    dup2(p[0], 0);
    out = captured([] {
      if (dfork(0) == 0) {
        char line[64];
        long n = 0, sum = 0;
        while (fgets(line, sizeof line, stdin)) {
          ++n;
          sum += atol(line + 5);
          if (n == 1000) break;
        }
        if (dfork(0) == 0) {  // a grandchild goes on where its parent was
          long m = 0, s2 = 0;
          while (fgets(line, sizeof line, stdin)) ++m, s2 += atol(line + 5);
          printf("grandchild read %ld lines, sum %ld\n", m, s2);
          fflush(stdout);
          ret_forever();
        }
        CHECK_EQ(djoin(0), 0);
        printf("child read %ld lines, sum %ld\n", n, sum);
        fflush(stdout);
        ret_forever();
      }
      CHECK_EQ(djoin(0), 0);
    });
    wait(nullptr);
  });
  EXPECT_EQ(out, "grandchild read 2000 lines, sum 3999000\nchild read 1000 lines, sum 499500\n");
}

TEST(Emulation, ACallNeitherTheConsoleNorTheFileSystemTakesFaultsWithItsNumber) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      g_values[0] = syscall(SYS_write, 7, "x", 1) < 0 ? errno : 0;  // no such file: EBADF
      syscall(SYS_ioctl, 7, 0, 0);  // no ioctl on files: refused
      ret_forever();
    }
    out += status_str(status_of(0));
    long e = 0;
    CHECK_EQ(dget(0, DET_COPY, &e, sizeof e, &g_values[0]), 0L);
    out += " errno " + std::to_string(e);
  });
  EXPECT_NE(out.find("fault=2 sig=0 sys=16 "), std::string::npos) << out;  // DET_FAULT_SYSCALL
  EXPECT_NE(out.find("errno 9"), std::string::npos) << out;                // EBADF
}

// ---- Threads, barriers, loops -----------------------------------------------

TEST(Threads, EachThreadsWritesAppearAtItsJoinAndTheSameByteTwiceIsAConflict) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    g_values[0] = g_values[1] = 0;
    detux::thread a(1, [] { g_values[0] = 10; });
    detux::thread b(2, [] { g_values[1] = 20; });
    a.join();
    out += std::to_string(g_values[0]) + " " + std::to_string(g_values[1]) + ", ";
    b.join();
    out += std::to_string(g_values[0]) + " " + std::to_string(g_values[1]) + ", ";
    detux::thread c(3, [] { g_same = 1; });
    detux::thread d(4, [] { g_same = 2; });
    c.join();
    try {
      d.join();
      out += "no conflict";
    } catch (const detux::error& e) {
      CHECK(e.conflict());
      CHECK_EQ(e.child(), det_child_t{4});
      CHECK(e.conflict_addr() == reinterpret_cast<uintptr_t>(&g_same));
      out += "conflict " + std::to_string(g_same);
    }
  });
  EXPECT_EQ(out, "10 0, 10 20, conflict 1");
}

int g_phase[4];
TEST(Barrier, AfterEachBarrierEveryThreadSeesTheOthersWrites) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = captured([] {
      detux::run_group(0, 4, [](det_child_t me) {
        for (int round = 1; round <= 3; ++round) {
          g_phase[me] = round * 10 + static_cast<int>(me);
          detux::barrier();
          int sum = 0;
          for (int k = 0; k < 4; ++k) sum += g_phase[k];
          printf("thread %lu round %d sees %d\n", me, round, sum);
          detux::barrier();
        }
      });
    });
    for (int k = 0; k < 4; ++k) out += " " + std::to_string(g_phase[k]);
  });
  std::string want;
  for (int round = 1; round <= 3; ++round)
    for (int t = 0; t < 4; ++t)
      want += "thread " + std::to_string(t) + " round " + std::to_string(round) + " sees " +
              std::to_string(4 * round * 10 + 6) + "\n";
  EXPECT_EQ(out, want + " 30 31 32 33");
}

double* g_data;
TEST(ParallelFor, AFloatingPointReductionIsBitIdenticalOnOneOrTwoCpus) {
  NEEDS_DETUX_MALLOC();
  auto reduce_with = [](int cpus) {
    return [cpus](std::string& out) {
      cpu_set_t set;
      CPU_ZERO(&set);
      for (int i = 0; i < cpus; ++i) CPU_SET(i, &set);
      sched_setaffinity(0, sizeof set, &set);
      const long n = 100000;
      g_data = static_cast<double*>(malloc(n * sizeof(double)));
      detux::parallel_for(0, n, 10000, [](long i) { g_data[i] = std::sin(i * 0.001) / (i + 1); });
      double s = detux::parallel_reduce(0L, n, 7000L, 0.0, [](long i) { return g_data[i]; },
                                        [](double a, double b) { return a + b; });
      char b[64];
      snprintf(b, sizeof b, "%a", s);
      out += b;
    };
  };
  std::string one = twice(reduce_with(1));
  std::string two = twice(reduce_with(2));
  EXPECT_EQ(one, two);
  EXPECT_FALSE(one.empty());
}

// ---- Processes --------------------------------------------------------------

TEST(Process, ForkAndWaitInASpaceGiveLowestIdsAndExitStatusesInOrder) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = captured([] {
      if (dfork(0) == 0) {
        for (int i = 0; i < 3; ++i) {
          pid_t p = fork();
          if (p == 0) {
            printf("process %d\n", i);
            exit(40 + i);
          }
          printf("forked %d\n", p);
        }
        if (fork() == 0) {
          volatile int* bad = nullptr;
          *bad = 1;
        }
        int st;
        pid_t p;
        while ((p = wait(&st)) > 0) {
          if (WIFEXITED(st)) printf("pid %d exited %d\n", p, WEXITSTATUS(st));
          else printf("pid %d killed by signal %d\n", p, WTERMSIG(st));
        }
        printf("then %s\n", errno == ECHILD ? "ECHILD" : "?");
        fflush(stdout);
        ret_forever();
      }
      CHECK_EQ(djoin(0), 0);
    });
  });
  EXPECT_EQ(out,
            "forked 1\nforked 2\nforked 3\nprocess 0\npid 1 exited 40\nprocess 1\n"
            "pid 2 exited 41\nprocess 2\npid 3 exited 42\npid 4 killed by signal 11\nthen ECHILD\n");
}

TEST(Process, AProcessNeverMergesItsMemoryIntoItsParent) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    g_values[0] = 1;
    if (dfork(0) == 0) {
      if (fork() == 0) {
        g_values[0] = 99;
        exit(0);
      }
      wait(nullptr);
      g_values[1] = g_values[0];
      ret_forever();
    }
    CHECK_EQ(djoin(0), 0);
    out += std::to_string(g_values[1]);
  });
  EXPECT_EQ(out, "1");
}

struct Actor {
  int x;
  double y;
};
Actor g_actor[8];

// libseccomp is needed only to build the filters, once: it is not mapped in
// a master that has made spaces.
TEST(Mappings, LibseccompIsNotMappedInAMasterWithSpaces) {
  NEEDS_DETUX_MALLOC();
  detux::thread t(1, [] { g_actor[1].x = 6; });
  t.join();
  ASSERT_EQ(g_actor[1].x, 6);
  EXPECT_FALSE(mapped("libseccomp"));
}

// Every mapping costs every fork of the master and every exit of a space,
// and elfutils is five libraries: it is loaded when a name is asked for.
TEST(Mappings, ElfutilsIsMappedOnlyOnceAnAddressIsNamed) {
  NEEDS_DETUX_MALLOC();
  detux::thread t(1, [] { g_actor[1].x = 5; });  // the process is master, with a space
  t.join();
  ASSERT_EQ(g_actor[1].x, 5);
  EXPECT_FALSE(mapped("libdw")) << "libdw was mapped before any name was asked for";
  char buf[256];
  det_describe_address(reinterpret_cast<uint64_t>(&g_actor[2].y), buf, sizeof buf);
  EXPECT_EQ(std::string(buf).substr(0, 11), "g_actor[2].") << buf;
  EXPECT_TRUE(mapped("libdw"));
}
TEST(Cxx, AJoinConflictNamesTheVariableFromDebugInfo) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    detux::thread a(1, [] { g_actor[3].x = 1; });
    detux::thread b(2, [] { g_actor[3].x = 2; });
    a.join();
    try {
      b.join();
    } catch (const detux::error& e) {
      std::string what = e.what();
      out += what.substr(0, what.find(" ("));  // the address varies with ASLR
    }
  });
  EXPECT_EQ(out, "detux: child 2: merge conflict: both parent and child changed the same bytes at "
                 "g_actor[3].x");
}
