// gauss_pthreads.cc: the thesis's Figure 5a, the same bug with pthreads.
//
// The last worker of each step is never joined; whether its row is written
// before the next step reads it, or before the result is printed, is a race.
// The output varies from run to run; sometimes it is even right.
#include <pthread.h>

#include <cstdio>

#include "gauss.h"

gauss::Matrix g_m;

namespace {
struct Work {
  int k, i;
};
void* worker(void* p) {
  auto* w = static_cast<Work*>(p);
  gauss::eliminate(&g_m, w->k, w->i);
  return nullptr;
}
}  // namespace

int main(int argc, char** argv) {
  const bool fixed = gauss::wants_fixed(argc, argv);
  const int nrows = gauss::kRows;
  static Work work[gauss::kRows + 1][gauss::kRows + 1];
  pthread_t tid[gauss::kRows + 1];
  gauss::fill(&g_m);
  for (int k = 1; k <= nrows - 1; ++k) {
    for (int i = k + 1; i <= nrows; ++i) {
      work[k][i] = Work{k, i};
      pthread_create(&tid[i], nullptr, worker, &work[k][i]);
    }
    for (int i = k + 1; fixed ? i <= nrows : i < nrows; ++i)  // Bug! should be i <= nrows
      pthread_join(tid[i], nullptr);
    if (!fixed) pthread_detach(tid[nrows]);
  }
  gauss::print(g_m);
  return 0;
}
