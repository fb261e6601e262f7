// vma.cc: PROCMAP_QUERY and PAGEMAP_SCAN (see vma.h).
#include "ptrace/vma.h"

#include <errno.h>
#include <sys/ioctl.h>

#include <cstring>

namespace detux {

namespace {

// From linux/fs.h of Linux 6.11; Debian 12's headers predate it.
struct ProcmapQuery {
  uint64_t size, query_flags, query_addr;
  uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
  uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
  uint64_t vma_name_addr, build_id_addr;
};
constexpr uint64_t kCoveringOrNext = 0x10;
constexpr unsigned long kProcmapQuery = _IOWR('f', 17, ProcmapQuery);

}  // namespace

unsigned long procmap_query_cmd() { return kProcmapQuery; }

VmaAnswer vma_at_or_after(int maps_fd, uint64_t addr, uint64_t need, Vma* out, bool names) {
  char name[32] = {};
  ProcmapQuery q{};
  q.size = sizeof q;
  q.query_flags = kCoveringOrNext | need;
  q.query_addr = addr;
  if (names) {
    q.vma_name_size = sizeof name;
    q.vma_name_addr = reinterpret_cast<uint64_t>(name);
  }
  if (ioctl(maps_fd, kProcmapQuery, &q) != 0) {
    if (errno == ENOENT) return VmaAnswer::kNone;
    // A name longer than the buffer: the mapping exists, the name is not special.
    if (errno == ENAMETOOLONG && names) return vma_at_or_after(maps_fd, addr, need, out, false);
    return VmaAnswer::kUnsupported;
  }
  out->start = q.vma_start;
  out->end = q.vma_end;
  out->readable = q.vma_flags & 0x1;
  out->writable = q.vma_flags & 0x2;
  out->executable = q.vma_flags & 0x4;
  out->shared = q.vma_flags & 0x8;
  out->file = q.inode != 0;
  out->special = names && (std::strncmp(name, "[vdso]", 6) == 0 || std::strncmp(name, "[vvar", 5) == 0);
  return VmaAnswer::kFound;
}

// Every page is reported (no category asked for), holes included, in runs of
// equal categories; the answer is yes only if the runs cover the range and
// none is a file page or a hole.
bool all_pages_anonymous(int pagemap_fd, uint64_t start, uint64_t end) {
  PageRegion regions[16];
  while (start < end) {
    PmScanArg arg = pm_scan_arg(start, end, regions, 16);
    arg.return_mask = kPageIsFile | kPageIsPresent | kPageIsSwapped;
    long n = ioctl(pagemap_fd, kPagemapScan, &arg);
    if (n <= 0) return false;
    for (long i = 0; i < n; ++i) {
      const PageRegion& r = regions[i];
      if (r.start != start || (r.categories & kPageIsFile) ||
          !(r.categories & (kPageIsPresent | kPageIsSwapped)))
        return false;
      start = r.end;
    }
  }
  return true;
}

}  // namespace detux
