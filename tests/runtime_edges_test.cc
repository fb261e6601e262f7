// runtime_edges_test.cc: the runtime library at its edges, where a review
// (December 7) found it broken: a failed group whose threads had merged
// heap blocks at a barrier, loops whose grain or range reaches LONG_MAX, a
// reduction over bool, a group whose start failed half-way, fstatat on a
// directory descriptor, input whose arrival decided what a space read, a
// loop's conflict that did not say where, a malloc without errno, and a
// group join that timed out and left a thread running.  Every scenario runs twice and must report the same.
//
// The sanitizer build cannot run these: AddressSanitizer's allocator owns
// malloc there and asks Linux for memory, which a space may not do.
#include <detux/detux.hpp>
#include <dirent.h>
#include <malloc.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>

#include "failing_group.h"
#include "harness.h"

using namespace detux::test;

namespace {

char* g_later;

TEST(RuntimeEdges, AFailedGroupKeepsTheBlocksItsThreadsMergedAtABarrier) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    CHECK_EQ(run_failing_group("thread 0's node"), -DET_EFAULTED);
    char* node = g_group_node;
    CHECK(node != nullptr);
    det_thread_start(
        5,
        [](void*) {
          g_later = static_cast<char*>(malloc(64));
          std::strcpy(g_later, "a later thread's block");
        },
        nullptr);
    CHECK_EQ(djoin(5), 0);
    out += std::string(node) + " / " + g_later + (node == g_later ? " (the same block)" : "");
    CHECK(node != g_later);
  });
  EXPECT_EQ(out, "thread 0's node / a later thread's block");
}

long g_calls[4];

TEST(RuntimeEdges, AParallelForWithAGrainOrRangeNearLongMaxRunsEachIndexOnce) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    std::memset(g_calls, 0, sizeof g_calls);
    auto count = [](long i, void*) {
      if (i >= 0 && i < 3) ++g_calls[i];
      else ++g_calls[3];  // an index outside the range
    };
    CHECK_EQ(det_parallel_for(0, 3, LONG_MAX, count, nullptr), 0);
    out += std::to_string(g_calls[0]) + std::to_string(g_calls[1]) + std::to_string(g_calls[2]) +
           " outside " + std::to_string(g_calls[3]);
    std::memset(g_calls, 0, sizeof g_calls);
    detux::parallel_for(LONG_MAX - 3, LONG_MAX, 2, [](long i) { ++g_calls[i - (LONG_MAX - 3)]; });
    out += ", top of range: " + std::to_string(g_calls[0]) + std::to_string(g_calls[1]) +
           std::to_string(g_calls[2]);
  });
  EXPECT_EQ(out, "111 outside 0, top of range: 111");
}

TEST(RuntimeEdges, AParallelReduceOverBoolMergesWithoutConflict) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    bool any = detux::parallel_reduce(
        0L, 100L, 7L, false, [](long i) { return i == 63; }, [](bool a, bool b) { return a || b; });
    out += any ? "found" : "not found";
    try {
      detux::parallel_reduce(0L, 10L, 0L, 0L, [](long i) { return i; }, [](long a, long b) { return a + b; });
      out += ", grain 0 accepted";
    } catch (const detux::error& e) {
      out += ", grain 0 refused";
    }
  });
  EXPECT_EQ(out, "found, grain 0 refused");
}

TEST(RuntimeEdges, AGroupWhoseStartFailsLeavesNoThreadBehind) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    det_thread_start(1, [](void*) {}, nullptr);  // id 1 is taken
    try {
      detux::run_group(0, 2, [](det_child_t) {});
      out += "started";
    } catch (const detux::error& e) {
      out += "refused";
    }
    CHECK_EQ(djoin(1), 0);
    detux::run_group(0, 1, [](det_child_t) {});  // id 0 is free again
    out += ", again ok";
  });
  EXPECT_EQ(out, "refused, again ok");
}

TEST(RuntimeEdges, FstatatOnADirectoryDescriptorDescribesTheNamedEntry) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    det_thread_start(
        0,
        [](void*) {
          mkdir("/d", 0755);
          FILE* f = std::fopen("/d/file", "w");
          std::fputs("hello", f);
          std::fclose(f);
          DIR* d = opendir("/d");
          struct stat st {};
          int r = fstatat(dirfd(d), "file", &st, 0);
          std::printf("file: %d dir %d size %ld; ", r, S_ISDIR(st.st_mode) ? 1 : 0,
                      static_cast<long>(st.st_size));
          r = fstatat(dirfd(d), "nonexistent", &st, 0);
          std::printf("nonexistent: %d; ", r);
          r = fstatat(dirfd(d), "", &st, AT_EMPTY_PATH);
          std::printf("itself: %d dir %d\n", r, S_ISDIR(st.st_mode) ? 1 : 0);
          closedir(d);
        },
        nullptr);
    out += captured([] { CHECK_EQ(djoin(0), 0); });
  });
  EXPECT_EQ(out, "file: 0 dir 0 size 5; nonexistent: -1; itself: 0 dir 1\n");
}

