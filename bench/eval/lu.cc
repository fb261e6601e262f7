// lu.cc: blocked LU decomposition (SPLASH-2 lu, non-contiguous blocks).
//
// A is an n x n matrix of doubles (n a multiple of 16), stored row-major,
// so a block's rows are n apart and the blocks are not contiguous, as in
// SPLASH-2's lu/non_contiguous_blocks.  It is cut into a 16 x 16 grid of
// 256 blocks of side B = n/16.  No pivoting: A is made diagonally dominant.
// Step k of 16:
//   1. the master factors the diagonal block (k,k) into L (unit lower) and
//      U (upper), in place;
//   2. one child per perimeter block: (k,j) := L_kk^-1 A_kj and
//      (i,k) := A_ik U_kk^-1, for i, j > k;
//   3. one child per interior block: A_ij -= A_ik A_kj, for i, j > k.
// Each phase forks its children (at most 64 alive at once, within the
// space quota), joins them in order, and only then does the next begin: the
// joins are the barriers.  The work never depends on N (the harness sets
// the CPUs with taskset), so on detux the digest is the same for every N.
// Check: L*(U*x) against A*x for a vector x from the PRNG, every row to a
// relative tolerance of 1e-9 (O(n^2), so at every size: a lost block or
// update shows in the rows it touches), and for n <= 256 also L*U against
// A entry by entry, to 1e-9 * n.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

constexpr int kGrid = 16;      // 16 x 16 = 256 blocks
constexpr int kMaxLive = 64;   // children alive at once

struct Lu {
  double* a;
  long n, bs;  // side of the matrix, side of a block
  double* at(long bi, long bj) const { return a + bi * bs * n + bj * bs; }
};

struct Job {
  const Lu* m;
  int kind;  // 0: row perimeter (k,j), 1: column perimeter (i,k), 2: interior (i,j)
  long k, i, j;
};

void factor_diagonal(const Lu& m, long k) {
  double* d = m.at(k, k);
  const long n = m.n, b = m.bs;
  for (long p = 0; p < b; ++p)
    for (long r = p + 1; r < b; ++r) {
      const double f = (d[r * n + p] /= d[p * n + p]);
      for (long c = p + 1; c < b; ++c) d[r * n + c] -= f * d[p * n + c];
    }
}

void run_job(void* p) {
  const Job& j = *static_cast<Job*>(p);
  const Lu& m = *j.m;
  const long n = m.n, b = m.bs;
  const double* d = m.at(j.k, j.k);
  if (j.kind == 0) {  // forward substitution with the unit lower L_kk
    double* x = m.at(j.k, j.j);
    for (long p = 0; p < b; ++p)
      for (long r = p + 1; r < b; ++r)
        for (long c = 0; c < b; ++c) x[r * n + c] -= d[r * n + p] * x[p * n + c];
  } else if (j.kind == 1) {  // X U_kk = A_ik, column by column
    double* x = m.at(j.i, j.k);
    for (long p = 0; p < b; ++p)
      for (long r = 0; r < b; ++r) {
        double v = x[r * n + p];
        for (long q = 0; q < p; ++q) v -= x[r * n + q] * d[q * n + p];
        x[r * n + p] = v / d[p * n + p];
      }
  } else {
    double* x = m.at(j.i, j.j);
    const double* l = m.at(j.i, j.k);
    const double* u = m.at(j.k, j.j);
    for (long r = 0; r < b; ++r)
      for (long q = 0; q < b; ++q) {
        const double f = l[r * n + q];
        for (long c = 0; c < b; ++c) x[r * n + c] -= f * u[q * n + c];
      }
  }
}

// The block a job writes: bs rows of bs doubles, n apart.
par::Writes output(const Job& j) {
  const Lu& m = *j.m;
  double* x = j.kind == 0 ? m.at(j.k, j.j) : j.kind == 1 ? m.at(j.i, j.k) : m.at(j.i, j.j);
  return {x, m.bs * sizeof(double), size_t(m.bs), m.n * sizeof(double)};
}

