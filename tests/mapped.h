// mapped.h: whether a shared object is mapped in this process.  Tests that
// pin which libraries a master carries use it: every mapping of the master
// costs every fork and every space's exit.
#pragma once

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

}  // namespace detux::test
