// qsort.cc: the thesis's parallel quicksort, on detux or pthreads.
//
// n 32-bit keys from the PRNG (seed 1).  The master partitions the array
// around a median-of-three pivot and forks two children, one per side; each
// child does the same until log2(2N) levels of forking are used up (so 2N
// leaves for N threads, as in Determinator's pqsort), and then sorts its
// part with std::sort.  On detux every child writes only its own part of
// the array, so the merges at the joins never conflict; the inner levels
// fork and join inside spaces.  Check: the result is sorted, and holds the
// same keys (their sum and xor) as the input.  The digest covers the
// sorted keys, so it is the same for every N.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common.h"

namespace {

constexpr long kSerialBelow = 16;  // the thesis forks even for 1K keys: so do we

struct Part {
  uint32_t* a;
  long lo, hi;  // [lo, hi)
  int depth;    // levels of forking left
};

uint32_t median3(uint32_t x, uint32_t y, uint32_t z) {
  return std::max(std::min(x, y), std::min(std::max(x, y), z));
}

void psort(void* p) {
  const Part& s = *static_cast<Part*>(p);
  uint32_t* a = s.a;
  if (s.depth == 0 || s.hi - s.lo < kSerialBelow) {
    std::sort(a + s.lo, a + s.hi);
    return;
  }
  const uint32_t pivot = median3(a[s.lo], a[s.lo + (s.hi - s.lo) / 2], a[s.hi - 1]);
  uint32_t* mid = std::partition(a + s.lo, a + s.hi, [pivot](uint32_t x) { return x < pivot; });
  long m = mid - a;
  if (m == s.lo) {  // every key >= pivot: move the keys equal to it to the left
    mid = std::partition(a + s.lo, a + s.hi, [pivot](uint32_t x) { return x == pivot; });
    m = mid - a;
  }
  Part left{a, s.lo, m, s.depth - 1}, right{a, m, s.hi, s.depth - 1};
  par::Task t[2];
  par::fork(t[0], 0, psort, &left, {a + left.lo, (left.hi - left.lo) * sizeof(uint32_t)});
  par::fork(t[1], 1, psort, &right, {a + right.lo, (right.hi - right.lo) * sizeof(uint32_t)});
  par::join(t[0]);
  par::join(t[1]);
}

int log2_ceil(long x) {
  int l = 0;
  while ((1L << l) < x) ++l;
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  const eval::Args args = eval::parse(argc, argv, 1000000);
  const long n = args.size;
  auto* input = static_cast<uint32_t*>(std::malloc(n * sizeof(uint32_t)));
  auto* a = static_cast<uint32_t*>(std::malloc(n * sizeof(uint32_t)));
  if (!input || !a) return std::fprintf(stderr, "qsort: out of memory\n"), 1;
  eval::Rng rng(1);
  uint64_t sum = 0, x = 0;
  for (long i = 0; i < n; ++i) {
    input[i] = static_cast<uint32_t>(rng.next());
    sum += input[i];
    x ^= input[i];
  }
  double total = 0;
  for (int r = 0; r < args.repeat; ++r) {
    std::memcpy(a, input, n * sizeof(uint32_t));
    Part all{a, 0, n, log2_ceil(2L * args.threads)};
    const double t0 = par::now();
    psort(&all);
    total += par::now() - t0;
  }
  uint64_t sum2 = 0, x2 = 0;
  for (long i = 0; i < n; ++i) sum2 += a[i], x2 ^= a[i];
  const bool ok = std::is_sorted(a, a + n) && sum == sum2 && x == x2;
  eval::Digest d;
  d.add(a, n * sizeof(uint32_t));
  return eval::report("qsort", args, total, ok, d);
}
