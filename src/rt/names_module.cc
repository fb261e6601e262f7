// names_module.cc: the symbolizer as a module that libdetux loads on demand.
//
// Naming an address (rt/symbolize.h) needs elfutils, and elfutils brings
// libdw, libelf, libz, liblzma and libbz2: five more shared objects, some
// twenty-five more mappings in the master.  Every mapping costs every fork
// of the master and every exit of a space (the kernel copies and tears down
// each one), and a name is only wanted when a join reports a conflict.  So
// the symbolizer lives in this module, libdetux-names.so, next to libdetux,
// and rt/names.cc opens it the first time a name is asked for.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "rt/symbolize.h"

// describe_address(addr) into buf (always NUL-terminated when len > 0);
// returns the length of the whole description.
extern "C" __attribute__((visibility("default"))) size_t detux_names_describe(uint64_t addr,
                                                                              char* buf,
                                                                              size_t len) {
  std::string s = detux::describe_address(addr);
  if (len > 0) std::snprintf(buf, len, "%s", s.c_str());
  return s.size();
}
