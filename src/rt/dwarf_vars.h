// dwarf_vars.h: the static variables of one DWARF file, by address, and the
// walk from a variable down to one byte of it.
//
// A VariableIndex is built once per ELF object, in one pass over all its
// compilation units: every DW_TAG_variable whose location is a fixed
// address (`DW_OP_addr X`, `DW_OP_addrx i`, optionally `+ n`) becomes a
// runtime range [start, end) sized by its type.  Variables elsewhere
// (registers, the stack, thread-local storage) have no fixed address and
// are left out.  The ranges are sorted by start, outer before inner, with a
// running maximum of their ends beside them, so that the innermost range
// covering an address is a binary search and a short walk back, even when
// ranges nest or overlap.
//
// describe() then names the byte: the variable's name, then its type walked
// down (see dwarf_vars.cc).  It is the caller's job to hold the Dwarf open
// for as long as the index lives: the index keeps DIEs, which point into it.
#pragma once

#include <elfutils/libdw.h>

#include <cstdint>
#include <string>
#include <vector>

#include "util/result.h"

namespace detux::dwarf_vars {

// A C++ mangled name made readable, ABI tags left out; anything else as it is.
std::string demangle(const char* name);

class VariableIndex {
 public:
  // One pass over every unit of `dw`; `bias` maps its addresses to runtime.
  void build(Dwarf* dw, uint64_t bias);

  // The innermost variable covering `addr`, named down to the byte
  // ("actor[3].y+2"); -ENOENT when no variable covers it.
  Result<std::string> describe(uint64_t addr);

 private:
  struct Var {
    uint64_t start, end;
    Dwarf_Die die;
    int32_t scope;  // index into scopes_
  };
  // The namespaces and functions around a DIE during the pass, turned into
  // a "ns::fn::" prefix only when a variable inside needs one.
  struct ScopeFrame {
    const ScopeFrame* up;
    Dwarf_Die die;
    mutable int32_t interned;
  };

  void index_children(Dwarf_Die* parent, const ScopeFrame* scope, int depth);
  void add_variable(Dwarf_Die* die, const ScopeFrame* scope);
  int32_t intern(const ScopeFrame* f);
  std::string name_of(Var& v);

  uint64_t bias_ = 0;
  std::vector<Var> vars_;
  std::vector<uint64_t> max_end_;  // max_end_[i]: the largest end among vars_[0..i]
  std::vector<std::string> scopes_{""};
};

}  // namespace detux::dwarf_vars
