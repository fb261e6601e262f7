// matmult.cc: the thesis's matmult, on detux or pthreads (see par.h).
//
// C = A * B for square int matrices of side n (a multiple of 8), as in
// Determinator's user/matmult.c.  C is cut into an 8 x 8 grid of 64 blocks
// and each block is computed by its own child; the master forks all 64,
// then joins them in order.  The number of children never depends on N:
// the harness sets the CPUs a run may use (taskset), so on detux the digest
// is the same whatever N is.  Blocks of a row-major C are not contiguous,
// so siblings write different bytes of the same pages, which the byte-wise
// merge accepts.  Check: the whole product against a sequential one for
// n <= 256, else 256 entries chosen by the PRNG, each computed directly.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

constexpr int kGrid = 8;  // 8 x 8 = 64 blocks

struct Job {
  const int32_t* a;
  const int32_t* b;
  int32_t* c;
  long n, row0, col0, side;
};

// One block of C: rows [row0, row0+side), columns [col0, col0+side), a
// strip of at most kStrip columns at a time, summed on the stack: a child
// that allocated would make every later join scan more heap.
constexpr long kStrip = 256;
void block(void* p) {
  const Job& j = *static_cast<Job*>(p);
  int32_t acc[kStrip];
  for (long c0 = j.col0; c0 < j.col0 + j.side; c0 += kStrip) {
    const long w = std::min(kStrip, j.col0 + j.side - c0);
    for (long i = j.row0; i < j.row0 + j.side; ++i) {
      std::fill(acc, acc + w, 0);
      for (long k = 0; k < j.n; ++k) {
        const int32_t aik = j.a[i * j.n + k];
        const int32_t* brow = j.b + k * j.n + c0;
        for (long x = 0; x < w; ++x) acc[x] += aik * brow[x];
      }
      std::memcpy(j.c + i * j.n + c0, acc, w * sizeof(int32_t));
    }
  }
}

int32_t entry(const int32_t* a, const int32_t* b, long n, long i, long j) {
  int32_t s = 0;
  for (long k = 0; k < n; ++k) s += a[i * n + k] * b[k * n + j];
  return s;
}

// Freivalds' check, in O(n^2): C r == A (B r) for a vector r of odd numbers,
// in arithmetic mod 2^32 (as the product's own int32 sums wrap).  An odd
// multiplier is a unit mod 2^32, so any one wrong entry of C changes C r,
// and so does a lost row or block unless its errors cancel mod 2^32 (two of
// 2^31 in one row would): every entry is checked, at every size.
bool product_holds(const int32_t* a, const int32_t* b, const int32_t* c, long n) {
  std::vector<uint32_t> r(n), br(n, 0), abr(n, 0), cr(n, 0);
  eval::Rng rng(7);
  for (long j = 0; j < n; ++j) r[j] = static_cast<uint32_t>(rng.next()) | 1u;
  for (long i = 0; i < n; ++i)
    for (long j = 0; j < n; ++j) {
      br[i] += static_cast<uint32_t>(b[i * n + j]) * r[j];
      cr[i] += static_cast<uint32_t>(c[i * n + j]) * r[j];
    }
  for (long i = 0; i < n; ++i)
    for (long j = 0; j < n; ++j) abr[i] += static_cast<uint32_t>(a[i * n + j]) * br[j];
  return abr == cr;
}

}  // namespace

int main(int argc, char** argv) {
  const eval::Args args = eval::parse(argc, argv, 256);
  const long n = args.size;
  if (n % kGrid) return std::fprintf(stderr, "matmult: size must be a multiple of %d\n", kGrid), 2;
  auto* a = static_cast<int32_t*>(std::malloc(n * n * sizeof(int32_t)));
  auto* b = static_cast<int32_t*>(std::malloc(n * n * sizeof(int32_t)));
  auto* c = static_cast<int32_t*>(std::malloc(n * n * sizeof(int32_t)));
  if (!a || !b || !c) return std::fprintf(stderr, "matmult: out of memory\n"), 1;
  eval::Rng rng(1);
  for (long i = 0; i < n * n; ++i) a[i] = static_cast<int32_t>(rng.next() % 16);
  for (long i = 0; i < n * n; ++i) b[i] = static_cast<int32_t>(rng.next() % 16);

  const long side = n / kGrid;
  Job jobs[kGrid * kGrid];
  par::Task tasks[kGrid * kGrid];
  for (int q = 0; q < kGrid * kGrid; ++q) jobs[q] = Job{a, b, c, n, (q / kGrid) * side, (q % kGrid) * side, side};
  double total = 0;
  for (int r = 0; r < args.repeat; ++r) {
    std::memset(c, 0, n * n * sizeof(int32_t));
    const double t0 = par::now();
    for (int q = 0; q < kGrid * kGrid; ++q) {
      const Job& jb = jobs[q];  // its block: side rows of side entries, n apart
      par::Writes out{c + jb.row0 * n + jb.col0, side * sizeof(int32_t), size_t(side),
                      n * sizeof(int32_t)};
      par::fork(tasks[q], q, block, &jobs[q], out);
    }
    for (int q = 0; q < kGrid * kGrid; ++q) par::join(tasks[q]);
    total += par::now() - t0;
  }

  bool ok = product_holds(a, b, c, n);
  for (long i = 0; i < n && ok && n <= 256; ++i)
    for (long j = 0; j < n && ok; ++j) ok = c[i * n + j] == entry(a, b, n, i, j);
  eval::Digest d;
  d.add(c, n * n * sizeof(int32_t));
  return eval::report("matmult", args, total, ok, d);
}
