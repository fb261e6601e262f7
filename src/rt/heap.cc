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

#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>

#include "rt/fault.h"

namespace detux::rt {

namespace {

HeapState g;
std::atomic<bool> g_busy{false};

// Spaces are single-threaded, so the lock only ever waits in the master.
struct Lock {
  Lock() {
    while (g_busy.exchange(true, std::memory_order_acquire)) sched_yield();
  }
  ~Lock() { g_busy.store(false, std::memory_order_release); }
};

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
  if (g.ready) return;
  for (uint64_t size = kHeapMaxSize; size >= (1ULL << 30); size >>= 1) {
    void* p = mmap(reinterpret_cast<void*>(kHeapBase), size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED) continue;
    g.region = g.own = Extent{kHeapBase, kHeapBase + size};
    g.free[0] = g.own;
    g.nfree = 1;
    g.ready = true;
    return;
  }
  std::fprintf(stderr, "detux: cannot reserve the heap region\n");
  std::abort();
}

// ---- free intervals -------------------------------------------------------

void erase_interval(int i) {
  memmove(&g.free[i], &g.free[i + 1], (g.nfree - i - 1) * sizeof(Extent));
  --g.nfree;
}

// Lowest-address first fit.  0 if nothing fits or the limit is reached.
uint64_t carve(uint64_t n) {
  if (g.limited && g.committed + n > g.limit) return 0;
  for (int i = 0; i < g.nfree; ++i) {
    if (g.free[i].size() < n) continue;
    uint64_t at = g.free[i].lo;
    g.free[i].lo += n;
    if (g.free[i].size() == 0) erase_interval(i);
    g.committed += n;
    return at;
  }
  return 0;
}

// Back into the sorted list, merged with neighbours.  When the list is full
// the range is dropped (its address space is not reused; nothing breaks).
void give_back(uint64_t lo, uint64_t hi, bool uncommit) {
  if (lo >= hi) return;
  if (uncommit) g.committed -= hi - lo;
  int i = 0;
  while (i < g.nfree && g.free[i].lo < lo) ++i;
  bool join_prev = i > 0 && g.free[i - 1].hi == lo;
  bool join_next = i < g.nfree && g.free[i].lo == hi;
  if (join_prev && join_next) {
    g.free[i - 1].hi = g.free[i].hi;
    erase_interval(i);
  } else if (join_prev) {
    g.free[i - 1].hi = hi;
  } else if (join_next) {
    g.free[i].lo = lo;
  } else if (g.nfree < kMaxIntervals) {
    memmove(&g.free[i + 1], &g.free[i], (g.nfree - i) * sizeof(Extent));
    g.free[i] = Extent{lo, hi};
    ++g.nfree;
  }
}

// ---- blocks ---------------------------------------------------------------

uint64_t stamp(uint64_t block, uint64_t size) {
  *header_at(block) = Header{size, check_of(kBlockTag, block, size)};
  return block + kHdr;
}

uint64_t alloc_small(int c) {
  FreeList& f = g.cls[c];
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

void* alloc_locked(size_t n) {
  reserve();
  if (n > g.region.size()) return nullptr;
  uint64_t total = n + kHdr;
  uint64_t user = 0;
  if (total <= max_small()) {
    user = alloc_small(class_of(total));
  } else {
    uint64_t size = page_up(total);
    if (uint64_t at = carve(size)) user = stamp(at, size);
  }
  if (!user) errno = ENOMEM;
  return reinterpret_cast<void*>(user);
}

// The block behind a user pointer; faults the caller on a pointer the heap
// never gave out.
uint64_t block_of(const void* p, uint64_t* alias_off) {
  uint64_t u = reinterpret_cast<uint64_t>(p);
  *alias_off = 0;
  if (u < g.region.lo + kHdr || u >= g.region.hi || (u & 15)) bad_pointer("free/realloc", p);
  const Header* h = header_at(u - kHdr);
  if (h->check == check_of(kAliasTag, u - kHdr, h->size)) {
    *alias_off = h->size;
    u -= h->size;
    h = header_at(u - kHdr);
  }
  if (h->check != check_of(kBlockTag, u - kHdr, h->size)) bad_pointer("free/realloc", p);
  return u - kHdr;
}

void free_locked(void* p);

void defer(uint64_t user) {
  if (g.ndeferred == g.deferred_cap) {
    uint64_t cap = g.deferred_cap ? g.deferred_cap * 2 : 64;
    auto* grown = static_cast<uint64_t*>(alloc_locked(cap * sizeof(uint64_t)));
    if (!grown) return;  // out of memory: the foreign block is simply not freed
    if (g.deferred) memcpy(grown, reinterpret_cast<void*>(g.deferred), g.ndeferred * 8);
    uint64_t old = g.deferred;
    g.deferred = reinterpret_cast<uint64_t>(grown);
    g.deferred_cap = cap;
    free_locked(reinterpret_cast<void*>(old));  // ours: never deferred again
  }
  reinterpret_cast<uint64_t*>(g.deferred)[g.ndeferred++] = user;
}

void free_locked(void* p) {
  if (!p) return;
  uint64_t off;
  uint64_t b = block_of(p, &off);
  if (b < g.own.lo || b >= g.own.hi) {
    defer(b + kHdr);
    return;
  }
  uint64_t bs = header_at(b)->size;
  header_at(b)->check = 0;  // a second free of this pointer is caught
  if (bs > max_small()) {
    give_back(b, b + bs, true);
    return;
  }
  FreeList& f = g.cls[class_of(bs)];
  link_of(b) = f.head;
  f.head = b;
  if (!f.tail) f.tail = b;
}

}  // namespace

HeapState& heap_state() { return g; }
Extent heap_region() { return g.region; }

void* heap_alloc(size_t n) {
  Lock l;
  return alloc_locked(n);
}

void heap_free(void* p) {
  Lock l;
  free_locked(p);
}

size_t heap_usable(const void* p) {
  if (!p) return 0;
  Lock l;
  uint64_t off;
  uint64_t b = block_of(p, &off);
  return header_at(b)->size - kHdr - off;
}

void* heap_alloc_aligned(size_t align, size_t n) {
  if (align <= kHdr) return heap_alloc(n);
  Lock l;
  if (n > g.region.size() || align > g.region.size()) {
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
  size_t have = heap_usable(p);
  if (n <= have) return p;
  void* q = heap_alloc(n);
  if (!q) return nullptr;
  memcpy(q, p, have);
  heap_free(p);
  return q;
}

Extent heap_carve_child() {
  Lock l;
  if (!g.ready || g.nfree == 0) return {};
  int big = 0;
  for (int i = 1; i < g.nfree; ++i)
    if (g.free[i].size() > g.free[big].size()) big = i;
  Extent& e = g.free[big];
  uint64_t share = (e.size() / 32) & ~((2ULL << 20) - 1);
  if (share < kMinChild) share = e.size() < kMinChild ? e.size() : kMinChild;
  Extent child{e.hi - share, e.hi};
  e.hi -= share;
  if (e.size() == 0) erase_interval(big);
  return child;
}

void heap_child_start(Extent e) {
  Lock l;
  uint64_t limit = g.limit;
  Extent region = g.region;
  bool ready = g.ready;
  g = HeapState{};
  g.ready = ready;
  g.region = region;
  g.limit = limit;
  g.limited = true;
  g.own = e;
  if (e.size()) {
    g.free[0] = e;
    g.nfree = 1;
  }
}

void heap_join(const HeapState& child, Extent e, bool merged) {
  uint64_t deferred = 0, n = 0;
  {
    Lock l;
    if (!merged) {
      give_back(e.lo, e.hi, false);
      return;
    }
    for (int i = 0; i < child.nfree; ++i) give_back(child.free[i].lo, child.free[i].hi, false);
    g.committed += child.committed;
    for (int c = 0; c < kClasses; ++c) {
      const FreeList& f = child.cls[c];
      give_back(f.run_next, f.run_end, true);
      if (!f.head) continue;
      link_of(f.tail) = g.cls[c].head;
      if (!g.cls[c].tail) g.cls[c].tail = f.tail;
      g.cls[c].head = f.head;
    }
    deferred = child.deferred;
    n = child.ndeferred;
  }
  auto* list = reinterpret_cast<uint64_t*>(deferred);
  for (uint64_t i = 0; i < n; ++i) heap_free(reinterpret_cast<void*>(list[i]));
  if (deferred) heap_free(list);
}

void heap_set_limit(uint64_t bytes) {
  Lock l;
  g.limit = bytes;
}

}  // namespace detux::rt
