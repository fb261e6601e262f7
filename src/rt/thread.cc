// thread.cc: threads that merge, Determinator's barrier, parallel loops.
//
// A thread is a dfork: a child space on a snapshot of the caller.  Joining
// merges it (join.cc).  The barrier is Determinator's: a thread at the
// barrier Rets with RetWhy::kBarrier; its parent, in det_group_join, waits
// for every thread of the group in id order, merges those at the barrier in
// that order, prints their output, and then refreshes each one's shared
// memory to the merged state (Put/Merge: only the pages that differ) with a
// new snapshot, and starts them again.  Nothing depends on timing: which
// thread reaches the barrier first changes nothing, because the merges
// happen in id order after all have arrived.
#include <detux/detux.h>
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "rt/console.h"
#include "rt/join.h"
#include "rt/state.h"

namespace detux::rt {
namespace {

constexpr long kMaxInFlight = 64;  // chunks of a parallel loop running at once

const char* next_page(const char* at) {
  return reinterpret_cast<const char*>((reinterpret_cast<uintptr_t>(at) | 4095) + 1);
}

[[noreturn]] void end_thread() {
  console_give_back_input();
  fflush(stdout);
  fflush(stderr);
  _exit(0);
}

// The first step of a child made by fork_writing: one load from each page
// it is about to write.  The kernel has already given it its own
// copies (DET_OWN); on a guest whose hypervisor shadows page tables (PVM),
// the first access to each page in a new process is still a hypervisor
// exit, which costs several microseconds more inside a computation than in
// this tight loop (it evicts the computation's TLB entries).  Loads, not
// stores: they change nothing a merge could see, and cannot fault, since
// DET_OWN checked that every page is mapped writable.
void touch_pages(const char* first, size_t size, size_t count, size_t stride) {
  for (size_t k = 0; k < count; ++k) {
    const char* lo = first + k * stride;
    for (const char* at = lo; at < lo + size; at = next_page(at))
      (void)*static_cast<const volatile char*>(at);
  }
}

// dfork, telling the kernel (DET_OWN) and then the new child (touch_pages)
// where the child will write: count pieces of size bytes, stride apart.
// DET_CHILD in the child, else dput's result.
long fork_writing(det_child_t child, void* first, size_t size, size_t count, size_t stride) {
  det_stride rep{count, stride};
  const bool own = size != 0;
  long r = dput(child, DET_FORK | DET_SNAP | DET_START | (own ? DET_OWN : 0), own ? &rep : nullptr,
                size, first);
  if (r == DET_CHILD && own) touch_pages(static_cast<const char*>(first), size, count, stride);
  return r;
}

// The child's output so far is printed; it starts again with none.
long hand_over_output(det_child_t child, const RtState& crt) {
  long r = console_collect(child, crt);
  uint64_t zero = 0;
  long w = dput(child, DET_COPY, &zero, sizeof zero, &rt_state().out.len);
  return r < 0 ? r : w;
}

// Brings a thread at the barrier up to date with the caller and restarts it.
long refresh_and_start(det_child_t child) {
  for (const Span& s : shared_spans()) {
    void* a = reinterpret_cast<void*>(s.start);
    if (long r = dput(child, DET_MERGE, a, s.len, a); r < 0) return r;
  }
  // The pages it wrote this round are likely the ones it writes next: they
  // are copied for it now, in one batch (DET_OWN with no range).
  return dput(child, DET_SNAP | DET_START | DET_OWN, nullptr, 0, nullptr);
}

struct Group {
  std::vector<det_child_t> live;
  long err = 0;
  det_child_t failed = 0;
  det_status st{};

  void fail(det_child_t c, long r, const det_status& s) {
    if (err) return;
    err = r;
    failed = c;
    st = s;
  }
};

// One round: every live thread either ends (joined) or waits at the
// barrier (merged).  Returns the threads at the barrier, in id order.
std::vector<det_child_t> round(Group& g) {
  std::vector<det_child_t> waiting, still;
  for (det_child_t c : g.live) {
    det_status st{};
    RtState crt;
    long r = wait_child(c, &st, &crt);
    if (r < 0) {  // the master's timeout, or a signal: the group fails, this thread too
      g.fail(c, r, st);
      dput(c, DET_KILL, nullptr, 0, nullptr);
      continue;
    }
    if (st.state == DET_S_STOPPED && crt.why == RetWhy::kBarrier && !g.err) {
      bool heap;
      r = merge_shared(c, &heap);
      if (r == -DET_ECONFLICT) dget(c, DET_STATUS, &st, sizeof st, nullptr);
      long o = hand_over_output(c, crt);
      if (r == 0) r = o;
      if (r < 0) g.fail(c, r, st);
      waiting.push_back(c);
      still.push_back(c);
      continue;
    }
    r = join_child(c, !g.err, &st);
    if (r < 0) g.fail(c, r, st);
  }
  g.live = std::move(still);
  return waiting;
}

}  // namespace
}  // namespace detux::rt

