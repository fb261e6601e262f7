// vma.h: a process's mappings, asked for one at a time.
//
// PROCMAP_QUERY (Linux 6.11) answers "the first mapping at or after this
// address that is shared / writable / file-backed" with one ioctl on an open
// /proc/PID/maps, where reading the text file costs tens of microseconds and
// grows with every mapping.  Birth, holes() and the dirty-page scan ask it.
// Where the kernel lacks it the callers fall back to the text file.
// PAGEMAP_SCAN (Linux 6.7) answers, in the same way, which pages of a range
// are populated, file-backed or swapped.  Nothing here allocates: birth uses
// it in a freshly forked child.
#pragma once

#include <sys/ioctl.h>

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
  kVmaExecutable = 0x04,
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

// PAGEMAP_SCAN (Linux 6.7), an ioctl on /proc/PID/pagemap: the ranges of
// pages in [start, end) whose categories match, walked in the kernel.
// Defined here because Debian 12's kernel headers predate it.
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct PageRegion {
  uint64_t start, end, categories;
};
inline constexpr uint64_t kPageIsFile = 1 << 2, kPageIsPresent = 1 << 3, kPageIsSwapped = 1 << 4;
inline constexpr uint64_t kPageIsHuge = 1 << 6;  // mapped whole by one 2 MiB entry
inline constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);

inline PmScanArg pm_scan_arg(uint64_t start, uint64_t end, PageRegion* vec, uint64_t len) {
  PmScanArg a{};
  a.size = sizeof a;
  a.start = start;
  a.end = end;
  a.vec = reinterpret_cast<uint64_t>(vec);
  a.vec_len = len;
  return a;
}

// Whether every page of [start, end) is a present (or swapped) page of
// anonymous memory, none of them still the file's: then a private file
// mapping no longer depends on its file.  False if unknown.
bool all_pages_anonymous(int pagemap_fd, uint64_t start, uint64_t end);

}  // namespace detux
