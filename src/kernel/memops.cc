// memops.cc: Copy, Zero, Perm and Merge on ranges of two spaces' memory.
//
// Ranges are arbitrary byte ranges except where pages are the unit (Perm,
// and the whole pages Zero replaces).  A range that wraps or leaves user
// space is -EINVAL; one that touches memory that is not there is -EFAULT.
// Memory a space gains (mapping holes) counts against its limit before any
// change is made, so hitting the limit changes nothing, with one exception:
// a Copy first tries the common case, a mapped destination, and may have
// moved the bytes before the first hole (a failed Copy may leave part of
// itself, as the header says).
#include <errno.h>
#include <fmt/core.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "abi.h"
#include "kernel/kernel.h"
#include "merge/merge.h"
#include "util/page_buffer.h"

namespace detux {

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kUserBottom = 0x10000;  // below: never memory (mmap_min_addr)
constexpr uint64_t kUserTop = 0x7ffffffff000ULL;

bool bad_range(uint64_t addr, uint64_t len) {
  return len > 0 && (addr < kUserBottom || addr + len < addr || addr + len > kUserTop);
}
uint64_t page_down(uint64_t a) { return a & ~(kPage - 1); }
uint64_t page_up(uint64_t a) { return (a + kPage - 1) & ~(kPage - 1); }
// A merge into the parent found its first conflicting byte at `at`.
long conflict_at(Space& child, uint64_t at) {
  child.status.conflict = 1;
  child.status.conflict_addr = at;
  return -DET_ECONFLICT;
}
// The part of the page at `page` that lies in [addr, addr + len).
MemRange part_of_page(uint64_t page, uint64_t addr, uint64_t len) {
  uint64_t lo = std::max(page, addr), hi = std::min(page + kPage, addr + len);
  return {lo, hi - lo};
}

// Pages (any order, repeats allowed) as ascending runs.
std::vector<MemRange> runs_of_pages(std::vector<uint64_t> pages) {
  std::sort(pages.begin(), pages.end());
  std::vector<MemRange> out;
  for (uint64_t pg : pages) {
    if (!out.empty() && pg <= out.back().end())
      out.back().len = std::max(out.back().len, pg + kPage - out.back().start);
    else out.push_back({pg, kPage});
  }
  return out;
}

int prot_bits(unsigned long flags) {
  return ((flags & DET_PROT_READ) ? PROT_READ : 0) | ((flags & DET_PROT_WRITE) ? PROT_WRITE : 0) |
         ((flags & DET_PROT_EXEC) ? PROT_EXEC : 0);
}

}  // namespace

long Kernel::gain(Space& s, uint64_t bytes) {
  if (s.is_master || bytes == 0) return 0;
  if (s.bytes_gained + bytes > static_cast<uint64_t>(max_space_bytes_)) return -ENOMEM;
  s.bytes_gained += bytes;
  return 0;
}

// Move len bytes; -EFAULT at the first range that is not there.
long Kernel::move_bytes(Space& from, uint64_t src, Space& to, uint64_t dst, uint64_t len) {
  return m_.move(from.proc, src, to.proc, dst, len).ok() ? 0 : -EFAULT;
}

long Kernel::copy_range(Space& from, uint64_t src, Space& to, uint64_t dst, uint64_t len) {
  if (len == 0) return 0;
  if (bad_range(src, len) || bad_range(dst, len)) return -EINVAL;
  // The common case, a mapped destination, needs no look at the mappings.
  if (move_bytes(from, src, to, dst, len) == 0) return 0;
  // Destination pages that are not mapped become read-write zero pages.
  MemRange span{page_down(dst), page_up(dst + len) - page_down(dst)};
  auto gaps = m_.holes(to.proc, span);
  if (!gaps.ok()) return gaps.err();
  if (gaps->empty()) return -EFAULT;  // the source, or a read-only page
  uint64_t missing = 0;
  for (const MemRange& h : *gaps) missing += h.len;
  if (long g = gain(to, missing); g < 0) return g;
  for (const MemRange& h : *gaps) {
    Status s = m_.map_zero(to.proc, h, PROT_READ | PROT_WRITE);
    if (!s.ok()) return s.err();
  }
  return move_bytes(from, src, to, dst, len);
}

