// memory.cc: another process's memory, seen from the supervisor.
//
// Bytes move with process_vm_readv/writev (batched, up to IOV_MAX pieces per
// call); mappings are changed by injecting mmap and mprotect into the space;
// written pages are found in /proc/PID/pagemap.  Addresses of another
// process are plain uint64_t here and never dereferenced.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "ptrace/ptrace_machine.h"
#include "ptrace/vma.h"
#include "util/page_buffer.h"

namespace detux {

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPmPresent = 1ULL << 63;
constexpr uint64_t kPmSwapped = 1ULL << 62;
constexpr uint64_t kPmExclusive = 1ULL << 56;

// process_vm_readv/writev as raw system calls: whole pages of the master's
// memory cross the redzones AddressSanitizer keeps between globals, which its
// interceptors of the libc wrappers would report as overflows.
ssize_t vm_readv(pid_t pid, const iovec* local, size_t nl, const iovec* remote, size_t nr) {
  return syscall(SYS_process_vm_readv, pid, local, nl, remote, nr, 0);
}
ssize_t vm_writev(pid_t pid, const iovec* local, size_t nl, const iovec* remote, size_t nr) {
  return syscall(SYS_process_vm_writev, pid, local, nl, remote, nr, 0);
}

// /proc/PID/maps.
Result<std::vector<Vma>> read_maps(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/maps", pid);
  FILE* f = std::fopen(path, "re");
  if (!f) return Err{-ESRCH};
  std::vector<Vma> out;
  char line[512];
  while (std::fgets(line, sizeof line, f)) {
    unsigned long s, e;
    char perms[8];
    if (std::sscanf(line, "%lx-%lx %7s", &s, &e, perms) != 3) continue;
    Vma v;
    v.start = s, v.end = e;
    v.writable = perms[1] == 'w';
    v.shared = perms[3] == 's';
    out.push_back(v);
  }
  std::fclose(f);
  return out;
}

// Move bytes between our buffer and `pid`: whole range or -EFAULT.
Status transfer(pid_t pid, bool to_remote, uint64_t addr, void* buf, size_t len) {
  uint8_t* b = static_cast<uint8_t*>(buf);
  while (len > 0) {
    size_t chunk = std::min<size_t>(len, 1 << 30);
    iovec local{b, chunk};
    iovec remote{reinterpret_cast<void*>(addr), chunk};
    ssize_t n = to_remote ? vm_writev(pid, &local, 1, &remote, 1)
                          : vm_readv(pid, &local, 1, &remote, 1);
    if (n < 0) return Err{errno == ESRCH ? -ESRCH : -EFAULT};
    if (n == 0) return Err{-EFAULT};
    b += n, addr += n, len -= n;
  }
  return ok_status();
}

// Consecutive pages become one piece: a contiguous run moves at memcpy-like
// speed, scattered pages cost a piece each.
struct Piece {
  uint64_t addr;
  size_t first, count;  // index into the page list, number of pages
};

std::vector<Piece> runs_of(std::span<const uint64_t> pages) {
  std::vector<Piece> out;
  for (size_t i = 0; i < pages.size(); ++i) {
    if (!out.empty() && out.back().addr + out.back().count * kPage == pages[i]) ++out.back().count;
    else out.push_back({pages[i], i, 1});
  }
  return out;
}

// Moves the pieces between `pid` and local memory at local(piece).
// The iovecs live on the supervisor's heap, not the stack: every page of
// the master's stack a call touches after a fork is a copy-on-write fault
// (the new space shares it), and two stack arrays of IOV_MAX (32 KiB)
// put the merge's system calls 32 KiB further down.
// Linux moves at most MAX_RW_COUNT (2 GiB less a page) in one call and
// silently shortens a longer one, so no call asks for more than 1 GiB.
template <typename Local>
Status move_pieces(pid_t pid, bool to_remote, const std::vector<Piece>& pieces, Local&& local) {
  constexpr size_t kCallPages = (size_t{1} << 30) / kPage;
  std::vector<Piece> split;  // no piece longer than one call
  for (const Piece& pc : pieces)
    for (size_t done = 0; done < pc.count; done += kCallPages)
      split.push_back({pc.addr + done * kPage, pc.first + done, std::min(kCallPages, pc.count - done)});
  std::vector<iovec> io(2 * std::min<size_t>(IOV_MAX, split.size()));
  for (size_t i = 0; i < split.size();) {
    size_t n = 0, pages = 0;
    while (i + n < split.size() && n < IOV_MAX && pages + split[i + n].count <= kCallPages)
      pages += split[i + n++].count;
    iovec* remote = io.data();
    iovec* here = io.data() + n;
    for (size_t k = 0; k < n; ++k) {
      const Piece& pc = split[i + k];
      remote[k] = {reinterpret_cast<void*>(pc.addr), pc.count * kPage};
      here[k] = {local(pc), pc.count * kPage};
    }
    ssize_t got = to_remote ? vm_writev(pid, here, n, remote, n)
                            : vm_readv(pid, here, n, remote, n);
    i += n;
    if (got == static_cast<ssize_t>(pages * kPage)) continue;
    if (got < 0 && errno == ESRCH) return Err{-ESRCH};
    return Err{-EFAULT};
  }
  return ok_status();
}

Status batch_rw(pid_t pid, bool to_remote, std::span<const uint64_t> pages, uint8_t* buf) {
  return move_pieces(pid, to_remote, runs_of(pages),
                     [&](const Piece& pc) { return static_cast<void*>(buf + pc.first * kPage); });
}

// /proc/PID/<name>, opened read-only.
int open_proc(pid_t pid, const char* name) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
  return open(path, O_RDONLY | O_CLOEXEC);
}

