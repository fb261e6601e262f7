// gauss_detux.cc: the thesis's Figure 5b on detux, bug included.
//
// Every worker is a dfork'd space; djoin merges its row into the master.
// The last worker of each step is never joined, so its row never reaches
// the master: the answer is wrong -- and wrong in exactly the same way on
// every run, which is what makes the bug easy to find.
#include <detux/detux.h>

#include <cstdio>

#include "gauss.h"

gauss::Matrix g_m;  // shared memory: the executable's bss

int main(int argc, char** argv) {
  const bool fixed = gauss::wants_fixed(argc, argv);
  const int nrows = gauss::kRows;
  gauss::fill(&g_m);
  for (int k = 1; k <= nrows - 1; ++k) {
    for (int i = k + 1; i <= nrows; ++i) {
      int r = dfork(static_cast<det_child_t>(i));
      if (r < 0) return std::fprintf(stderr, "dfork: %s\n", det_strerror(r)), 1;
      if (r == 0) {
        gauss::eliminate(&g_m, k, i);
        dret();
      }
    }
    for (int i = k + 1; fixed ? i <= nrows : i < nrows; ++i)  // Bug! should be i <= nrows
      if (int r = djoin(static_cast<det_child_t>(i)); r < 0)
        return std::fprintf(stderr, "djoin(%d): %s\n", i, det_strerror(r)), 1;
    if (!fixed) dput(static_cast<det_child_t>(nrows), DET_KILL, nullptr, 0, nullptr);
  }
  gauss::print(g_m);
  return 0;
}