long Kernel::zero_range(Space& s, uint64_t addr, uint64_t len, unsigned long flags) {
  if (len == 0) return 0;
  if (bad_range(addr, len)) return -EINVAL;
  uint64_t first = page_up(addr), last = page_down(addr + len);
  int prot = (flags & DET_PERM) ? prot_bits(flags) : PROT_READ | PROT_WRITE;
  std::vector<uint8_t> zeros(kPage, 0);
  if (first > last) return m_.write(s.proc, addr, zeros.data(), len).ok() ? 0 : -EFAULT;
  MemRange whole{first, last - first};
  uint64_t missing = 0;
  if (first < last) {  // the limit first: hitting it changes nothing
    auto gaps = m_.holes(s.proc, whole);
    if (!gaps.ok()) return gaps.err();
    for (const MemRange& h : *gaps) missing += h.len;
    if (long g = gain(s, missing); g < 0) return g;
  }
  auto failed = [&](long err) {  // nothing was mapped: the gain goes back
    if (!s.is_master) s.bytes_gained -= missing;
    return err;
  };
  // Partial pages at the ends: written with zeros (must be mapped, writable).
  if (addr < first && !m_.write(s.proc, addr, zeros.data(), first - addr).ok())
    return failed(-EFAULT);
  if (addr + len > last && !m_.write(s.proc, last, zeros.data(), addr + len - last).ok())
    return failed(-EFAULT);
  if (first == last) return 0;
  Status st = m_.map_zero(s.proc, whole, prot);
  return st.ok() ? 0 : failed(st.err());
}

long Kernel::perm_range(Space& s, uint64_t addr, uint64_t len, unsigned long flags) {
  if (len == 0) return 0;
  if (bad_range(addr, len) || addr % kPage || len % kPage) return -EINVAL;
  int prot = prot_bits(flags);
  MemRange r{addr, len};
  if (prot != 0) {
    auto gaps = m_.holes(s.proc, r);
    if (!gaps.ok()) return gaps.err();
    uint64_t missing = 0;
    for (const MemRange& h : *gaps) missing += h.len;
    if (long g = gain(s, missing); g < 0) return g;
  }
  auto added = m_.protect(s.proc, r, prot);
  return added.ok() ? 0 : added.err();
}

// Own (a hint): the child's own copies of the pages it is about to write,
// made by the machine in one batch while the child is stopped.  The pieces
// (one range, or DET_OWN's det_stride repeat of it), page-aligned, in
// order, adjacent ones joined.
Result<std::vector<MemRange>> Kernel::own_spans(Space& caller, const Call& c) {
  det_stride rep{1, 0};
  if (c.addr != 0 && !m_.read(caller.proc, c.addr, &rep, sizeof rep).ok()) return Err{-EFAULT};
  constexpr uint64_t kMaxPieces = 1 << 20;
  if (rep.count == 0 || rep.count > kMaxPieces || (rep.count > 1 && rep.stride < c.size))
    return Err{-EINVAL};
  if (c.size == 0) return std::vector<MemRange>{};
  if (rep.count == 1) rep.stride = 0;  // unused
  if (rep.stride > kUserTop / rep.count) return Err{-EINVAL};
  uint64_t last = c.child_addr + (rep.count - 1) * rep.stride;
  if (bad_range(c.child_addr, c.size) || bad_range(last, c.size)) return Err{-EINVAL};
  std::vector<MemRange> out;
  for (uint64_t k = 0; k < rep.count; ++k) {
    uint64_t a = c.child_addr + k * rep.stride;
    uint64_t lo = page_down(a), hi = page_up(a + c.size);
    if (!out.empty() && lo <= out.back().end()) out.back().len = hi - out.back().start;
    else out.push_back({lo, hi - lo});
  }
  return out;
}

