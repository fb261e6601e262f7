// gauss.h: the thesis's Gaussian elimination case study (section 5.2),
// shared by the detux and the pthreads builds.
//
// For each pivot row k the program starts one worker per row below it; each
// worker subtracts the right multiple of row k from its row.  The bug, kept
// on purpose as in the thesis: the loop that waits for the workers stops one
// short (i < nrows instead of i <= nrows), so the last worker of every step
// is never joined.  `--fixed` joins them all and gives the right answer.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>

namespace gauss {

constexpr int kRows = 8;  // rows 1..kRows, as in the thesis's figures
constexpr int kCols = kRows + 1;  // the augmented column

struct Matrix {
  double a[kRows + 1][kCols + 1];  // 1-based, row 0 and column 0 unused
};

// A fixed, diagonally dominant system from a fixed seed.
inline void fill(Matrix* m) {
  uint64_t s = 0x9E3779B97F4A7C15ULL;
  for (int i = 1; i <= kRows; ++i)
    for (int j = 1; j <= kCols; ++j) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      m->a[i][j] = static_cast<double>((s >> 33) % 19) - 9.0 + (i == j ? 40.0 : 0.0);
    }
}

// One worker: row i -= (a[i][k] / a[k][k]) * row k.
inline void eliminate(Matrix* m, int k, int i) {
  double f = m->a[i][k] / m->a[k][k];
  for (int j = k; j <= kCols; ++j) m->a[i][j] -= f * m->a[k][j];
}

inline bool wants_fixed(int argc, char** argv) {
  return argc > 1 && std::strcmp(argv[1], "--fixed") == 0;
}

inline void print(const Matrix& m) {
  uint64_t h = 1469598103934665603ULL;
  for (int i = 1; i <= kRows; ++i) {
    for (int j = 1; j <= kCols; ++j) {
      std::printf("%9.4f", m.a[i][j] + 0.0);
      uint64_t bits;
      double v = m.a[i][j] + 0.0;
      std::memcpy(&bits, &v, sizeof bits);
      h = (h ^ bits) * 1099511628211ULL;
    }
    std::printf("\n");
  }
  std::printf("digest %016llx\n", static_cast<unsigned long long>(h));
}

}  // namespace gauss
