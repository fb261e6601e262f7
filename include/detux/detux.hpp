// detux.hpp: the C++ face of detux's runtime.
//
// The same model as <detux/detux.h>, with RAII and lambdas: a detux::thread
// is a child space running a callable on a snapshot of its creator, joined
// (merged) explicitly or when it goes out of scope; a failed join throws
// detux::error, which carries the child, its status, and for a conflict the
// address and, where debug information exists, the variable it belongs to
// ("actor[3].x").  parallel_for and parallel_reduce cut the range into
// chunks fixed by the caller, so their results are bit-identical on 1 or N
// CPUs.
#pragma once

#include <detux/detux.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace detux {

// A failed join, group join or parallel loop.
class error : public std::runtime_error {
 public:
  error(int code, det_child_t child, const det_status& st)
      : std::runtime_error(message(code, child, st)), code_(code), child_(child), st_(st) {}
  int code() const { return code_; }
  det_child_t child() const { return child_; }
  const det_status& status() const { return st_; }
  bool conflict() const { return code_ == -DET_ECONFLICT; }
  uint64_t conflict_addr() const { return st_.conflict_addr; }

 private:
  static std::string message(int code, det_child_t child, const det_status& st) {
    std::string m = "detux: child " + std::to_string(child) + ": " + det_strerror(code);
    if (code == -DET_ECONFLICT) {
      char where[256];
      det_describe_address(st.conflict_addr, where, sizeof where);
      m += " at " + std::string(where);
    }
    return m;
  }
  int code_;
  det_child_t child_;
  det_status st_;
};

namespace detail {
template <typename F>
void call(void* f) {
  (*static_cast<F*>(f))();
}
template <typename F>
void call_index(long i, void* f) {
  (*static_cast<F*>(f))(i);
}
inline void check(int r, det_child_t child = 0, const det_status& st = det_status{}) {
  if (r < 0) throw error(r, child, st);
}
}  // namespace detail

// A thread that merges: runs f() in child `id` on a snapshot of the caller.
// The callable is copied into the child with the rest of the memory.
class thread {
 public:
  template <typename F>
  thread(det_child_t id, F f) : id_(id) {
    detail::check(det_thread_start(id, &detail::call<F>, &f), id);
    joinable_ = true;
  }
  thread(thread&& o) noexcept : id_(o.id_), joinable_(std::exchange(o.joinable_, false)) {}
  thread(const thread&) = delete;
  thread& operator=(const thread&) = delete;
  ~thread() {
    if (joinable_) djoin(id_);  // never throws; join() explicitly to see errors
  }

  // Merge the thread's writes into the caller; throws detux::error.
  void join() {
    joinable_ = false;
    det_status st{};
    int r = djoin_status(id_, &st);
    detail::check(r, id_, st);
  }
  det_child_t id() const { return id_; }
  bool joinable() const { return joinable_; }

 private:
  det_child_t id_;
  bool joinable_ = false;
};

// In a thread of a group: Determinator's barrier.
inline void barrier() { det_barrier(); }

// Threads [first, first+count) started with `start`, joined together with
// barriers (det_group_join).
template <typename F>
void run_group(det_child_t first, det_child_t count, F body) {
  for (det_child_t c = first; c < first + count; ++c) {
    auto one = [&body, c] { body(c); };
    int r = det_thread_start(c, &detail::call<decltype(one)>, &one);
    if (r < 0) {  // the threads already started go, as the group would
      for (det_child_t k = first; k < c; ++k) dput(k, DET_KILL, nullptr, 0, nullptr);
      detail::check(r, c);
    }
  }
  det_child_t failed = 0;
  det_status st{};
  int r = det_group_join(first, count, &failed, &st);
  detail::check(r, failed, st);
}

namespace detail {
// A failed loop's error names the chunk and, for a conflict, the address.
inline void check_loop(int r) {
  if (r >= 0) return;
  det_child_t child = 0;
  det_status st{};
  det_parallel_for_failure(&child, &st);
  check(r, child, st);
}
}  // namespace detail

template <typename F>
void parallel_for(long begin, long end, long grain, F f) {
  detail::check_loop(det_parallel_for(begin, end, grain, &detail::call_index<F>, &f));
}

// The same for a loop whose index i writes out[i]: each chunk's slice of out
// is copied for its space before it starts (det_parallel_for_writing).
template <typename T, typename F>
void parallel_for(long begin, long end, long grain, T* out, F f) {
  detail::check_loop(det_parallel_for_writing(begin, end, grain, &detail::call_index<F>, &f, out,
                                              sizeof(T)));
}

// Folds map(i) over [begin, end) with reduce, chunk by chunk: each chunk of
// `grain` iterations starts from `identity` (which must be reduce's
// identity) in its own child, and the partial results are combined in chunk
// order in the caller.  The grouping depends only on grain.
template <typename T, typename Map, typename Reduce>
T parallel_reduce(long begin, long end, long grain, T identity, Map map, Reduce reduce) {
  if (grain <= 0) detail::check(-EINVAL);
  if (end <= begin) return identity;
  // Unsigned offsets from begin: a grain near LONG_MAX must not wrap.
  const unsigned long span = static_cast<unsigned long>(end) - static_cast<unsigned long>(begin);
  const unsigned long step = static_cast<unsigned long>(grain);
  const long chunks = static_cast<long>(span / step + (span % step != 0));
  struct Slot {  // not std::vector<bool>'s packed bits: each chunk writes bytes of its own
    T value;
  };
  std::vector<Slot> part(static_cast<size_t>(chunks), Slot{identity});
  parallel_for(0, chunks, 1, [&](long k) {
    T acc = identity;
    const unsigned long off = static_cast<unsigned long>(k) * step;
    const unsigned long take = std::min(step, span - off);
    for (unsigned long j = 0; j < take; ++j)
      acc = reduce(acc, map(static_cast<long>(static_cast<unsigned long>(begin) + off + j)));
    part[static_cast<size_t>(k)].value = acc;
  });
  T acc = identity;
  for (const Slot& p : part) acc = reduce(acc, p.value);
  return acc;
}

}  // namespace detux