// The pieces, under DET_OWN's rule: every page from the first piece to the
// end of the last is mapped writable in `s` (the child, or for a child not
// yet made, the caller it will copy), so that reading any cannot fault.
Result<std::vector<MemRange>> Kernel::checked_own(Space& caller, Space& s, const Call& c) {
  auto spans = own_spans(caller, c);
  if (!spans.ok() || spans->empty()) return spans;
  MemRange hull{spans->front().start, spans->back().end() - spans->front().start};
  auto gaps = m_.holes(s.proc, hull);
  if (!gaps.ok()) return Err{gaps.err()};
  auto fixed = m_.read_only(s.proc, hull);
  if (!fixed.ok()) return Err{fixed.err()};
  if (!gaps->empty() || !fixed->empty()) return Err{-EFAULT};
  return spans;
}

// The pieces, or with no range given (size 0) the pages the refreshes since
// the child's last snapshot found it had written, become the child's own.
long Kernel::own_range(Space& child, const Call& c, const std::vector<MemRange>& spans) {
  std::vector<MemRange> written;
  if (c.size == 0) written = runs_of_pages(child.refreshed_dirty);
  child.refreshed_dirty.clear();
  const std::vector<MemRange>& own = c.size == 0 ? written : spans;
  if (own.empty()) return 0;
  Status st = m_.own_pages(child.proc, own);
  return st.ok() ? 0 : st.err();
}

// The pages of [addr, addr+len) the child wrote since its snapshot (in the
// page-aligned *span); -EINVAL for a bad range or a child with no snapshot.
Result<std::vector<uint64_t>> Kernel::child_dirty(Space& child, uint64_t addr, uint64_t len,
                                                   MemRange* span) {
  if (bad_range(addr, len) || !m_.has_snapshot(child.proc)) return Err{-EINVAL};
  *span = MemRange{page_down(addr), page_up(addr + len) - page_down(addr)};
  return m_.dirty_pages(child.proc, *span);
}

// Three-way merge of the child's changes since its snapshot into the parent.
//
// Candidate pages are the child's written pages.  Where the parent has not
// written a page since the snapshot either (the machine can tell), the
// child's page is the result and cannot conflict: it is copied straight
// across.  The other pages are merged byte by byte, in chunks through reused
// buffers, and the results held until every page is known to be free of
// conflict.  Only then is the parent written, so a conflict leaves the parent
// exactly as it was.
//
// When the parent's pages to merge are the master's own anonymous memory
// (the machine says so), they are merged where they lie: all of them are
// checked first (check3), then merged in place, so only the child's and the
// snapshot's pages are read, and a parent page is stored into only where
// the child changed it.  That saves two of the four page copies a merged
// page costs otherwise (lu 2048^2 byte-merges three pages in four, because
// four siblings' blocks share each page).
//
// Pages the child wrote where the parent has nothing are mapped in the
// parent first (zero pages, counted against its limit), and unmapped again
// if the merge then fails: a conflict changes nothing, mappings included.
long Kernel::merge_range(Space& parent, Space& child, uint64_t addr, uint64_t len) {
  if (len == 0) return 0;
  child.status.conflict = 0;  // it tells of the last merge only
  child.status.conflict_addr = 0;
  MemRange span;
  auto dirty = child_dirty(child, addr, len, &span);
  if (!dirty.ok()) return dirty.err();
  if (dirty->empty()) return 0;
  std::vector<uint64_t> mapped;
  long r = map_holes(parent, span, *dirty, &mapped);
  if (r == 0) r = merge_dirty(parent, child, addr, len, span, *dirty);
  if (r < 0) unmap_holes(parent, mapped);
  return r;
}