// Runs every job, kMaxLive children at a time, each batch joined in order.
void run_phase(Job* jobs, int count, par::Task* tasks) {
  for (int first = 0; first < count; first += kMaxLive) {
    const int last = first + kMaxLive < count ? first + kMaxLive : count;
    for (int q = first; q < last; ++q)
      par::fork(tasks[q - first], q - first, run_job, &jobs[q], output(jobs[q]));
    for (int q = first; q < last; ++q) par::join(tasks[q - first]);
  }
}

void decompose(const Lu& m) {
  static Job jobs[kGrid * kGrid];
  static par::Task tasks[kMaxLive];
  for (long k = 0; k < kGrid; ++k) {
    factor_diagonal(m, k);
    int count = 0;
    for (long j = k + 1; j < kGrid; ++j) jobs[count++] = Job{&m, 0, k, k, j};
    for (long i = k + 1; i < kGrid; ++i) jobs[count++] = Job{&m, 1, k, i, k};
    run_phase(jobs, count, tasks);
    count = 0;
    for (long i = k + 1; i < kGrid; ++i)
      for (long j = k + 1; j < kGrid; ++j) jobs[count++] = Job{&m, 2, k, i, j};
    run_phase(jobs, count, tasks);
  }
}

// (L U)_ij from the packed factors.
double lu_entry(const double* f, long n, long i, long j) {
  double s = 0;
  const long top = i < j ? i : j;
  for (long q = 0; q <= top; ++q) s += (q == i ? 1.0 : f[i * n + q]) * f[q * n + j];
  return s;
}

// L (U x) == A x, row by row, relative to sum_j |A_ij x_j|: f holds U on and
// above the diagonal and L (unit diagonal) below it.
bool factors_hold(const double* f, const double* orig, long n) {
  std::vector<double> x(n), ux(n, 0.0);
  eval::Rng rng(7);
  for (long j = 0; j < n; ++j) x[j] = rng.unit() + 0.5;
  for (long q = 0; q < n; ++q)
    for (long j = q; j < n; ++j) ux[q] += f[q * n + j] * x[j];
  for (long i = 0; i < n; ++i) {
    double lux = ux[i], ax = 0, scale = 0;
    for (long q = 0; q < i; ++q) lux += f[i * n + q] * ux[q];
    for (long j = 0; j < n; ++j) {
      ax += orig[i * n + j] * x[j];
      scale += std::fabs(orig[i * n + j] * x[j]);
    }
    if (!(std::fabs(lux - ax) <= 1e-9 * scale)) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const eval::Args args = eval::parse(argc, argv, 512);
  const long n = args.size;
  if (n % kGrid) return std::fprintf(stderr, "lu: size must be a multiple of %d\n", kGrid), 2;
  auto* orig = static_cast<double*>(std::malloc(n * n * sizeof(double)));
  auto* a = static_cast<double*>(std::malloc(n * n * sizeof(double)));
  if (!orig || !a) return std::fprintf(stderr, "lu: out of memory\n"), 1;
  eval::Rng rng(1);
  for (long i = 0; i < n; ++i)
    for (long j = 0; j < n; ++j) orig[i * n + j] = rng.unit() + (i == j ? static_cast<double>(n) : 0.0);
  const Lu m{a, n, n / kGrid};
  double total = 0;
  for (int r = 0; r < args.repeat; ++r) {
    std::memcpy(a, orig, n * n * sizeof(double));
    const double t0 = par::now();
    decompose(m);
    total += par::now() - t0;
  }
  bool ok = factors_hold(a, orig, n);
  auto close = [&](long i, long j) {
    return std::fabs(lu_entry(a, n, i, j) - orig[i * n + j]) <= 1e-9 * static_cast<double>(n);
  };
  for (long i = 0; i < n && ok && n <= 256; ++i)
    for (long j = 0; j < n && ok; ++j) ok = close(i, j);
  eval::Digest d;
  d.add(a, n * n * sizeof(double));
  return eval::report("lu", args, total, ok, d);
}
