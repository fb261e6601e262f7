// symbolize.h: name an address of this process the way its programmer would.
//
// When two spaces write the same byte, the join reports the lowest
// conflicting address, in the master's own address space.  A bare
// 0x5555555580a8 tells the programmer little; `actor[3].x` tells them which
// line of their program raced.  This module turns the one into the other.
//
// It answers in three grades, the best the process allows:
//
//   1. Debug info (DWARF, read with elfutils).  The global or static
//      variable whose storage covers the address, then its type walked down
//      to the byte: arrays (of any rank) give `[i]`, structs, classes and
//      unions give `.member`, typedefs and qualifiers are looked through,
//      base classes and anonymous members add nothing to the path.  A byte
//      inside a scalar adds `+n` (decimal); a byte of padding ends the path
//      at the enclosing element with `+n`.  So: `actor[3].y+2`.
//   2. The ELF symbol tables (.symtab, else .dynsym): `symbol+0x8`.
//   3. Nothing named: the hex address and the mapping it falls in
//      (`[heap]`, an anonymous mapping, a file, or "not mapped").
//
// Every result also says where the address lives: the ELF file and section
// (`/path/to/exe .bss`), or the mapping.  The executable and every shared
// object loaded in the process are searched: dl_iterate_phdr names the
// object covering the address and its load bias (the PIE/ASLR slide), and
// debug info may come from the object itself or from a separate file found
// by build ID under the system's debug directory.  It never looks anything
// up over the network.
//
// Each object is read once and kept: the first question about an object
// indexes all its variables (one pass over its DWARF, then a sort), and
// every later question is a binary search plus a walk down one type.  The
// cache key includes the object's in-memory build ID; if the file on disk no
// longer carries that ID (rebuilt while the program ran), its symbols are
// not trusted and the answer says so.  Objects the program has unloaded
// (dlclose) leave the cache at the next question.
//
// Errors are values: missing, stripped, truncated or strange debug info
// only lowers the grade of the answer, and describe_address() always returns
// a string.  The functions are thread-safe (one lock) and meant for rare,
// diagnostic use: a few calls per run, never on a hot path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace detux {

// How the name of an address was found.
enum class NameSource {
  kDebugInfo,    // a variable in DWARF, with its access path
  kSymbolTable,  // an ELF symbol (.symtab or .dynsym)
  kNone,         // no name: only the mapping is known
};

struct AddressDescription {
  uint64_t addr = 0;
  NameSource source = NameSource::kNone;
  std::string name;     // "actor[3].y+2", "environ", "table+0x8"; empty for kNone
  bool mapped = false;  // the address lies in some mapping of the process
  bool in_object = false;  // ... in a loaded ELF object (executable or library)
  std::string object;   // the object's file, or the mapping's name ("[heap]"),
                        // or "" for an anonymous mapping
  std::string section;  // ".bss", ".data", ".rodata"... when known
  bool stale_file = false;  // the object's file changed on disk since loading
  // Outside objects: the mapping from /proc/self/maps.
  uint64_t map_start = 0, map_end = 0;
  std::string perms;    // "rw-p"
};

// Everything known about `addr` in the current process.  Never fails.
AddressDescription symbolize(uint64_t addr);

// One line for a human, e.g.
//   actor[3].x (0x5555555580a8, in /path/exe .bss)
//   environ (0x7ffff7e1a2a0, in /path/libc.so.6 .bss)
//   0x55555555b2a0 (no symbol, in [heap])
//   0x7ffff7fb0010 (no symbol, in an anonymous rw-p mapping 0x7ffff7fb0000-0x7ffff7fb4000)
//   0x10 (not mapped)
std::string describe_address(uint64_t addr);
std::string to_string(const AddressDescription& d);

// How many times an ELF object has been opened and indexed in this process.
// Repeated questions about one object do not raise it.
size_t symbolize_objects_loaded();
// How many objects the cache holds now; objects unloaded since (dlclose)
// leave it at the next question.
size_t symbolize_objects_cached();

}  // namespace detux