// merge_range, once the parent has every page the child wrote.
long Kernel::merge_dirty(Space& parent, Space& child, uint64_t addr, uint64_t len, MemRange span,
                         const std::vector<uint64_t>& pages) {
  // A page the parent cannot write fails the merge before anything is written.
  auto fixed = m_.read_only(parent.proc, span);
  if (!fixed.ok()) return fixed.err();
  for (const MemRange& ro : *fixed) {
    auto it = std::lower_bound(pages.begin(), pages.end(), ro.start);
    if (it != pages.end() && *it < ro.end()) return -EFAULT;
  }
  auto same = m_.unchanged_since_snapshot(parent.proc, child.proc, pages);
  if (!same.ok()) return same.err();
  std::vector<uint64_t> whole, partial;  // taken whole from the child, merged
  for (size_t i = 0; i < pages.size(); ++i) {
    bool inside = pages[i] >= addr && pages[i] + kPage <= addr + len;
    ((*same)[i] && inside ? whole : partial).push_back(pages[i]);
  }
  constexpr size_t kInPlaceMax = 4096;  // pages: two 16 MiB buffers at most
  if (partial.size() <= kInPlaceMax && m_.in_place(parent.proc, partial))
    return merge_in_place(parent, child, addr, len, whole, partial);
  std::vector<uint64_t> changed;
  uint8_t* results = results_.get(partial.size() * kPage);
  if (long r = merge_pages(parent, child, addr, len, partial, &changed, results); r < 0)
    return r;
  if (Status s = m_.take_pages(child.proc, parent.proc, whole); !s.ok()) return s.err();
  Status s = m_.write_pages(parent.proc, changed, results);
  return s.ok() ? 0 : s.err();
}

// For merge_range, where the parent's `partial` pages are its own memory
// (in_place): reads the child's and the snapshot's copies, checks every page
// against the parent's where it lies, storing nothing, and only then copies
// the `whole` pages and merges the others in place.  The first conflict (the
// lowest address) ends it with -DET_ECONFLICT before anything is written.
long Kernel::merge_in_place(Space& parent, Space& child, uint64_t addr, uint64_t len,
                            const std::vector<uint64_t>& whole,
                            const std::vector<uint64_t>& partial) {
  uint8_t* theirs = theirs_.get(partial.size() * kPage);
  uint8_t* ref = ref_.get(partial.size() * kPage);
  if (Status s = m_.read_pages(child.proc, false, partial, theirs); !s.ok()) return s.err();
  if (Status s = m_.read_pages(child.proc, true, partial, ref); !s.ok()) return s.err();
  // The part of page i to merge: at the parent's own address, and at the
  // same offset in the buffers.
  auto part = [&](size_t i, size_t* off) {
    MemRange m = part_of_page(partial[i], addr, len);
    *off = i * kPage + (m.start - partial[i]);
    return m;
  };
  for (size_t i = 0; i < partial.size(); ++i) {
    size_t off;
    MemRange m = part(i, &off);
    const auto* mine = reinterpret_cast<const uint8_t*>(m.start);  // in_place: our memory
    merge::Outcome o = merge::check3(mine, &theirs[off], &ref[off], m.len);
    if (o.conflict) return conflict_at(child, m.start + o.first_conflict);
  }
  if (Status s = m_.take_pages(child.proc, parent.proc, whole); !s.ok()) return s.err();
  for (size_t i = 0; i < partial.size(); ++i) {
    size_t off;
    MemRange m = part(i, &off);
    auto* mine = reinterpret_cast<uint8_t*>(m.start);
    merge::Outcome o = merge::merge3(mine, mine, &theirs[off], &ref[off], m.len);
    DETUX_ASSERT(!o.conflict);  // checked above, and nothing ran in between
  }
  return 0;
}

