// heap.cc: the deterministic heap (see heap.h for the design).
//
// Small blocks (up to 1 MiB with their header) come from 31 size classes,
// 32 B to 1 MiB in steps of x1 and x1.5; each class cuts blocks from runs
// carved lowest-address-first from the space's free intervals and keeps a
// LIFO free list threaded through the freed blocks.  Larger blocks are whole
// pages carved straight from the intervals and given back on free, merged
// with their neighbours.  Everything is a pure function of the sequence of
// calls, so the same program gets the same addresses on every run.
#include "rt/heap.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "ptrace/birth.h"
#include "rt/fault.h"

namespace detux::rt {

namespace {

HeapState g_prog;           // the program's heap: merged at joins
HeapState* g_sys = nullptr;  // the supervisor's, never merged: at kSysBooks once made
HeapState* gp = &g_prog;    // the one the current operation works on
thread_local int t_sys = 0;  // >0 while the supervisor runs (SystemHeap)
std::atomic<bool> g_busy{false};

// Spaces are single-threaded, so the lock only ever waits in the master.
// Taking it also chooses the heap the operation works on.
struct Lock {
  explicit Lock(HeapState& h) {
    while (g_busy.exchange(true, std::memory_order_acquire)) sched_yield();
    gp = &h;
  }
  ~Lock() { g_busy.store(false, std::memory_order_release); }
};

constexpr uint64_t kSysBase = 0x500000000000ULL, kSysMaxSize = 1ULL << 40;  // 80 TiB

// The supervisor heap's bookkeeping has pages of its own just below its
// region, so the two are one span that a fork of a space wipes (spawn.cc's
// MADV_WIPEONFORK).  In libdetux's data, the space had to zero its copy at
// birth (three copy-on-write faults) and the master's next allocation
// copied the page it shared with the space.
constexpr uint64_t kBooksLen = (sizeof(HeapState) + 4095) & ~uint64_t{4095};
constexpr uint64_t kSysBooks = kSysBase - kBooksLen;

HeapState* make_sys_books() {
  void* p = mmap(reinterpret_cast<void*>(kSysBooks), kBooksLen, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "detux: cannot map the supervisor heap's bookkeeping\n");
    std::abort();
  }
  return g_sys = new (p) HeapState;
}

// Made on first use, which is in the master (a space never runs the
// supervisor, and a block of its heap is only ever found after it is made),
// once even if two of the master's threads get there together.
HeapState& sys_books() {
  static HeapState* books = make_sys_books();
  return *books;
}

bool in_sys_heap(const void* p) {
  uint64_t a = reinterpret_cast<uint64_t>(p);
  return a >= kSysBase && a < kSysBase + kSysMaxSize;
}
HeapState& for_alloc() { return t_sys ? sys_books() : g_prog; }
HeapState& for_block(const void* p) { return in_sys_heap(p) ? sys_books() : g_prog; }

constexpr uint64_t kPage = 4096, kHdr = 16;
constexpr uint64_t kMinChild = 64ULL << 20;
constexpr uint64_t kBlockTag = 0x6465747578626c6bULL;  // "detuxblk"
constexpr uint64_t kAliasTag = 0x6465747578616c69ULL;  // "detuxali"

struct Header {
  uint64_t size;   // block bytes (header included); for an alias: offset back
  uint64_t check;  // tag ^ address ^ size
};

uint64_t page_up(uint64_t n) { return (n + kPage - 1) & ~(kPage - 1); }
uint64_t class_size(int c) { return (c % 2) ? (48ULL << (c / 2)) : (32ULL << (c / 2)); }
uint64_t max_small() { return class_size(kClasses - 1); }
Header* header_at(uint64_t a) { return reinterpret_cast<Header*>(a); }
uint64_t& link_of(uint64_t block) { return *reinterpret_cast<uint64_t*>(block + kHdr); }
uint64_t check_of(uint64_t tag, uint64_t at, uint64_t size) {
  return tag ^ at ^ (size * 0x9E3779B97F4A7C15ULL);
}

int class_of(uint64_t total) {
  if (total <= 32) return 0;
  int k = std::bit_width(total - 1);  // 2^(k-1) < total <= 2^k
  if (total <= (3ULL << (k - 2))) return 2 * k - 11;
  return 2 * (k - 5);
}

void reserve() {
  if (gp->ready) return;
  bool sys = gp == g_sys;
  uint64_t base = sys ? kSysBase : kHeapBase;
  for (uint64_t size = sys ? kSysMaxSize : kHeapMaxSize; size >= (1ULL << 30); size >>= 1) {
    void* p = mmap(reinterpret_cast<void*>(base), size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED) continue;
    gp->region = gp->own = Extent{base, base + size};
    gp->free[0] = gp->own;
    gp->nfree = 1;
    gp->ready = true;
    return;
  }
  std::fprintf(stderr, "detux: cannot reserve the heap region\n");
  std::abort();
}

// ---- free intervals -------------------------------------------------------

void erase_interval(int i) {
  memmove(&gp->free[i], &gp->free[i + 1], (gp->nfree - i - 1) * sizeof(Extent));
  --gp->nfree;
}

// Lowest-address first fit.  0 if nothing fits or the limit is reached.
uint64_t carve(uint64_t n) {
  if (gp->limited && gp->committed + n > gp->limit) return 0;
  for (int i = 0; i < gp->nfree; ++i) {
    if (gp->free[i].size() < n) continue;
    uint64_t at = gp->free[i].lo;
    gp->free[i].lo += n;
    if (gp->free[i].size() == 0) erase_interval(i);
    gp->committed += n;
    return at;
  }
  return 0;
}

// Like carve(), for a block whose second page starts a huge page: its
// header and first bytes take one small page, and the rest lies on 2 MiB
// boundaries (a 32 MiB matrix then needs no small page past its first).
// The address space skipped below it stays free.  0 if nothing fits.
uint64_t carve_for_huge_pages(uint64_t n, uint64_t huge) {
  if (gp->limited && gp->committed + n > gp->limit) return 0;
  for (int i = 0; i < gp->nfree; ++i) {
    const Extent f = gp->free[i];
    const uint64_t at = ((f.lo + kPage + huge - 1) & ~(huge - 1)) - kPage;
    if (at < f.lo || at + n > f.hi || at + n < at) continue;
    if (at == f.lo) {
      gp->free[i].lo += n;
      if (gp->free[i].size() == 0) erase_interval(i);
    } else {
      gp->free[i].hi = at;  // the skipped part stays free below the block
      if (at + n < f.hi) {
        if (gp->nfree == kMaxIntervals) {  // no room to split: drop the skipped part
          gp->free[i] = Extent{at + n, f.hi};
        } else {
          memmove(&gp->free[i + 2], &gp->free[i + 1], (gp->nfree - i - 1) * sizeof(Extent));
          gp->free[i + 1] = Extent{at + n, f.hi};
          ++gp->nfree;
        }
      }
    }
    gp->committed += n;
    return at;
  }
  return 0;
}

// Back into the sorted list, merged with neighbours.  When the list is full
// the range is dropped (its address space is not reused; nothing breaks).
void give_back(uint64_t lo, uint64_t hi, bool uncommit) {
  if (lo >= hi) return;
  if (uncommit) gp->committed -= hi - lo;
  int i = 0;
  while (i < gp->nfree && gp->free[i].lo < lo) ++i;
  bool join_prev = i > 0 && gp->free[i - 1].hi == lo;
  bool join_next = i < gp->nfree && gp->free[i].lo == hi;
  if (join_prev && join_next) {
    gp->free[i - 1].hi = gp->free[i].hi;
    erase_interval(i);
  } else if (join_prev) {
    gp->free[i - 1].hi = hi;
  } else if (join_next) {
    gp->free[i].lo = lo;
  } else if (gp->nfree < kMaxIntervals) {
    memmove(&gp->free[i + 1], &gp->free[i], (gp->nfree - i) * sizeof(Extent));
    gp->free[i] = Extent{lo, hi};
    ++gp->nfree;
  }
}

// ---- blocks ---------------------------------------------------------------

uint64_t stamp(uint64_t block, uint64_t size) {
  *header_at(block) = Header{size, check_of(kBlockTag, block, size)};
  return block + kHdr;
}

uint64_t alloc_small(int c) {
  FreeList& f = gp->cls[c];
  uint64_t bs = class_size(c);
  if (f.head) {
    uint64_t b = f.head;
    f.head = link_of(b);
    if (!f.head) f.tail = 0;
    return stamp(b, bs);
  }
  if (f.run_end - f.run_next < bs) {
    give_back(f.run_next, f.run_end, true);
    uint64_t run = page_up(bs * 4 > (64 << 10) ? bs * 4 : (64 << 10));
    uint64_t at = carve(run);
    if (!at) {
      f.run_next = f.run_end = 0;
      return 0;
    }
    f.run_next = at;
    f.run_end = at + run;
  }
  uint64_t b = f.run_next;
  f.run_next += bs;
  return stamp(b, bs);
}

// ---- huge pages in the master ----------------------------------------------
//
// In the master, a large block of the program's heap (4 MiB or more; the
// supervisor's heap is left alone) is placed so that all but its first page
// lies on 2 MiB boundaries (carve_for_huge_pages), and that part is backed
// by huge pages where Linux has them: every fork of the master then copies
// one page-table entry per 2 MiB instead of 512, and every exit tears down
// as few.  (A fork costs about 25 us more per MiB of small pages on this
// VM; lu 2048^2's two matrices left 3.6 MiB of them at their unaligned ends
// before the placement.)  A child's write still copies one 4 KiB page
// (Linux splits a shared huge page on a write fault), so dirty pages and
// merges stay page-exact.  Spaces may not call madvise, and need not: they
// inherit the master's pages.
//
// A merge into the master splits its huge pages the same way, and Linux
// does not put them back together on its own for minutes.  So a merge marks
// the blocks split, and the master's next dfork first collapses them again
// (MADV_COLLAPSE: one copy of 2 MiB per split huge page, a no-op for an
// intact one).  lu 2048^2 forks 1480 children in 38 batches, and without
// this every fork after the first batch copied 8192 more entries.
constexpr uint64_t kHuge = 2 << 20;
constexpr int kMaxHugeBlocks = 64;  // more blocks are still advised, not re-collapsed
constexpr int kMadvCollapse = 25;   // MADV_COLLAPSE, Linux 6.1; absent from older headers
constexpr int kMaxBusyCollapses = 8;  // EAGAIN this many times in a row: given up
Extent g_huge[kMaxHugeBlocks];      // the huge-page parts of live blocks
int g_huge_busy[kMaxHugeBlocks];    // its collapses that failed with EAGAIN, in a row
int g_nhuge = 0;
bool g_huge_split = false;          // a merge may have split some of them

// Blocks of 4 MiB and more, in the master's program heap.
bool wants_huge_pages(uint64_t size) { return gp == &g_prog && !g_in_space && size >= 2 * kHuge; }

void prefer_huge_pages(uint64_t at, uint64_t size) {
  uint64_t lo = (at + kHuge - 1) & ~(kHuge - 1), hi = (at + size) & ~(kHuge - 1);
  if (!wants_huge_pages(size) || hi < lo + kHuge) return;
  madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  if (g_nhuge == kMaxHugeBlocks) return;
  g_huge_busy[g_nhuge] = 0;
  g_huge[g_nhuge++] = Extent{lo, hi};
}

void drop_huge(int i) {
  --g_nhuge;
  g_huge[i] = g_huge[g_nhuge];
  g_huge_busy[i] = g_huge_busy[g_nhuge];
}

// The block [lo, hi) is freed: its huge-page part is no longer collapsed.
void forget_huge_pages(uint64_t lo, uint64_t hi) {
  if (gp != &g_prog || g_in_space) return;
  for (int i = 0; i < g_nhuge; ++i) {
    if (g_huge[i].lo < lo || g_huge[i].hi > hi) continue;
    drop_huge(i--);
  }
}

void* alloc_locked(size_t n) {
  reserve();
  if (n > gp->region.size()) {
    errno = ENOMEM;
    return nullptr;
  }
  uint64_t total = n + kHdr;
  uint64_t user = 0;
  if (total <= max_small()) {
    user = alloc_small(class_of(total));
  } else {
    uint64_t size = page_up(total);
    if (uint64_t at = wants_huge_pages(size) ? carve_for_huge_pages(size, kHuge) : carve(size)) {
      user = stamp(at, size);
      prefer_huge_pages(at, size);
    }
  }
  if (user) ++gp->live;
  else errno = ENOMEM;
  return reinterpret_cast<void*>(user);
}

// The block behind a user pointer, or 0 for a pointer the heap never gave
// out (or gave out and took back).
uint64_t block_of(const void* p, uint64_t* alias_off) {
  uint64_t u = reinterpret_cast<uint64_t>(p);
  *alias_off = 0;
  if (u < gp->region.lo + kHdr || u >= gp->region.hi || (u & 15)) return 0;
  const Header* h = header_at(u - kHdr);
  if (h->check == check_of(kAliasTag, u - kHdr, h->size)) {
    *alias_off = h->size;
    u -= h->size;
    h = header_at(u - kHdr);
  }
  if (h->check != check_of(kBlockTag, u - kHdr, h->size)) return 0;
  return u - kHdr;
}

bool free_locked(void* p);

void defer(uint64_t user) {
  if (gp->ndeferred == gp->deferred_cap) {
    uint64_t cap = gp->deferred_cap ? gp->deferred_cap * 2 : 64;
    auto* grown = static_cast<uint64_t*>(alloc_locked(cap * sizeof(uint64_t)));
    if (!grown) return;  // out of memory: the foreign block is simply not freed
    if (gp->deferred) memcpy(grown, reinterpret_cast<void*>(gp->deferred), gp->ndeferred * 8);
    uint64_t old = gp->deferred;
    gp->deferred = reinterpret_cast<uint64_t>(grown);
    gp->deferred_cap = cap;
    free_locked(reinterpret_cast<void*>(old));  // ours: never deferred again
  }
  reinterpret_cast<uint64_t*>(gp->deferred)[gp->ndeferred++] = user;
}

// False for a bad pointer; the caller reports it once the lock is free.
bool free_locked(void* p) {
  if (!p) return true;
  uint64_t off;
  uint64_t b = block_of(p, &off);
  if (!b) return false;
  if (b < gp->own.lo || b >= gp->own.hi) {
    defer(b + kHdr);
    return true;
  }
  uint64_t bs = header_at(b)->size;
  header_at(b)->check = 0;  // a second free of this pointer is caught
  --gp->live;
  if (bs > max_small()) {
    forget_huge_pages(b, b + bs);
    give_back(b, b + bs, true);
    return true;
  }
  FreeList& f = gp->cls[class_of(bs)];
  link_of(b) = f.head;
  f.head = b;
  if (!f.tail) f.tail = b;
  return true;
}

}  // namespace

