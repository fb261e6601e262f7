// own_test.cc: DET_OWN, the hint that gives a child its own copies of the
// pages it is about to write before it starts, and det_thread_start_writing
// on top of it.  A hint must change nothing a program can see: the child
// reads the same bytes, merges and conflicts come out as without it, and a
// bad range is refused before any child is made.  What it does change is
// pinned through /proc/PID/pagemap: the owned pages, and only those, are
// mapped by the space alone.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <detux/detux.hpp>

#include "harness.h"

using detux::test::children_of;
using detux::test::in_master;
using detux::test::ret_forever;
using detux::test::status_of;
using detux::test::twice;

namespace {

constexpr size_t kPages = 16;
alignas(4096) volatile uint8_t g_region[kPages * 4096];

// Which pages of g_region the process maps exclusively (pagemap bit 56),
// one letter per page: 'x' exclusive, '.' shared or absent.
std::string exclusive_map(pid_t pid) {
  std::string out(kPages, '?');
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  uint64_t e[kPages];
  off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(g_region) / 4096 * 8);
  if (pread(fd, e, sizeof e, at) == static_cast<ssize_t>(sizeof e))
    for (size_t i = 0; i < kPages; ++i) out[i] = (e[i] >> 56) & 1 ? 'x' : '.';
  close(fd);
  return out;
}

// The exclusive maps of every process the master has made, sorted.
std::string maps_of_children() {
  std::vector<std::string> maps;
  for (pid_t p : children_of(getpid())) maps.push_back(exclusive_map(p));
  std::sort(maps.begin(), maps.end());
  std::string out;
  for (const std::string& m : maps) out += m + " ";
  return out;
}

// Pieces of 100 bytes at offset 8 of pages 2, 4 and 6 (stride 2 pages).
det_stride g_rep{3, 2 * 4096};
void* piece0() { return const_cast<uint8_t*>(g_region) + 2 * 4096 + 8; }

// FNV-1a over an array's values, as a decimal string.
template <typename T, size_t N>
std::string digest(const T (&a)[N]) {
  uint64_t h = 1469598103934665603ULL;
  for (T v : a) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ULL;
  return std::to_string(h);
}

void fill_region() {
  for (size_t i = 0; i < sizeof g_region; ++i) g_region[i] = static_cast<uint8_t>(i * 7);
}

}  // namespace

// The space reads every byte of the region, writes page 0 and stops.  Made
// and started by one Put (a dfork's birth, finished at the master's next
// call, which then owns the pages), or made stopped first and given
// DET_OWN with its start (owned at once).
void own_then_read(std::string& out, bool one_put) {
  fill_region();
  const unsigned long own = DET_SNAP | DET_START | DET_OWN;
  long r = one_put ? dput(0, DET_FORK | own, &g_rep, 100, piece0())
                   : dput(0, DET_FORK | DET_SNAP, nullptr, 0, nullptr);
  if (r == DET_CHILD) {
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof g_region; ++i) sum += g_region[i] * (i % 13 + 1);
    g_region[0] = static_cast<uint8_t>(sum);  // the only write: page 0, not owned
    ret_forever();
  }
  CHECK_EQ(r, 0L);
  if (!one_put) CHECK_EQ(dput(0, own, &g_rep, 100, piece0()), 0L);
  CHECK_EQ(status_of(0).state, DET_S_STOPPED);
  // The space: pages 0 (its write), 2, 4, 6 (owned).  Its snapshot shares
  // every page with the master.
  CHECK(maps_of_children().find("x.x.x.x.........") != std::string::npos);
  uint64_t sum = 0;
  for (size_t i = 0; i < sizeof g_region; ++i) sum += g_region[i] * (i % 13 + 1);
  CHECK_EQ(djoin(0), 0);
  CHECK_EQ(g_region[0], static_cast<uint8_t>(sum));  // it read what the master holds
  out += std::to_string(g_region[0]) + " ";
}

TEST(Own, OnlyTheOwnedPagesAreTheSpacesAloneAndItReadsTheSameBytes) {
  std::string out = twice([](std::string& out) { own_then_read(out, true); });
  EXPECT_FALSE(out.empty());
}

TEST(Own, AStoppedChildOwnsThePagesAtOnceWhenStartedWithIt) {
  std::string out = twice([](std::string& out) { own_then_read(out, false); });
  EXPECT_FALSE(out.empty());
}