// The same, kept open in *slot for the life of the space.
int cached_proc(pid_t pid, const char* name, int* slot) {
  if (*slot < 0) *slot = open_proc(pid, name);
  return *slot;
}

int open_maps(Proc* p) { return cached_proc(p->pid, "maps", &p->maps_fd); }

}  // namespace

// The mappings that meet r, in order: asked one by one (PROCMAP_QUERY), or
// read from the text of /proc/PID/maps on older kernels.
Result<std::vector<Vma>> vmas_in(Proc* p, MemRange r) {
  std::vector<Vma> out;
  int fd = open_maps(p);
  if (fd < 0) return Err{-ESRCH};
  for (uint64_t at = r.start; at < r.end();) {
    Vma v;
    VmaAnswer a = vma_at_or_after(fd, at, 0, &v);
    if (a == VmaAnswer::kNone) return out;
    if (a == VmaAnswer::kUnsupported) {
      auto all = read_maps(p->pid);
      if (!all.ok()) return Err{all.err()};
      std::erase_if(*all, [&](const Vma& m) { return m.end <= r.start || m.start >= r.end(); });
      return *all;
    }
    if (v.start >= r.end()) break;
    out.push_back(v);
    at = v.end;
  }
  return out;
}

namespace {

int open_pagemap(Proc* p) { return cached_proc(p->pid, "pagemap", &p->pagemap_fd); }

// PAGEMAP_SCAN (vma.h) walks the page tables and reports populated ranges
// only, so a huge sparse mapping (a 1 GiB arena with one page written,
// AddressSanitizer's shadow) costs what is populated, not its size.
// Populated ranges of [start, end), each marked kPageIsHuge where it is
// mapped by whole 2 MiB entries; false if the kernel lacks PAGEMAP_SCAN.
bool populated_ranges(int fd, uint64_t start, uint64_t end, std::vector<PageRegion>* out) {
  constexpr size_t kBatch = 256;
  std::vector<PageRegion> regions(kBatch);  // not 6 KiB of stack: see move_pieces
  while (start < end) {
    PmScanArg arg = pm_scan_arg(start, end, regions.data(), kBatch);
    arg.category_anyof_mask = kPageIsPresent | kPageIsSwapped;
    arg.return_mask = kPageIsPresent | kPageIsSwapped | kPageIsHuge;
    long n = ioctl(fd, kPagemapScan, &arg);
    if (n < 0) return false;
    out->insert(out->end(), regions.begin(), regions.begin() + n);
    if (arg.walk_end <= start) break;
    start = arg.walk_end;
  }
  return true;
}

// Pages of [start, end) that are present and mapped only by this process.
// `buf` is scratch for pagemap entries: its size is the entries per pread.
Status exclusive_pages(int fd, uint64_t start, uint64_t end, std::vector<uint64_t>* buf,
                       std::vector<uint64_t>* out);

// The same for a range mapped by whole huge pages: every 4 KiB entry of one
// says what its 2 MiB page is, so one entry per huge page is read.  A huge
// page only this space maps is new since its snapshot (a write to a shared
// one splits it first), so all its pages count.
Status exclusive_huge(int fd, uint64_t start, uint64_t end, std::vector<uint64_t>* out) {
  constexpr uint64_t kHuge = 2 << 20;
  for (uint64_t a = start; a < end;) {
    const uint64_t next = std::min((a + kHuge) & ~(kHuge - 1), end);
    uint64_t e;
    if (pread(fd, &e, 8, static_cast<off_t>(a / kPage * 8)) != 8) return Err{-ESRCH};
    if ((e & kPmPresent) && (e & kPmExclusive))
      for (uint64_t pg = a; pg < next; pg += kPage) out->push_back(pg);
    a = next;
  }
  return ok_status();
}

// Populated ranges less than kGap pages apart are read in one pread: the
// entries of the gap (8 bytes a page, not present) cost less than a call.
Status exclusive_in_populated(int fd, uint64_t start, uint64_t end, std::vector<uint64_t>* buf,
                              std::vector<uint64_t>* out) {
  constexpr uint64_t kGap = 512 * kPage;
  std::vector<PageRegion> ranges;
  if (!populated_ranges(fd, start, end, &ranges)) return exclusive_pages(fd, start, end, buf, out);
  for (size_t i = 0; i < ranges.size();) {
    if (ranges[i].categories & kPageIsHuge) {
      DETUX_TRY(exclusive_huge(fd, ranges[i].start, ranges[i].end, out));
      ++i;
      continue;
    }
    uint64_t from = ranges[i].start, to = ranges[i].end;
    auto near_small = [&](const PageRegion& r) {
      return !(r.categories & kPageIsHuge) && r.start - to < kGap;
    };
    for (++i; i < ranges.size() && near_small(ranges[i]); ++i) to = ranges[i].end;
    DETUX_TRY(exclusive_pages(fd, from, to, buf, out));
  }
  return ok_status();
}

Status exclusive_pages(int fd, uint64_t start, uint64_t end, std::vector<uint64_t>* buf,
                       std::vector<uint64_t>* out) {
  DETUX_ASSERT(!buf->empty());  // entries per pread
  for (uint64_t a = start; a < end;) {
    size_t n = std::min<uint64_t>(buf->size(), (end - a) / kPage);
    ssize_t got = pread(fd, buf->data(), n * 8, static_cast<off_t>(a / kPage * 8));
    if (got <= 0) return Err{-ESRCH};
    n = static_cast<size_t>(got) / 8;
    for (size_t i = 0; i < n; ++i) {
      uint64_t e = (*buf)[i];
      if ((e & kPmSwapped) || ((e & kPmPresent) && (e & kPmExclusive))) out->push_back(a + i * kPage);
    }
    a += n * kPage;
  }
  return ok_status();
}

}  // namespace

