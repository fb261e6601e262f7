// par.h: fork/join for the evaluation benchmarks, on detux or on pthreads.
//
// Every benchmark in bench/eval is one source file built twice.  With
// PAR_DETUX defined, par::fork starts a detux thread (det_thread_start: a
// child space on a copy-on-write snapshot of the caller) and par::join
// merges its writes back (djoin).  Without it, the same calls are
// pthread_create and pthread_join, and the writes are simply shared.  So the
// two builds run the same algorithm on the same data and differ only in
// how a worker is started and ended, which is what the thesis compares.
//
// Writes.  par::fork may be told where the worker will write (count
// pieces of size bytes, stride apart: its output block).  On detux the
// child then gets its own copies of those pages in one batch before it
// starts (det_thread_start_writing, DET_OWN) instead of a copy-on-write
// fault per page in the middle of its computation; pthreads ignores it,
// its threads share the memory anyway.
//
// Merging time.  In the master, the detux join first waits for the child to
// stop (dget STATUS), then times djoin alone: what that costs is the merge
// (and the child's teardown), not the child's own work.  par::merge_s()
// returns the sum; it is 0 on pthreads.  Spaces may not read the clock, so
// joins made inside spaces (qsort's inner levels) are not timed; their
// merges show up in their parent's time instead.
#pragma once

#include <time.h>

#include <cstdio>
#include <cstdlib>

#ifdef PAR_DETUX
#include <detux/detux.h>
#else
#include <pthread.h>
#endif

namespace par {

using Fn = void (*)(void*);

struct Writes {
  void* first = nullptr;
  size_t size = 0, count = 1, stride = 0;
};

inline double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

[[noreturn]] inline void die(const char* what, long err) {
  std::fprintf(stderr, "%s failed: %ld\n", what, err);
  std::abort();
}

#ifdef PAR_DETUX
constexpr const char* kBackend = "detux";

inline double& merge_total() {
  static double s = 0;
  return s;
}

struct Task {
  det_child_t id = 0;
};

// Starts fn(arg) in child `id` (ids are the caller's own: 0, 1, ...).
inline void fork(Task& t, unsigned long id, Fn fn, void* arg, Writes w = {}) {
  t.id = id;
  int r = w.size ? det_thread_start_writing(id, fn, arg, w.first, w.size, w.count, w.stride)
                 : det_thread_start(id, fn, arg);
  if (r < 0) die(det_strerror(r), r);
}

inline void join(Task& t) {
  int r;
  if (det_is_master()) {
    det_status st{};
    dget(t.id, DET_STATUS, &st, sizeof st, nullptr);  // wait: not merging
    double t0 = now();
    r = djoin(t.id);
    merge_total() += now() - t0;
  } else {
    r = djoin(t.id);
  }
  if (r < 0) die(det_strerror(r), r);
}

inline double merge_s() { return merge_total(); }
inline void reset_merge() { merge_total() = 0; }

#else
constexpr const char* kBackend = "pthreads";

struct Task {
  pthread_t th{};
  Fn fn = nullptr;
  void* arg = nullptr;
};

inline void* trampoline(void* p) {
  auto* t = static_cast<Task*>(p);
  t->fn(t->arg);
  return nullptr;
}

inline void fork(Task& t, unsigned long, Fn fn, void* arg, Writes = {}) {
  t.fn = fn;
  t.arg = arg;
  if (int r = pthread_create(&t.th, nullptr, trampoline, &t); r != 0) die("pthread_create", r);
}

inline void join(Task& t) {
  if (int r = pthread_join(t.th, nullptr); r != 0) die("pthread_join", r);
}

inline double merge_s() { return 0; }
inline void reset_merge() {}
#endif

}  // namespace par