volatile long g_both_chunks_write_this;  // volatile: never read, its stores would go

TEST(RuntimeEdges, AConflictInAParallelLoopSaysWhichVariable) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    try {
      detux::parallel_for(0, 2, 1, [](long i) { g_both_chunks_write_this = i + 1; });
      out += "no conflict";
    } catch (const detux::error& e) {
      std::string what = e.what();
      out += what.find("g_both_chunks_write_this") != std::string::npos ? "named" : what;
    }
  });
  EXPECT_EQ(out, "named");
}

TEST(RuntimeEdges, AMallocLargerThanTheHeapSaysENOMEM) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    errno = 0;
    void* p = malloc(SIZE_MAX / 2);
    out += p ? "got a block" : std::string("NULL, ") + (errno == ENOMEM ? "ENOMEM" : std::to_string(errno));
    free(p);
  });
  EXPECT_EQ(out, "NULL, ENOMEM");
}

// A second review (December 8): pvalloc's rounding wrapped SIZE_MAX to a
// small block, and det_describe_address faulted the space that called it
// (it tried to load the names module).
TEST(RuntimeEdges, PvallocOfNearlySizeMaxSaysENOMEM) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    errno = 0;
    void* p = pvalloc(SIZE_MAX - 100);
    out += p ? "got a block" : std::string("NULL, ") + (errno == ENOMEM ? "ENOMEM" : std::to_string(errno));
    free(p);
  });
  EXPECT_EQ(out, "NULL, ENOMEM");
}

// fcntl and pread on the console faulted a space (a review, December 8):
// fdopen(1, ...) asks fcntl(F_GETFL) first.
TEST(RuntimeEdges, TheConsoleAnswersFcntlAndRefusesPreadAsAPipeWould) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      char c;
      std::printf("F_GETFL(1) write-only: %d; ", (fcntl(1, F_GETFL) & O_ACCMODE) == O_WRONLY);
      std::printf("pread(0): %s; ", pread(0, &c, 1, 0) < 0 && errno == ESPIPE ? "ESPIPE" : "?");
      std::fflush(stdout);
      FILE* f = fdopen(1, "w");
      std::fprintf(f ? f : stdout, "%s\n", f ? "fdopen(1) writes" : "no fdopen");
      std::fflush(nullptr);
      for (;;) dret();
    }
    out += captured([] { CHECK_EQ(djoin(0), 0); });
  });
  EXPECT_EQ(out, "F_GETFL(1) write-only: 1; pread(0): ESPIPE; fdopen(1) writes\n");
}

char g_described[64];
TEST(RuntimeEdges, DescribeAddressInASpaceGivesTheNumber) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      det_describe_address(0x1234, g_described, sizeof g_described);
      for (;;) dret();
    }
    CHECK_EQ(djoin(0), 0);
    out += g_described;
  });
  EXPECT_EQ(out, "0x1234");
}

TEST(RuntimeEdges, AGroupJoinThatTimesOutLeavesNoThreadRunning) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    CHECK_EQ(det_set_wait_timeout(200), 0);
    det_thread_start(
        0,
        [](void*) {
          for (;;) asm volatile("" ::: "memory");
        },
        nullptr);
    det_child_t failed = 99;
    out += "join " + std::to_string(det_group_join(0, 1, &failed, nullptr));
    det_status st{};
    CHECK_EQ(dget(0, DET_STATUS | DET_DONT_WAIT, &st, sizeof st, nullptr), 0L);
    out += ", thread 0 state " + std::to_string(st.state);
  });
  EXPECT_EQ(out, "join " + std::to_string(-ETIMEDOUT) + ", thread 0 state 0");
}

// The same bytes on standard input, once at once and once with pauses: a
// space reads them in the same pieces (a line at a time) and its heap
// grows the same way, whenever they arrived.
detux::test::Run read_piped_input(bool slow, bool nonblocking = false) {
  return in_master([slow, nonblocking](std::string& out) {
    int p[2];
    CHECK_EQ(pipe(p), 0);
    std::fflush(nullptr);
    pid_t writer = fork();
    if (writer == 0) {
      close(p[0]);
      (void)!write(p[1], "one\n", 4);
      if (slow) usleep(150 * 1000);
      (void)!write(p[1], "two\nthree", 9);
      if (slow) usleep(150 * 1000);
      (void)!write(p[1], "\n", 1);
      _exit(0);
    }
    close(p[1]);
    dup2(p[0], 0);
    close(p[0]);
    if (nonblocking) CHECK_EQ(fcntl(0, F_SETFL, O_NONBLOCK), 0);
    det_thread_start(
        0,
        [](void*) {
          char buf[64];
          long n;
          int k = 0;
          while ((n = read(0, buf, sizeof buf)) > 0)
            std::printf("%ld %p; ", n, malloc(static_cast<size_t>(100 * ++k)));
          std::printf("end\n");
        },
        nullptr);
    out += captured([] { CHECK_EQ(djoin(0), 0); });
    waitpid(writer, nullptr, 0);
  });
}