Status PtraceMachine::read(Proc* p, uint64_t addr, void* buf, size_t len) {
  return transfer(p->pid, false, addr, buf, len);
}

Status PtraceMachine::write(Proc* p, uint64_t addr, const void* buf, size_t len) {
  return transfer(p->pid, true, addr, const_cast<void*>(buf), len);
}

// The master's memory is this process's own, so a move to or from it is one
// process_vm_writev/readv with the master's range as the local side: Linux
// checks that side too, and a bad range is -EFAULT, never a fault here.
// Between two spaces the bytes go through the staging buffer (copy_pages).
Status PtraceMachine::move(Proc* from, uint64_t src, Proc* to, uint64_t dst, size_t len) {
  DETUX_ASSERT(!(from->is_master && to->is_master));
  if (from->is_master) return transfer(to->pid, true, dst, reinterpret_cast<void*>(src), len);
  if (to->is_master) return transfer(from->pid, false, src, reinterpret_cast<void*>(dst), len);
  constexpr size_t kChunk = kStagingPages * kPage;
  for (size_t off = 0; off < len; off += kChunk) {
    size_t n = std::min(kChunk, len - off);
    if (Status s = transfer(from->pid, false, src + off, staging_.get(), n); !s.ok()) return s;
    if (Status s = transfer(to->pid, true, dst + off, staging_.get(), n); !s.ok()) return s;
  }
  return ok_status();
}