void heap_merged_into_master() { g_huge_split = g_nhuge > 0; }

// Best effort.  A block Linux would not collapse (no MADV_COLLAPSE, no huge
// page free even after compaction, which it tries synchronously) keeps its
// small pages and is not tried again: a failing collapse can cost more
// than the forks it was meant to save.  EAGAIN is different: Linux found a
// page busy (held by a space killed at its join and still exiting, or
// locked for a moment) and collapsed the rest.  Giving such a block up for
// good left lu 2048^2's matrix in 8192 small pages for the rest of the run
// after one busy page in the second batch, so every later fork and exit
// copied and tore down those entries.  So it is tried again at the next
// dfork, up to kMaxBusyCollapses times in a row.
void heap_rejoin_huge_pages() {
  if (!g_huge_split || g_in_space) return;
  Lock l(g_prog);
  bool busy = false;
  for (int i = 0; i < g_nhuge; ++i) {
    if (madvise(reinterpret_cast<void*>(g_huge[i].lo), g_huge[i].size(), kMadvCollapse) == 0) {
      g_huge_busy[i] = 0;
    } else if (errno == EAGAIN && ++g_huge_busy[i] < kMaxBusyCollapses) {
      busy = true;
    } else {
      drop_huge(i--);
    }
  }
  g_huge_split = busy;
}

