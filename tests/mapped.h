// mapped.h: what this process has mapped, from /proc/self.  Tests that pin
// which libraries a master carries, and how much of it is in huge pages,
// use it: every mapping and every page-table entry of the master costs
// every fork and every space's exit.
#pragma once

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace detux::test {

// Whether a mapping whose file name contains `name` is in /proc/self/maps.
inline bool mapped(const char* name) {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);)
    if (line.find(name) != std::string::npos) return true;
  return false;
}

// KiB of huge pages (AnonHugePages) in the mappings that overlap [lo, hi).
inline long huge_kib(uint64_t lo, uint64_t hi) {
  std::ifstream smaps("/proc/self/smaps");
  long kib = 0;
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long s, e;
    long k;
    char dash;
    if (std::sscanf(line.c_str(), "%lx%c%lx ", &s, &dash, &e) == 3 && dash == '-')
      inside = s < hi && e > lo;
    else if (inside && std::sscanf(line.c_str(), "AnonHugePages: %ld", &k) == 1)
      kib += k;
  }
  return kib;
}

}  // namespace detux::test
