// actors.h: the lock-step time simulation of Determinator's figure 1,
// shared by actors_detux.cc and actors_pthreads.cc.
//
// An array of actors lives in global memory (the bss of the executable: djoin
// merges the main executable's data and bss, never the malloc heap).  For
// each time step the main thread starts one worker per actor; a worker reads
// the state of its neighbours and updates its own actor in place; then the
// main thread waits for all the workers.
//
// The intended meaning is "lock-step": every actor's new state is a function
// of the neighbours' state at the END OF THE PREVIOUS STEP.  Under detux each
// child works on a private snapshot taken when it was forked, so it can only
// ever see the old state and the result is the same on every run.  With
// threads the workers share one array: a worker may read a neighbour's old
// state, its new state, or a half-finished one, depending on how the threads
// happened to be scheduled, and the result changes from run to run.
//
// To make that race visible rather than theoretical:
//   * a worker re-reads its neighbours in every iteration of a work loop of a
//     few thousand iterations, so threads that run at the same time overlap
//     for many reads;
//   * a worker stores its partial result into its own actor as it goes
//     (every kPublishEvery iterations), as real in-place code tends to, so a
//     neighbour running concurrently sees a moving value;
//   * every value read is hashed into the result, so reading one different
//     value changes every later bit of the state (and the digest).
// Under detux neither point changes anything: a child sees only its snapshot
// and only its final value is merged back.
//
// All numbers are uint64_t so the output is exact.  The loads and stores of
// actor state go through std::atomic_ref with relaxed ordering: on x86-64 they
// are the same plain moves, but the threaded race stays a well-defined (if
// unpredictable) C++ program instead of undefined behaviour, and the compiler
// cannot hoist the neighbour reads out of the work loop.
//
// This header is used inside detux spaces: nothing here may make a Linux
// system call (no printf, no malloc, no locks); only print_state() does I/O,
// and only the master/main thread calls it.
#ifndef DETUX_EXAMPLES_ACTORS_ACTORS_H
#define DETUX_EXAMPLES_ACTORS_ACTORS_H

#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>

namespace actors {

inline constexpr int kActors = 16;  // actors on a ring
inline constexpr int kSteps = 50;   // time steps
inline constexpr int kReach = 1;    // an actor reads neighbours i-kReach..i+kReach
inline constexpr int kWork = 4000;  // iterations of the per-actor work loop
inline constexpr int kPublishEvery = 64;  // store partial state this often
inline constexpr uint64_t kSeed = 0x5eed'0f'de7e'0001ULL;  // fixed: init is deterministic

struct Actor {
  uint64_t state;  // the value neighbours read
  uint64_t total;  // running sum of this actor's states (written only by its owner)
};

static_assert(std::atomic_ref<uint64_t>::is_always_lock_free);
static_assert(alignof(Actor) >= std::atomic_ref<uint64_t>::required_alignment);

// Every program defines this array at namespace scope, zero-initialised, so
// it lands in the executable's bss: the memory that djoin merges.
extern Actor g_actors[kActors];

inline uint64_t load(const uint64_t &x) {
  return std::atomic_ref<uint64_t>(const_cast<uint64_t &>(x)).load(std::memory_order_relaxed);
}
inline void store(uint64_t &x, uint64_t v) {
  std::atomic_ref<uint64_t>(x).store(v, std::memory_order_relaxed);
}

// splitmix64's finaliser: a cheap bijective mixer, so every input bit matters.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// The initial state: a fixed-seed splitmix64 sequence.
inline void init(Actor *a) {
  uint64_t s = kSeed;
  for (int i = 0; i < kActors; i++) {
    s += 0x9e3779b97f4a7c15ULL;
    a[i].state = mix64(s);
    a[i].total = 0;
  }
}

// One actor's update for one time step: reads the neighbours of actor i in
// `src` and writes actor i of `dst`.  The simulation itself always passes the
// same array for both (in-place update, as in the paper); the sequential
// reference passes a copy of the previous step as `src`.
inline void update(const Actor *src, Actor *dst, int i, int step) {
  uint64_t acc = mix64(load(src[i].state) ^ (uint64_t(step) << 32) ^ uint64_t(i));
  for (int k = 0; k < kWork; k++) {
    for (int d = 1; d <= kReach; d++) {
      const uint64_t left = load(src[(i + kActors - d) % kActors].state);
      const uint64_t right = load(src[(i + d) % kActors].state);
      acc = mix64(acc + left + rotl(right, 17 + d) + uint64_t(k));
    }
    if (k % kPublishEvery == kPublishEvery - 1) store(dst[i].state, acc);
  }
  store(dst[i].state, acc);
  store(dst[i].total, load(dst[i].total) + acc);
}

// The correct lock-step result, computed sequentially with a second buffer:
// what every run of the simulation should print.
inline void reference_run(Actor *a) {
  init(a);
  Actor old[kActors];
  for (int step = 0; step < kSteps; step++) {
    for (int i = 0; i < kActors; i++) old[i] = a[i];
    for (int i = 0; i < kActors; i++) update(old, a, i, step);
  }
}

inline uint64_t digest(const Actor *a) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a over the words
  for (int i = 0; i < kActors; i++) {
    h = (h ^ a[i].state) * 0x100000001b3ULL;
    h = (h ^ a[i].total) * 0x100000001b3ULL;
  }
  return mix64(h);
}

// The output format, identical for every variant so runs can be compared
// byte for byte.  Called only by the master / main thread.
inline void print_state(const Actor *a) {
  std::printf("actors: %d actors, %d steps, reach %d, work %d\n", kActors, kSteps, kReach,
              kWork);
  for (int i = 0; i < kActors; i++)
    std::printf("actor %2d: state %016" PRIx64 " total %016" PRIx64 "\n", i, a[i].state,
                a[i].total);
  std::printf("digest: %016" PRIx64 "\n", digest(a));
}

}  // namespace actors

#endif