HeapState& heap_state() { return g_prog; }
Extent heap_region() { return g_prog.region; }
Extent system_heap_span() { return {kSysBooks, kSysBase + kSysMaxSize}; }

void* heap_alloc(size_t n) {
  Lock l(for_alloc());
  return alloc_locked(n);
}

// A space starts without the supervisor's heap (its pages are dropped at
// birth, see ptrace/birth.h): a block of it that the space inherited holds
// zeros and belongs to nobody there.  Freeing it does nothing; growing it
// gives a fresh block of the program's heap, zeroed like the old contents.
namespace {
bool inherited_supervisor_block(const void* p) { return g_in_space && in_sys_heap(p); }
}  // namespace

void heap_free(void* p) {
  if (inherited_supervisor_block(p)) return;
  bool ok;
  {
    Lock l(for_block(p));
    ok = free_locked(p);
  }
  if (!ok) bad_pointer("free", p);
}

size_t heap_usable(const void* p) {
  if (!p || inherited_supervisor_block(p)) return 0;
  uint64_t off, b;
  {
    Lock l(for_block(p));
    b = block_of(p, &off);
  }
  if (!b) bad_pointer("realloc/malloc_usable_size", p);
  return header_at(b)->size - kHdr - off;
}

void* heap_alloc_aligned(size_t align, size_t n) {
  if (align <= kHdr) return heap_alloc(n);
  Lock l(for_alloc());
  if (n > gp->region.size() || align > gp->region.size()) {
    errno = ENOMEM;
    return nullptr;
  }
  auto* p = static_cast<uint8_t*>(alloc_locked(n + align + kHdr));
  if (!p) return nullptr;
  uint64_t u = reinterpret_cast<uint64_t>(p);
  uint64_t a = (u + kHdr + align - 1) & ~(uint64_t(align) - 1);
  if ((u & (align - 1)) == 0) return p;
  *header_at(a - kHdr) = Header{a - u, check_of(kAliasTag, a - kHdr, a - u)};
  return reinterpret_cast<void*>(a);
}