// Put/Merge: the child's range becomes the parent's.  Only pages that can
// differ move: those the child wrote since its snapshot, and those in which
// the parent no longer holds the snapshot's very page.  Partial end pages
// move byte-exact.
long Kernel::refresh_range(Space& parent, Space& child, uint64_t addr, uint64_t len) {
  if (len == 0) return 0;
  MemRange span;
  auto dirty = child_dirty(child, addr, len, &span);
  if (!dirty.ok()) return dirty.err();
  child.refreshed_dirty.insert(child.refreshed_dirty.end(), dirty->begin(), dirty->end());
  auto mine = m_.populated_pages(parent.proc, span);
  if (!mine.ok()) return mine.err();
  auto same = m_.unchanged_since_snapshot(parent.proc, child.proc, *mine);
  if (!same.ok()) return same.err();
  std::vector<uint64_t> pages = std::move(*dirty);
  for (size_t i = 0; i < mine->size(); ++i)
    if (!(*same)[i]) pages.push_back((*mine)[i]);
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  std::vector<uint64_t> whole;
  for (uint64_t pg : pages) {
    if (pg >= addr && pg + kPage <= addr + len) {
      whole.push_back(pg);
      continue;
    }
    MemRange m = part_of_page(pg, addr, len);
    if (long r = move_bytes(parent, m.start, child, m.start, m.len); r < 0) return r;
  }
  if (m_.copy_pages(parent.proc, child.proc, whole).ok()) return 0;
  // As DET_COPY does, pages the caller has and the child lacks (mapped since
  // its snapshot) become the child's, counted against its limit.
  std::vector<uint64_t> mapped;
  if (long r = map_holes(child, span, whole, &mapped); r < 0) return r;
  if (mapped.empty()) return -EFAULT;
  return m_.copy_pages(parent.proc, child.proc, whole).ok() ? 0 : -EFAULT;
}

// Pages of `pages` that `s` lacks are created in it as zero pages, all
// counted against its limit before the first is mapped; *mapped lists
// those that were, for unmap_holes should the call fail.
long Kernel::map_holes(Space& s, MemRange span, const std::vector<uint64_t>& pages,
                       std::vector<uint64_t>* mapped) {
  auto gaps = m_.holes(s.proc, span);
  if (!gaps.ok()) return gaps.err();
  std::vector<uint64_t> missing;
  for (const MemRange& h : *gaps)
    for (auto it = std::lower_bound(pages.begin(), pages.end(), h.start);
         it != pages.end() && *it < h.end(); ++it)
      missing.push_back(*it);
  if (long g = gain(s, missing.size() * kPage); g < 0) return g;
  for (uint64_t pg : missing) {
    Status st = m_.map_zero(s.proc, MemRange{pg, kPage}, PROT_READ | PROT_WRITE);
    if (!st.ok()) {
      if (!s.is_master) s.bytes_gained -= (missing.size() - mapped->size()) * kPage;
      return st.err();
    }
    mapped->push_back(pg);
  }
  return 0;
}

// Undoes map_holes: the pages go, and so does their count.
void Kernel::unmap_holes(Space& s, const std::vector<uint64_t>& mapped) {
  for (uint64_t pg : mapped) {
    (void)m_.unmap(s.proc, MemRange{pg, kPage});  // best effort: a zero page at worst
    if (!s.is_master) s.bytes_gained -= kPage;
  }
}