using namespace detux::rt;

extern "C" {

int det_thread_start(det_child_t child, det_thread_fn fn, void* arg) {
  return det_thread_start_writing(child, fn, arg, nullptr, 0, 1, 0);
}

int det_thread_start_writing(det_child_t child, det_thread_fn fn, void* arg, void* first,
                             size_t size, size_t count, size_t stride) {
  long r = fork_writing(child, first, size, count, stride);
  if (r < 0) return static_cast<int>(r);
  if (r == DET_CHILD) {
    fn(arg);
    end_thread();
  }
  return 0;
}

void det_barrier(void) {
  fflush(stdout);
  fflush(stderr);
  rt_state().why = RetWhy::kBarrier;
  dret();
  rt_state().why = RetWhy::kNone;
}

int det_group_join(det_child_t first, det_child_t count, det_child_t* failed,
                   det_status* status) {
  Group g;
  for (det_child_t c = first; c < first + count; ++c) g.live.push_back(c);
  for (;;) {
    std::vector<det_child_t> waiting = round(g);
    if (waiting.empty()) break;
    for (det_child_t c : waiting) {
      long r = g.err ? -ECANCELED : refresh_and_start(c);
      if (r < 0 && !g.err) g.fail(c, r, det_status{});
    }
    if (g.err) {  // the others are stopped: end them without merging
      for (det_child_t c : g.live) join_child(c, false, nullptr);
      break;
    }
  }
  if (g.err && failed) *failed = g.failed;
  if (g.err && status) *status = g.st;
  return static_cast<int>(g.err);
}

namespace {
// The last loop's failure, for det_parallel_for_failure.
struct LoopFailure {
  bool failed = false;
  det_child_t child = 0;
  det_status status{};
} g_loop_failure;

int join_wave(long n) {
  LoopFailure& f = g_loop_failure;
  int r = det_group_join(0, static_cast<det_child_t>(n), &f.child, &f.status);
  f.failed = r < 0;
  return r;
}
}  // namespace

int det_parallel_for_failure(det_child_t* failed, det_status* status) {
  if (!g_loop_failure.failed) return -ENOENT;
  if (failed) *failed = g_loop_failure.child;
  if (status) *status = g_loop_failure.status;
  return 0;
}

int det_parallel_for(long begin, long end, long grain, void (*fn)(long, void*), void* arg) {
  return det_parallel_for_writing(begin, end, grain, fn, arg, nullptr, 0);
}

int det_parallel_for_writing(long begin, long end, long grain, void (*fn)(long, void*), void* arg,
                             void* out, size_t elem) {
  g_loop_failure = LoopFailure{};
  if (grain <= 0 || end < begin) return -EINVAL;
  // Offsets from begin, unsigned: a grain near LONG_MAX, or a range ending
  // near it, must not wrap (it looped for ever over negative indices).
  const unsigned long span = static_cast<unsigned long>(end) - static_cast<unsigned long>(begin);
  for (unsigned long off = 0; off < span;) {
    long n = 0;
    for (; off < span && n < kMaxInFlight; ++n) {
      const unsigned long take = std::min(static_cast<unsigned long>(grain), span - off);
      const long lo = static_cast<long>(static_cast<unsigned long>(begin) + off);
      const long hi = static_cast<long>(static_cast<unsigned long>(lo) + take);
      off += take;
      char* first = out ? static_cast<char*>(out) + lo * static_cast<long>(elem) : nullptr;
      const size_t size = out ? static_cast<size_t>(hi - lo) * elem : 0;
      long r = fork_writing(static_cast<det_child_t>(n), first, size, 1, 0);
      if (r == DET_CHILD) {
        for (long i = lo; i < hi; ++i) fn(i, arg);
        end_thread();
      }
      if (r < 0) {
        if (n) det_group_join(0, static_cast<det_child_t>(n), nullptr, nullptr);
        return static_cast<int>(r);
      }
    }
    if (int r = join_wave(n); r < 0) return r;
  }
  return 0;
}

}  // extern "C"