void* heap_realloc(void* p, size_t n) {
  if (!p) return heap_alloc(n);
  if (inherited_supervisor_block(p)) {
    void* q = heap_alloc(n);
    if (q) memset(q, 0, n);
    return q;
  }
  size_t have = heap_usable(p);
  if (n <= have) return p;
  void* q = heap_alloc(n);
  if (!q) return nullptr;
  memcpy(q, p, have);
  heap_free(p);
  return q;
}

Extent heap_carve_child() {
  Lock l(g_prog);
  if (!gp->ready || gp->nfree == 0) return {};
  int big = 0;
  for (int i = 1; i < gp->nfree; ++i)
    if (gp->free[i].size() > gp->free[big].size()) big = i;
  Extent& e = gp->free[big];
  uint64_t share = (e.size() / 32) & ~((2ULL << 20) - 1);
  if (share < kMinChild) share = e.size() < kMinChild ? e.size() : kMinChild;
  Extent child{e.hi - share, e.hi};
  e.hi -= share;
  if (e.size() == 0) erase_interval(big);
  return child;
}

void heap_child_start(Extent e) {
  t_sys = 0;  // a space never runs the supervisor
  Lock l(g_prog);
  // Field by field, and free[] only as far as it is used: the master's
  // intervals past nfree are never read, and writing them would copy one
  // more page of libdetux's data into every new space.
  gp->own = e;
  gp->nfree = e.size() ? 1 : 0;
  if (e.size()) gp->free[0] = e;
  for (FreeList& f : gp->cls) f = FreeList{};
  gp->deferred = gp->ndeferred = gp->deferred_cap = 0;
  gp->committed = gp->live = gp->kept = 0;
  gp->limited = true;
}