Status PtraceMachine::read_pages(Proc* p, bool snapshot, std::span<const uint64_t> pages,
                                 uint8_t* out) {
  if (!snapshot) return batch_rw(p->pid, false, pages, out);
  DETUX_ASSERT(p->ref_pid > 0);
  // Through /proc/PID/mem, not process_vm_readv: that pins the pages, and
  // pinning a page the snapshot still shares (all of them, with the master
  // and the child) makes Linux give the snapshot its own copy first.  Read
  // this way, a shared page costs 1.9-2.2 us instead of 2.7-2.9 (a
  // stand-alone test), and the snapshot does not grow a copy of every page
  // read, which its teardown would free again.  lu 2048^2 at N = 2: merging
  // 1.83-1.86 -> 1.51-1.66 s.  One read per run of pages; a run that fails
  // is read page by page, and a page the snapshot lacks (mapped later)
  // reads as zeros (EIO).  A snapshot killed from outside has no memory
  // left, which reads as end of file: -ESRCH, never a base of zeros.
  int fd = cached_proc(p->ref_pid, "mem", &p->ref_mem_fd);
  if (fd < 0) return Err{-ESRCH};
  for (const Piece& pc : runs_of(pages)) {
    uint8_t* to = out + pc.first * kPage;
    ssize_t got = pread(fd, to, pc.count * kPage, static_cast<off_t>(pc.addr));
    if (got == static_cast<ssize_t>(pc.count * kPage)) continue;
    for (size_t i = 0; i < pc.count; ++i) {
      ssize_t one = pread(fd, to + i * kPage, kPage, static_cast<off_t>(pc.addr + i * kPage));
      if (one == 0) return Err{-ESRCH};
      if (one != kPage) std::memset(to + i * kPage, 0, kPage);
    }
  }
  return ok_status();
}

Status PtraceMachine::write_pages(Proc* p, std::span<const uint64_t> pages, const uint8_t* data) {
  return batch_rw(p->pid, true, pages, const_cast<uint8_t*>(data));
}

// Pagemap entries (8 bytes a page) for pages [first, first + n).
Status pagemap_entries(int fd, uint64_t first, size_t n, uint64_t* out) {
  size_t want = n * 8;
  ssize_t got = pread(fd, out, want, static_cast<off_t>(first / kPage * 8));
  return got == static_cast<ssize_t>(want) ? ok_status() : Status(Err{-ESRCH});
}