TEST(Own, WithoutItNoPageOfTheRegionIsTheSpacesAlone) {
  auto r = in_master([](std::string&) {
    fill_region();
    if (dfork(0) == 0) ret_forever();
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    CHECK(maps_of_children().find('x') == std::string::npos);
    CHECK_EQ(djoin(0), 0);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST(Own, OwnedPagesStillMergeThreeWaysAndStillConflict) {
  std::string out = twice([](std::string& out) {
    fill_region();
    for (int round = 0; round < 2; ++round) {
      uint8_t* p2 = const_cast<uint8_t*>(g_region) + 2 * 4096;
      long r = dput(0, DET_FORK | DET_SNAP | DET_START | DET_OWN, &g_rep, 100, piece0());
      if (r == DET_CHILD) {
        p2[10] = 0xaa;                   // owned page, a byte only the child writes
        if (round == 1) p2[20] = 0xbb;   // ... and in round 1 one the master writes too
        ret_forever();
      }
      p2[30] = 0xcc;                     // the master's own byte on the same page
      if (round == 1) p2[20] = 0xdd;
      det_status st{};
      int j = djoin_status(0, &st);
      out += std::to_string(j) + ":" + std::to_string(p2[10]) + "," + std::to_string(p2[20]) +
             "," + std::to_string(p2[30]) + " ";
      if (j == -DET_ECONFLICT)
        out += std::to_string(st.conflict_addr - reinterpret_cast<uintptr_t>(g_region)) + " ";
    }
  });
  // Round 0 merges; round 1 conflicts at byte 20 of page 2 and merges nothing.
  EXPECT_EQ(out, "0:170,140,204 -1001:170,221,204 8212 ");
}

// A barrier, by hand: the child wrote pages 3 and 5 and stopped; the master
// merges it, refreshes it (Put MERGE) and takes its new snapshot with or
// without DET_OWN and no range.  With it, those two pages are the space's
// alone again (and so its new snapshot's); without it, they share them.
std::string after_refresh(bool own) {
  std::string out;
  auto r = in_master([own](std::string& out) {
    fill_region();
    if (dfork(0) == 0) {
      g_region[3 * 4096 + 1] = 1;
      g_region[5 * 4096 + 2] = 2;
      ret_forever();
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    void* a = const_cast<uint8_t*>(g_region);
    CHECK_EQ(dget(0, DET_MERGE, a, sizeof g_region, a), 0L);  // the barrier's merge
    CHECK_EQ(g_region[3 * 4096 + 1], 1);
    CHECK_EQ(dput(0, DET_MERGE, a, sizeof g_region, a), 0L);  // its refresh
    CHECK_EQ(dput(0, DET_SNAP | (own ? DET_OWN : 0), nullptr, 0, nullptr), 0L);
    out += maps_of_children();
    CHECK_EQ(djoin(0), 0);
  });
  EXPECT_TRUE(r.ok()) << r.out;
  return r.out;
}

TEST(Own, WithNoRangeAfterARefreshThePagesTheChildWroteAreItsOwnAgain) {
  EXPECT_NE(after_refresh(true).find("...x.x.........."), std::string::npos);
  EXPECT_EQ(after_refresh(false).find('x'), std::string::npos);
}

TEST(Own, ARangeNotMappedWritableIsRefusedBeforeAnyChildIsMade) {
  auto r = in_master([](std::string&) {
    // Far below where Linux places mappings, so that nothing (the sanitizer's
    // allocator, say) is mapped into the hole this test makes.
    long page = sysconf(_SC_PAGESIZE);
    const int how = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
    auto* ro = static_cast<uint8_t*>(mmap(reinterpret_cast<void*>(0x300000000000), 3 * page,
                                          PROT_READ | PROT_WRITE, how, -1, 0));
    CHECK(ro == reinterpret_cast<uint8_t*>(0x300000000000));
    CHECK_EQ(mprotect(ro + page, page, PROT_READ), 0);
    CHECK_EQ(munmap(ro + 2 * page, page), 0);
    const unsigned long f = DET_FORK | DET_SNAP | DET_START | DET_OWN;
    CHECK_EQ(dput(0, f, nullptr, 10, ro + page), -EFAULT);        // read-only
    CHECK_EQ(dput(0, f, nullptr, 10, ro + 2 * page), -EFAULT);    // unmapped
    det_stride over{2, static_cast<size_t>(2 * page)};            // second piece unmapped
    CHECK_EQ(dput(0, f, &over, 10, ro), -EFAULT);
    CHECK_EQ(dput(0, f, nullptr, 16, reinterpret_cast<void*>(-8L)), -EINVAL);  // wraps
    det_stride none{0, 0}, tight{2, 4};
    CHECK_EQ(dput(0, f, &none, 10, ro), -EINVAL);
    CHECK_EQ(dput(0, f, &tight, 10, ro), -EINVAL);                // stride < size
    CHECK_EQ(dput(0, f | DET_COPY, nullptr, 10, ro), -EINVAL);
    CHECK_EQ(dget(0, DET_OWN, nullptr, 10, ro), -EINVAL);
    CHECK_EQ(status_of(0).state, DET_S_ABSENT);                    // nothing was made
    long made = dput(0, f, nullptr, 10, ro);                       // and a good one works
    if (made == DET_CHILD) ret_forever();
    CHECK_EQ(made, 0L);
    CHECK_EQ(dput(0, DET_OWN, nullptr, 10, ro + page), -EFAULT);  // an existing child too
    CHECK_EQ(dput(0, DET_OWN, nullptr, 10, ro), 0L);
    det_stride once{1, ~0UL};  // one piece: the stride is not used
    CHECK_EQ(dput(0, DET_OWN, &once, 10, ro), 0L);
    CHECK_EQ(djoin(0), 0);
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

namespace {

// A worker writing a strided block, as matmult's does.
struct Block {
  int32_t* m;
  long n, row0, col0, side;
};
int32_t g_matrix[64 * 64];
Block g_blocks[4];

void fill_block(void* p) {
  const Block& b = *static_cast<Block*>(p);
  for (long i = b.row0; i < b.row0 + b.side; ++i)
    for (long j = b.col0; j < b.col0 + b.side; ++j)
      b.m[i * b.n + j] = static_cast<int32_t>(i * 1000 + j);
}

std::string blocks_with(bool writing) {
  std::memset(g_matrix, 0, sizeof g_matrix);
  for (int q = 0; q < 4; ++q) {
    g_blocks[q] = Block{g_matrix, 64, (q / 2) * 32, (q % 2) * 32, 32};
    const Block& b = g_blocks[q];
    int r = writing ? det_thread_start_writing(q, fill_block, &g_blocks[q],
                                               g_matrix + b.row0 * 64 + b.col0, 32 * 4, 32, 64 * 4)
                    : det_thread_start(q, fill_block, &g_blocks[q]);
    CHECK_EQ(r, 0);
  }
  for (int q = 0; q < 4; ++q) CHECK_EQ(djoin(q), 0);
  return digest(g_matrix);
}

}  // namespace

TEST(Own, ThreadsStartedWritingComputeWhatPlainThreadsCompute) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    std::string plain = blocks_with(false), writing = blocks_with(true);
    CHECK(plain == writing);
    out += writing;
  });
  EXPECT_FALSE(out.empty());
}

namespace {

int64_t g_out[64 * 1024];  // 512 KiB: 128 pages

void square(long i, void*) { g_out[i] = i * i + 1; }

std::string loop_with(bool writing) {
  std::memset(g_out, 0, sizeof g_out);
  const long n = sizeof g_out / sizeof g_out[0];
  int r = writing ? det_parallel_for_writing(0, n, 4096, square, nullptr, g_out, sizeof g_out[0])
                  : det_parallel_for(0, n, 4096, square, nullptr);
  CHECK_EQ(r, 0);
  return digest(g_out);
}

}  // namespace

TEST(Own, ALoopWritingItsOutputComputesWhatAPlainLoopComputes) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    std::string plain = loop_with(false), writing = loop_with(true);
    CHECK(plain == writing);
    CHECK_EQ(g_out[1000], 1000L * 1000 + 1);
    detux::parallel_for(0, 1024, 256, g_out, [](long i) { g_out[i] = -i; });  // C++
    CHECK_EQ(g_out[1000], -1000L);
    // An output the chunks cannot own: refused before the first chunk starts.
    CHECK_EQ(det_parallel_for_writing(0, 16, 4, square, nullptr, reinterpret_cast<void*>(0x10000),
                                      8),
             -EFAULT);
    out += writing;
  });
  EXPECT_FALSE(out.empty());
}
