// vma.h: a process's mappings, asked for one at a time.
//
// PROCMAP_QUERY (Linux 6.11) answers "the first mapping at or after this
// address that is shared / writable / file-backed" with one ioctl on an open
// /proc/PID/maps, where reading the text file costs tens of microseconds and
// grows with every mapping.  Birth, holes() and the dirty-page scan ask it.
// Where the kernel lacks it the callers fall back to the text file.  Nothing
// here allocates: birth uses it in a freshly forked child.
#pragma once

#include <cstdint>

namespace detux {

struct Vma {
  uint64_t start = 0, end = 0;
  bool readable = false, writable = false, executable = false, shared = false;
  bool file = false;  // file-backed
  bool special = false;  // [vdso], [vvar], [vvar_vclock] (only when asked for names)
};

enum VmaNeed : uint64_t {
  kVmaWritable = 0x02,
  kVmaShared = 0x08,
  kVmaFileBacked = 0x20,
};

enum class VmaAnswer { kFound, kNone, kUnsupported };

// The first mapping that ends above `addr` and has every property in `need`.
// With `names`, `special` tells the vDSO and vvar mappings apart.
VmaAnswer vma_at_or_after(int maps_fd, uint64_t addr, uint64_t need, Vma* out,
                          bool names = false);

// The ioctl command number of PROCMAP_QUERY.
unsigned long procmap_query_cmd();

}  // namespace detux