// Where both the parent and the snapshot map the same physical page, the
// parent has not written it since the snapshot was taken.  Physical frame
// numbers are shown to CAP_SYS_ADMIN only; without it they read as 0 and
// every answer is "changed", which is merely slower.  Pages within kWindow
// of the first of a group share one pread per process: a child's pages are
// often scattered (lu's block rows lie 16 KiB apart), and a call per page
// cost more than reading the entries between them.
Result<std::vector<uint8_t>> PtraceMachine::unchanged_since_snapshot(
    Proc* parent, Proc* child, std::span<const uint64_t> pages) {
  std::vector<uint8_t> out(pages.size(), 0);
  if (child->ref_pid <= 0 || pages.empty()) return out;
  int ref_fd = cached_proc(child->ref_pid, "pagemap", &child->ref_pagemap_fd);
  int par_fd = open_pagemap(parent);
  if (ref_fd < 0 || par_fd < 0) return out;
  constexpr uint64_t kPfn = (1ULL << 55) - 1, kWindow = 512 * kPage;
  std::vector<uint64_t> a, b;
  for (size_t i = 0; i < pages.size();) {
    const uint64_t first = pages[i];
    size_t j = i + 1;
    while (j < pages.size() && pages[j] - first < kWindow) ++j;
    const size_t n = (pages[j - 1] - first) / kPage + 1;
    a.resize(n);
    b.resize(n);
    if (!pagemap_entries(par_fd, first, n, a.data()).ok() ||
        !pagemap_entries(ref_fd, first, n, b.data()).ok())
      break;
    for (; i < j; ++i) {
      const size_t k = (pages[i] - first) / kPage;
      const uint64_t pfn = a[k] & kPfn;
      out[i] = (a[k] & kPmPresent) && (b[k] & kPmPresent) && pfn != 0 && pfn == (b[k] & kPfn);
    }
  }
  return out;
}

// Each page must lie in a mapping PROCMAP_QUERY reports as readable,
// writable, private and not file-backed: no page here can fault with
// SIGBUS (a file shorter than its mapping) or be shared with anyone.
// Never under AddressSanitizer, whose redzones whole-page accesses cross.
bool PtraceMachine::in_place(Proc* p, std::span<const uint64_t> pages) {
#if defined(__SANITIZE_ADDRESS__)
  (void)p, (void)pages;
  return false;
#else
  if (!p->is_master || pages.empty()) return false;
  int fd = open_maps(p);
  if (fd < 0) return false;
  Vma v;
  bool have = false;
  for (uint64_t pg : pages) {
    if (have && pg >= v.start && pg + kPage <= v.end) continue;
    if (vma_at_or_after(fd, pg, 0, &v) != VmaAnswer::kFound) return false;
    have = true;
    if (v.start > pg || v.end < pg + kPage || !v.readable || !v.writable || v.shared || v.file)
      return false;
  }
  return true;
#endif
}

namespace {

constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, Linux 5.14

void* at_own_address(const Piece& pc) { return reinterpret_cast<void*>(pc.addr); }

}  // namespace

// Through the staging buffer, 256 pages at a time: read from `from`, then
// written to `to`, both by pid (the master's own too), so Linux reaches each
// end's pages through their page tables and never through the master's
// addresses for them.  On a PVM guest that matters: the kernel's first
// access to each page by a user address of the running master costs about
// 7 us (the host builds its shadow entry), where the staging buffer, reused,
// costs 0.5-0.8 us and a page reached through its page table 0.6-0.7 us
// (a stand-alone test, 2048 pages from a stopped process into fresh pages
// of the caller: 7.6-11.2 us a page read straight in, 2.1-2.2 us staged).
// From the master the bytes go straight across: reading its pages by pid
// would pin them, and pinning a page a snapshot shares makes Linux copy it.
Status PtraceMachine::copy_pages(Proc* from, Proc* to, std::span<const uint64_t> pages) {
  if (from->is_master) return move_pieces(to->pid, true, runs_of(pages), at_own_address);
  for (size_t i = 0; i < pages.size(); i += kStagingPages) {
    auto part = pages.subspan(i, std::min(kStagingPages, pages.size() - i));
    DETUX_TRY(batch_rw(from->pid, false, part, staging_.get()));
    DETUX_TRY(batch_rw(to->pid, true, part, staging_.get()));
  }
  return ok_status();
}

