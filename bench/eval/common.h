// common.h: what the four evaluation benchmarks share.
//
// The command line (`--size S --threads N [--repeat R]`), the seeded PRNG
// that makes both builds see the same input, the digest of an output, and
// the one line every run prints:
//
//   name=lu backend=detux n=512 N=2 R=1 time_s=0.41 merge_s=0.03 verify=ok digest=...
//
// time_s is the mean wall-clock time of one repetition of the parallel part
// (inputs are built, and results checked, outside it); merge_s is the mean
// time of that repetition spent in the master's djoins (see par.h).  The
// digest is FNV-1a over the output's bytes: on detux it must not change
// from run to run or with the number of CPUs.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "par.h"

namespace eval {

struct Args {
  long size = 0;
  int threads = 1;
  int repeat = 1;
};

inline Args parse(int argc, char** argv, long default_size) {
  Args a;
  a.size = default_size;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--size")) a.size = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) a.threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--repeat")) a.repeat = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s --size S --threads N [--repeat R]\n", argv[0]);
      std::exit(2);
    }
  }
  if (a.size <= 0 || a.threads <= 0 || a.repeat <= 0) {
    std::fprintf(stderr, "%s: size, threads and repeat must be positive\n", argv[0]);
    std::exit(2);
  }
  return a;
}

// splitmix64: small, fast, and the same sequence on every build.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

struct Digest {
  uint64_t h = 1469598103934665603ULL;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {  // a word at a time: 80M keys stay quick
      uint64_t w;
      std::memcpy(&w, b + i, 8);
      h = (h ^ w) * 1099511628211ULL;
    }
    for (; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  }
};

// Prints the result line; returns the process's exit status.
inline int report(const char* name, const Args& a, double total_s, bool ok, const Digest& d) {
  std::printf("name=%s backend=%s n=%ld N=%d R=%d time_s=%.6f merge_s=%.6f verify=%s digest=%016llx\n",
              name, par::kBackend, a.size, a.threads, a.repeat, total_s / a.repeat,
              par::merge_s() / a.repeat, ok ? "ok" : "FAILED", static_cast<unsigned long long>(d.h));
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace eval