// The child's list of the parent's blocks it freed (deferred), if it lies
// in the child's extent e; *n entries.  nullptr if there is none.
uint64_t* deferred_list(const HeapState& child, Extent e, uint64_t* n) {
  uint64_t off, arr = block_of(reinterpret_cast<void*>(child.deferred), &off);
  if (!arr || !e.holds(arr, arr + header_at(arr)->size)) return nullptr;
  *n = std::min(child.ndeferred, (header_at(arr)->size - kHdr) / 8);
  return reinterpret_cast<uint64_t*>(child.deferred);
}

// A child whose extent holds no live block (all it allocated it freed; at
// most its deferred list is left) gives the extent back whole, as if it had
// never been carved: the next child then gets the same one.  Splicing its
// free lists instead would leave the parent's next small blocks scattered
// in it, the extent could never coalesce again, and every later child would
// take a new one 1/32 further down: a few pages each in another 512 GiB of
// address space, which every fork, exit and page-table scan walks from then
// on.  The deferred frees (`list`, n entries) are done first (none inside
// e: e is free).
bool join_wholly_free(const HeapState& child, Extent e, const uint64_t* list, uint64_t n) {
  if (child.live != (list ? 1u : 0u) || child.kept != 0 || e.lo >= e.hi) return false;
  for (uint64_t i = 0; i < n; ++i)
    if (!e.holds(list[i], list[i] + 1)) free_locked(reinterpret_cast<void*>(list[i]));
  give_back(e.lo, e.hi, false);
  return true;
}