// The master's pages a merge takes whole are still shared with the child's
// snapshot, so the first store into each, even the kernel's own, is a
// copy-on-write break: a copy of a page about to be overwritten, and a TLB
// flush for each.  On a PVM guest (a stand-alone test, 2048 pages the
// master shared with a stopped process, the new bytes read from another):
//   process_vm_readv straight in                       17.6-18.8 us a page
//   MADV_POPULATE_WRITE, then process_vm_readv          12.0-12.8
//   MADV_DONTNEED, MADV_POPULATE_WRITE, readv            7.4-7.6
//   the same, then staged (copy_pages)                   2.1-2.2
//   (a store of the master's own, for comparison)       16.1-16.3
// The program's first access to each page afterwards costs about 5.5 us
// in all but the last.  So the pages are dropped and made afresh as zero
// pages, one call each per run, and the child's bytes are staged into them.
// Dropping them loses nothing: the snapshot holds the very same bytes, and
// if the copy fails they are read back from there.  (Another thread of the
// master that reads them meanwhile may see zeros; reading what a join is
// merging into is a race in any case.)  Only for the master's private,
// anonymous memory (in_place); elsewhere a plain copy.
Status PtraceMachine::take_pages(Proc* child, Proc* parent, std::span<const uint64_t> pages) {
  if (!parent->is_master || pages.empty() || !in_place(parent, pages))
    return copy_pages(child, parent, pages);
  std::vector<Piece> pieces = runs_of(pages);
  for (const Piece& pc : pieces) {  // best effort: where it fails, the copy faults as before
    void* at = at_own_address(pc);
    if (madvise(at, pc.count * kPage, MADV_DONTNEED) == 0) madvise(at, pc.count * kPage, kPopulateWrite);
  }
  Status s = copy_pages(child, parent, pages);
  if (s.ok()) return s;
  DETUX_ASSERT(child->ref_pid > 0);  // unchanged_since_snapshot said so
  int fd = cached_proc(child->ref_pid, "mem", &child->ref_mem_fd);
  for (const Piece& pc : pieces)
    if (fd < 0 || pread(fd, at_own_address(pc), pc.count * kPage, static_cast<off_t>(pc.addr)) !=
                      static_cast<ssize_t>(pc.count * kPage))
      return Err{-EIO};  // the snapshot is gone too (killed from outside)
  return s;
}

// DET_OWN.  A store by process_vm_writev into a page the stopped space
// still shares breaks the sharing as its own store would, but without the
// fault: on a PVM guest 1.5-2.3 us a page in one batch, against 17 us for
// the space's own copy-on-write fault (plus several more when the fault
// interrupts a computation whose pages then leave the TLB).  One byte of
// each page is read and written back unchanged.  A space whose birth is
// still running on another CPU is not touched now (its birth writes pages
// of its own): finish_birth() does it, before it starts the space.
Status PtraceMachine::own_pages(Proc* p, std::span<const MemRange> ranges) {
  if (p->birthing) {
    p->birth_own.assign(ranges.begin(), ranges.end());
    return ok_status();
  }
  return own_now(p, ranges);
}

