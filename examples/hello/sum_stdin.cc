// sum_stdin.cc: standard input read inside spaces.
//
// Two threads read the master's standard input with std::cin: the first
// reads the first half of the numbers, the second (forked after the first
// was joined) goes on from there.  Each prints what it read; the master
// prints the total.  `detux run sum_stdin < numbers` prints the same bytes
// on every run.
#include <detux/detux.hpp>

#include <cstdio>
#include <iostream>

long g_count[2], g_sum[2];

int main() {
  for (det_child_t t = 0; t < 2; ++t) {
    detux::thread reader(t, [t] {
      long x;
      while ((t == 1 || g_count[0] < 5) && std::cin >> x) {
        ++g_count[t];
        g_sum[t] += x;
      }
      std::cout << "space " << t << " read " << g_count[t] << " numbers, sum " << g_sum[t]
                << std::endl;
    });
    reader.join();
  }
  std::printf("total %ld numbers, sum %ld\n", g_count[0] + g_count[1], g_sum[0] + g_sum[1]);
  return 0;
}
