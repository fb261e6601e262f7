// heap.h: the deterministic heap that malloc, new and the runtime use.
//
// Every detux program has one heap region at a fixed address, reserved once
// (address space only, MAP_NORESERVE) by the first allocation in the
// process, before it becomes master.  Spaces inherit the reservation when
// they are forked, so a space gets new memory without any system call: the
// Linux kernel supplies a zero page on first touch, and the supervisor
// merges the heap at join like any other shared data.
//
// Determinism comes from ownership of address space.  Each space owns one
// extent of the region and carves new blocks only inside it, lowest address
// first; a thread forked with dfork is handed a fresh extent cut from the
// top of its parent's largest free interval (1/32 of it, at least 64 MiB
// where there is room), so blocks allocated by two children running at the
// same time can never overlap, and their addresses depend only on the
// program.  A space reuses freed blocks only in its own extent; a block it
// frees that belongs to an ancestor is remembered and freed by the parent at
// join.  At join the parent takes back what the child did not use: its free
// intervals, its partly used runs and its free lists, which after the merge
// sit in the parent's memory; a child that kept no block at all gives its
// extent back whole, so the next child gets the same one.  If the join does
// not merge (a conflict or a fault), the whole extent returns to the parent.
//
// Blocks carry a 16-byte header (size and a check word), so free() of a
// pointer the heap never gave out is caught: in a space it faults the space
// (its parent sees the fault), in the master it aborts with a message.
// Running out of the extent, or past the space's memory limit, makes malloc
// return NULL with errno ENOMEM, at the same allocation on every run.
#pragma once

#include <cstddef>
#include <cstdint>

namespace detux::rt {

// 17 TiB: above AddressSanitizer's shadow (which ends just past 16 TiB), so
// the sanitizer build keeps the same layout.
inline constexpr uint64_t kHeapBase = 0x110000000000ULL;
inline constexpr uint64_t kHeapMaxSize = 1ULL << 44;       // 16 TiB of address space

struct Extent {
  uint64_t lo = 0, hi = 0;
  uint64_t size() const { return hi - lo; }
  bool holds(uint64_t a, uint64_t b) const { return a >= lo && b <= hi && a <= b; }  // [a, b)
};

inline constexpr int kClasses = 31;     // block sizes 32 B .. 1 MiB (x1, x1.5 steps)
inline constexpr int kMaxIntervals = 512;

struct FreeList {
  uint64_t head = 0, tail = 0;  // blocks (header addresses), linked through their bodies
  uint64_t run_next = 0, run_end = 0;  // the part of the current run not yet cut
};

// A space's heap state.  It lives in libdetux's own data, which djoin never
// merges, so every space has its own; a parent reads its child's copy at join.
struct HeapState {
  bool ready = false;
  Extent own;                      // blocks inside are this space's to reuse
  Extent region;                   // the whole reserved heap
  int nfree = 0;
  Extent free[kMaxIntervals];      // not yet carved, sorted, coalesced
  FreeList cls[kClasses];
  uint64_t deferred = 0;           // array of foreign blocks freed here
  uint64_t ndeferred = 0, deferred_cap = 0;
  uint64_t committed = 0;          // bytes carved and not given back
  uint64_t live = 0;               // blocks of `own` given out and not freed
  uint64_t kept = 0;               // children's extents kept for blocks merged from them (heap_keep)
  uint64_t limit = 16ULL << 30;    // most bytes this space may hold
  bool limited = false;            // the master is not limited
};

// The supervisor's own allocations (the kernel's tree, the machine's
// buffers) must not live in memory that joins merge: a child could write
// over them.  While a SystemHeap is alive on a thread, that thread's
// allocations come from a second region that is never merged; free() finds
// the right heap by address.
struct SystemHeap {
  SystemHeap();
  ~SystemHeap();
  SystemHeap(const SystemHeap&) = delete;
  SystemHeap& operator=(const SystemHeap&) = delete;
};

HeapState& heap_state();
Extent heap_region();
// Where the supervisor's heap and its bookkeeping live (made or not): no
// space needs either (ptrace/birth.h drops them).
Extent system_heap_span();

void* heap_alloc(size_t n);
void* heap_alloc_aligned(size_t align, size_t n);
void heap_free(void* p);
void* heap_realloc(void* p, size_t n);
size_t heap_usable(const void* p);

// The fork/join protocol (called by the API around creating and joining a
// child; the heap lock is not held across them).
Extent heap_carve_child();                 // parent: the new child's extent
void heap_child_start(Extent e);           // child: start a fresh heap in e
// parent: after a join that merged the child's heap; `child` is the child's
// HeapState as it ended, `e` the extent it was given.
void heap_join(const HeapState& child, Extent e);
// parent: the extent of a child whose heap never reached the parent (the
// fork failed, the join did not merge, the child was killed unmerged).
void heap_give_back(Extent e);
// parent: the extent of a child whose heap never reached the parent, but
// from which a merge (a barrier's) may have handed the parent blocks.  It is
// never reused, and it is counted (`kept`, apart from `live`, which frees
// of those blocks lower), so that the parent's own extent never comes back
// whole at its join while they may be held.
void heap_keep(Extent e);
void heap_set_limit(uint64_t bytes);
// A program exec'd in a space: its heap is the whole region, as a master's,
// but held to the space's memory limit.
void heap_exec_start(uint64_t limit);
// master: a join merged into the program's heap, which may have split the
// huge pages of its large blocks; the next heap_rejoin_huge_pages() (the
// master's next dfork) collapses them again.  See heap.cc.
void heap_merged_into_master();
void heap_rejoin_huge_pages();
// Reserve the program heap now (the master does, before any space exists).
void heap_reserve();

}  // namespace detux::rt