Status PtraceMachine::own_now(Proc* p, std::span<const MemRange> ranges) {
  if (ranges.empty()) return ok_status();
  MemRange hull{ranges.front().start, ranges.back().end() - ranges.front().start};
  auto maps = vmas_in(p, hull);
  if (!maps.ok()) return Err{maps.err()};
  std::vector<uint64_t> pages;
  for (const Vma& v : *maps) {
    if (!v.writable || v.shared) continue;
    for (const MemRange& r : ranges)
      for (uint64_t a = std::max(v.start, r.start); a < std::min(v.end, r.end()); a += kPage)
        pages.push_back(a);
  }
  std::vector<uint8_t> bytes(pages.size());
  std::vector<iovec> io(2 * std::min<size_t>(IOV_MAX, pages.size()));
  for (size_t i = 0; i < pages.size(); i += IOV_MAX) {
    size_t n = std::min<size_t>(IOV_MAX, pages.size() - i);
    iovec* remote = io.data();
    iovec* here = io.data() + n;
    for (size_t k = 0; k < n; ++k) {
      remote[k] = {reinterpret_cast<void*>(pages[i + k]), 1};
      here[k] = {&bytes[i + k], 1};
    }
    ssize_t got = vm_readv(p->pid, here, n, remote, n);
    if (got < 0) return Err{errno == ESRCH ? -ESRCH : -EFAULT};
    // Only the bytes read are written back: the batch ends at a page that
    // cannot be read, and the space will fault there as usual.
    if (got > 0 && vm_writev(p->pid, here, static_cast<size_t>(got), remote,
                             static_cast<size_t>(got)) < 0 && errno == ESRCH)
      return Err{-ESRCH};
  }
  return ok_status();
}

// The master's stack below `top`, from the lowest page ever populated in
// its mapping (without PAGEMAP_SCAN: from the mapping's start).
Result<MemRange> PtraceMachine::stack_below(uint64_t top) {
  auto maps = vmas_in(&master_, MemRange{top - 1, 1});
  if (!maps.ok()) return Err{maps.err()};
  if (maps->empty() || maps->front().start > top - 1) return Err{-EFAULT};
  uint64_t lo = maps->front().start;
  std::vector<PageRegion> used;
  int fd = open_pagemap(&master_);
  if (fd >= 0 && populated_ranges(fd, lo, top, &used)) lo = used.empty() ? top : used.front().start;
  return MemRange{lo, top - lo};
}

Result<std::vector<MemRange>> PtraceMachine::holes(Proc* p, MemRange r) {
  auto maps = vmas_in(p, r);
  if (!maps.ok()) return Err{maps.err()};
  std::vector<MemRange> out;
  uint64_t at = r.start;
  for (const Vma& v : *maps) {
    if (v.end <= at) continue;
    if (v.start >= r.end()) break;
    if (v.start > at) out.push_back({at, v.start - at});
    at = std::max(at, v.end);
  }
  if (at < r.end()) out.push_back({at, r.end() - at});
  return out;
}

Result<std::vector<MemRange>> PtraceMachine::read_only(Proc* p, MemRange r) {
  auto maps = vmas_in(p, r);
  if (!maps.ok()) return Err{maps.err()};
  std::vector<MemRange> out;
  for (const Vma& v : *maps) {
    uint64_t s = std::max(v.start, r.start), e = std::min(v.end, r.end());
    if (s < e && !v.writable) out.push_back({s, e - s});
  }
  return out;
}