TEST(RuntimeEdges, WhatASpaceReadsFromAPipeDependsOnTheBytesNotOnWhenTheyArrived) {
  NEEDS_DETUX_MALLOC();
  detux::test::Run at_once = read_piped_input(false), paused = read_piped_input(true);
  EXPECT_TRUE(at_once.ok()) << at_once.out;
  EXPECT_TRUE(paused.ok()) << paused.out;
  EXPECT_EQ(at_once.out, paused.out);
  EXPECT_EQ(paused.out.substr(0, 2), "4 ") << paused.out;
  EXPECT_NE(paused.out.find("; 4 "), std::string::npos) << paused.out;
  EXPECT_NE(paused.out.find("; 6 "), std::string::npos) << paused.out;
}

// A join held a child's whole output in one block of the joiner's heap, and
// dropped all of it, silently, when that block did not fit under the memory
// limit (a review, December 8).  It now reads it through a small window, so
// a space joining a child needs room only for its own output buffer.
void print_five_megabytes() {
  std::string line(1023, 'x');
  for (int k = 0; k < 5120; ++k) std::printf("%s\n", line.c_str());
}

TEST(RuntimeEdges, AChildsOutputArrivesWholeWhenItsParentIsNearTheMemoryLimit) {
  NEEDS_DETUX_MALLOC();
  auto r = in_master([](std::string& out) {
    det_limits l{};
    l.max_space_bytes = 32L << 20;
    CHECK_EQ(det_set_limits(&l), 0);
    det_thread_start(
        0,
        [](void*) {
          void* held = malloc(11L << 20);
          if (dfork(1) == 0) {
            print_five_megabytes();
            std::fflush(nullptr);
            for (;;) dret();
          }
          std::printf("%s, joined %d\n", held ? "held" : "none", djoin(1));
        },
        nullptr);
    std::string got = captured([] { CHECK_EQ(djoin(0), 0); });
    out += std::to_string(got.size()) + " bytes, " + (got.ends_with("held, joined 0\n") ? "ending right" : "ending wrong");
  });
  EXPECT_TRUE(r.ok()) << r.out.substr(0, 200);
  EXPECT_EQ(r.out, "5242895 bytes, ending right");  // 5 MiB and the last line
}

// A space that had read ahead (scanf buffers a line) re-read, after its
// child's join, what the child had read on from there (a review, December 8).
TEST(RuntimeEdges, AfterAJoinASpaceReadsOnFromWhereItsChildStopped) {
  NEEDS_DETUX_MALLOC();
  auto r = in_master([](std::string& out) {
    int p[2];
    CHECK_EQ(pipe(p), 0);
    CHECK_EQ(write(p[1], "1 2 3\n4\n5\n", 10), 10);
    close(p[1]);
    dup2(p[0], 0);
    close(p[0]);
    if (dfork(1) == 0) {
      int x;
      if (std::scanf("%d", &x) == 1) std::printf("P read %d; ", x);
      if (dfork(2) == 0) {
        int y;
        for (int k = 0; k < 3 && std::scanf("%d", &y) == 1; ++k) std::printf("C read %d; ", y);
        std::fflush(nullptr);
        _exit(0);
      }
      CHECK_EQ(djoin(2), 0);
      int z;
      while (std::scanf("%d", &z) == 1) std::printf("P then read %d; ", z);
      std::printf("end\n");
      std::fflush(nullptr);
      _exit(0);
    }
    out += captured([] { CHECK_EQ(djoin(1), 0); });
  });
  EXPECT_TRUE(r.ok()) << r.out;
  EXPECT_EQ(r.out, "P read 1; C read 2; C read 3; C read 4; P then read 5; end\n");
}

// A stdin left non-blocking by whoever started the program said EAGAIN while
// the writer paused, and the master took that for the end of the input (a
// review, December 8): what a space read depended on timing again.
TEST(RuntimeEdges, ANonBlockingStdinIsReadToItsEndWhateverTheTiming) {
  NEEDS_DETUX_MALLOC();
  detux::test::Run at_once = read_piped_input(false), paused = read_piped_input(true, true);
  EXPECT_TRUE(paused.ok()) << paused.out;
  EXPECT_EQ(at_once.out, paused.out);
}

}  // namespace