// Byte-merges `pages` (ascending) within [addr, addr+len).  The pages that
// change go to *changed, and their new contents, in the same order, to
// `results` (room for every page).  Each batch of the parent's pages is read
// straight into `results` after the changed pages so far and merged there,
// so only a changed page that has unchanged ones before it is moved.  The
// first conflict (the lowest address) ends it with -DET_ECONFLICT.
long Kernel::merge_pages(Space& parent, Space& child, uint64_t addr, uint64_t len,
                         const std::vector<uint64_t>& pages, std::vector<uint64_t>* changed,
                         uint8_t* results) {
  constexpr size_t kBatch = 256;
  const size_t cap = std::min(pages.size(), kBatch) * kPage;
  uint8_t* theirs = theirs_.get(cap);
  uint8_t* ref = ref_.get(cap);
  for (size_t at = 0; at < pages.size(); at += kBatch) {
    std::span<const uint64_t> part(pages.data() + at, std::min(kBatch, pages.size() - at));
    uint8_t* mine = results + changed->size() * kPage;
    if (Status s = m_.read_pages(child.proc, false, part, theirs); !s.ok()) return s.err();
    if (Status s = m_.read_pages(child.proc, true, part, ref); !s.ok()) return s.err();
    if (Status s = m_.read_pages(parent.proc, false, part, mine); !s.ok()) return s.err();
    for (size_t i = 0; i < part.size(); ++i) {
      MemRange m = part_of_page(part[i], addr, len);
      size_t off = m.start - part[i];
      uint8_t* page = mine + i * kPage;
      const uint8_t *src = &theirs[i * kPage + off], *was = &ref[i * kPage + off];
      merge::Outcome o = merge::merge3(page + off, page + off, src, was, m.len);
      if (o.conflict) return conflict_at(child, m.start + o.first_conflict);
      if (!o.changed) continue;
      uint8_t* slot = results + changed->size() * kPage;
      if (slot != page) std::memcpy(slot, page, kPage);
      changed->push_back(part[i]);
    }
  }
  return 0;
}

// ---- Tracing (detux run --trace, or DETUX_TRACE=1) ------------------------

namespace {

std::string flag_names(unsigned long f) {
  static const std::pair<unsigned long, const char*> names[] = {
      {DET_REGS, "REGS"},   {DET_COPY, "COPY"},   {DET_ZERO, "ZERO"},     {DET_SNAP, "SNAP"},
      {DET_MERGE, "MERGE"}, {DET_PERM, "PERM"},   {DET_START, "START"},   {DET_KILL, "KILL"},
      {DET_STATUS, "STATUS"}, {DET_FORK, "FORK"}, {DET_DONT_WAIT, "DONT_WAIT"}, {DET_OWN, "OWN"},
      {DET_PROT_READ, "R"}, {DET_PROT_WRITE, "W"}, {DET_PROT_EXEC, "X"}};
  std::string s;
  for (auto& [bit, name] : names) {
    if (!(f & bit)) continue;
    if (!s.empty()) s += '|';
    s += name;
  }
  return s.empty() ? "0" : s;
}

const char* space_name(const std::string& path) { return path.empty() ? "master" : path.c_str(); }

}  // namespace

void Kernel::log_call(const Space& caller, const Call& c, long result) const {
  const char* op = c.op == abi::kOpPut ? "put" : c.op == abi::kOpGet ? "get"
                 : c.op == abi::kOpExec ? "exec" : "ret";
  std::string res = result == kBlocked ? std::string(c.op == abi::kOpExec ? "(loads)" : "(waits)")
                                       : std::to_string(result);
  fmt::print(stderr, "detux: {} {}({}, {}, {:#x}+{}, {:#x}) = {}\n", space_name(caller.path), op,
             c.child, flag_names(c.flags), c.addr, c.size, c.child_addr, res);
}

void Kernel::log_stop(const Space& s) const {
  const det_status& st = s.status;
  std::string what;
  switch (st.state) {
    case DET_S_STOPPED: what = "ret"; break;
    case DET_S_EXITED: what = fmt::format("exit({})", st.exit_code); break;
    case DET_S_FAULTED:
      if (st.fault == DET_FAULT_SYSCALL) what = fmt::format("fault: refused syscall {}", st.syscall);
      else if (st.fault == DET_FAULT_BADCALL) what = "fault: bad detux call";
      else what = fmt::format("fault: signal {} at {:#x}", st.signal, st.addr);
      break;
    default: what = "?";
  }
  fmt::print(stderr, "detux: {} stops: {}\n", space_name(s.path), what);
}

}  // namespace detux