Status PtraceMachine::map_zero(Proc* p, MemRange r, int prot) {
  if (p->is_master) {
    void* m = mmap(reinterpret_cast<void*>(r.start), r.len, prot,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? Status(Err{-errno}) : ok_status();
  }
  const long args[6] = {static_cast<long>(r.start), static_cast<long>(r.len), prot,
                        MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0};
  auto res = inject(p, SYS_mmap, args);
  if (!res.ok()) return Err{res.err()};
  if (*res != static_cast<long>(r.start)) return Err{*res < 0 ? *res : -ENOMEM};
  if (p->ref_pid > 0) p->remapped.push_back(r);
  return ok_status();
}

Status PtraceMachine::unmap(Proc* p, MemRange r) {
  if (p->is_master)
    return munmap(reinterpret_cast<void*>(r.start), r.len) == 0 ? ok_status() : Status(Err{-errno});
  const long args[6] = {static_cast<long>(r.start), static_cast<long>(r.len), 0, 0, 0, 0};
  auto res = inject(p, SYS_munmap, args);
  if (!res.ok()) return Err{res.err()};
  if (*res != 0) return Err{*res};
  std::erase_if(p->remapped, [&](const MemRange& m) { return m.start == r.start && m.len == r.len; });
  return ok_status();
}

Result<uint64_t> PtraceMachine::protect(Proc* p, MemRange r, int prot) {
  auto gaps = holes(p, r);
  if (!gaps.ok()) return Err{gaps.err()};
  uint64_t added = 0;
  if (prot != 0) {
    for (const MemRange& h : *gaps) {
      DETUX_TRY(map_zero(p, h, prot));
      added += h.len;
    }
  }
  // mprotect fails on holes (prot == 0 leaves them): do the mapped parts.
  uint64_t at = r.start;
  auto do_protect = [&](MemRange m) -> Status {
    if (m.len == 0) return ok_status();
    if (p->is_master) {
      return mprotect(reinterpret_cast<void*>(m.start), m.len, prot) == 0 ? ok_status()
                                                                       : Status(Err{-errno});
    }
    const long args[6] = {static_cast<long>(m.start), static_cast<long>(m.len), prot, 0, 0, 0};
    auto res = inject(p, SYS_mprotect, args);
    if (!res.ok()) return Err{res.err()};
    return *res == 0 ? ok_status() : Status(Err{*res});
  };
  if (prot != 0) {
    DETUX_TRY(do_protect(r));
    return added;
  }
  for (const MemRange& h : *gaps) {
    DETUX_TRY(do_protect({at, h.start - at}));
    at = h.end();
  }
  DETUX_TRY(do_protect({at, r.end() - at}));
  return added;
}

Result<std::vector<uint64_t>> PtraceMachine::populated_pages(Proc* p, MemRange r) {
  int fd = open_pagemap(p);
  if (fd < 0) return Err{-ESRCH};
  std::vector<PageRegion> ranges;
  std::vector<uint64_t> out;
  if (!populated_ranges(fd, r.start, r.end(), &ranges)) {  // no PAGEMAP_SCAN: read it all
    std::vector<uint64_t> e(std::min<uint64_t>(r.len / kPage, 8192));
    for (uint64_t a = r.start; a < r.end(); a += e.size() * kPage) {
      size_t n = std::min<uint64_t>(e.size(), (r.end() - a) / kPage);
      DETUX_TRY(pagemap_entries(fd, a, n, e.data()));
      for (size_t i = 0; i < n; ++i)
        if (e[i] & (kPmPresent | kPmSwapped)) out.push_back(a + i * kPage);
    }
    return out;
  }
  for (const PageRegion& m : ranges)
    for (uint64_t pg = m.start; pg < m.end; pg += kPage) out.push_back(pg);
  return out;
}

Result<std::vector<uint64_t>> PtraceMachine::dirty_pages(Proc* p, MemRange r) {
  DETUX_ASSERT(p->ref_pid > 0);
  int fd = open_pagemap(p);
  if (fd < 0) return Err{-ESRCH};
  auto maps = vmas_in(p, r);
  if (!maps.ok()) return Err{maps.err()};
  std::vector<uint64_t> out;
  for (const Vma& v : *maps) {
    uint64_t s = std::max(v.start, r.start), e = std::min(v.end, r.end());
    if (s >= e || v.shared) continue;
    DETUX_TRY(exclusive_in_populated(fd, s, e, &pagemap_buf_, &out));
  }
  for (uint64_t pg : p->dirty_accum)
    if (pg >= r.start && pg < r.end()) out.push_back(pg);
  for (const MemRange& m : p->remapped)
    for (uint64_t pg = std::max(m.start, r.start); pg < std::min(m.end(), r.end()); pg += kPage)
      out.push_back(pg);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// A fork shares every page, so pages this space wrote since its snapshot
// stop being exclusive: remember them first.
Status PtraceMachine::record_dirty_before_fork(Proc* p) {
  if (p->ref_pid <= 0) return ok_status();
  auto pages = dirty_pages(p, MemRange{0, 1ULL << 47});
  if (!pages.ok()) return Err{pages.err()};
  p->dirty_accum = std::move(*pages);
  return ok_status();
}

}  // namespace detux