// What the child reports is checked before it is believed: every range and
// block must lie in the extent it was given, so a child that scribbled over
// its own heap state cannot make the parent free or reuse anything else.
// What fails the check is dropped (its address space is not reused).  Its
// count of live blocks is believed: a child that lies about it can only
// make the parent reuse memory the child itself owned.
void heap_join(const HeapState& child, Extent e) {
  Lock l(g_prog);
  uint64_t n = 0;
  uint64_t* list = deferred_list(child, e, &n);
  if (join_wholly_free(child, e, list, n)) return;
  gp->live += child.live;  // its blocks are the parent's to free now
  gp->kept += child.kept;  // and so are those it kept extents for
  for (int i = 0; i < child.nfree && i < kMaxIntervals; ++i)
    if (e.holds(child.free[i].lo, child.free[i].hi)) give_back(child.free[i].lo, child.free[i].hi, false);
  gp->committed += child.committed;
  for (int c = 0; c < kClasses; ++c) {
    const FreeList& f = child.cls[c];
    if (e.holds(f.run_next, f.run_end)) give_back(f.run_next, f.run_end, true);
    if (!f.head || !e.holds(f.head, f.head + kHdr + 8) || !e.holds(f.tail, f.tail + kHdr + 8)) continue;
    link_of(f.tail) = gp->cls[c].head;
    if (!gp->cls[c].tail) gp->cls[c].tail = f.tail;
    gp->cls[c].head = f.head;
  }
  if (!list) return;
  for (uint64_t i = 0; i < n; ++i) free_locked(reinterpret_cast<void*>(list[i]));
  free_locked(list);
}

void heap_give_back(Extent e) {
  Lock l(g_prog);
  give_back(e.lo, e.hi, false);
}

void heap_keep(Extent e) {
  if (e.size() == 0) return;
  Lock l(g_prog);
  ++gp->kept;
}

void heap_reserve() {
  Lock l(g_prog);
  reserve();
}

void heap_set_limit(uint64_t bytes) {
  Lock l(g_prog);
  gp->limit = bytes;
}

void heap_exec_start(uint64_t limit) {
  Lock l(g_prog);
  gp->limit = limit;
  gp->limited = true;
}

SystemHeap::SystemHeap() { ++t_sys; }
SystemHeap::~SystemHeap() { --t_sys; }

}  // namespace detux::rt
