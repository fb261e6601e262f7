// actors_detux.cc: the lock-step actor simulation (Determinator, figure 1)
// on detux.  For each time step the master forks one child space per actor;
// each child is a copy-on-write snapshot of the master taken at its dfork, so
// it reads the neighbours' state of the previous step, never a sibling's new
// one; it updates its own actor in place (in its private memory) and stops;
// djoin then merges each child's change (its own actor only, so there is
// never a conflict) back into the master's bss.  The same code as the
// threaded version, but the output is the same on every run.
//
// Children run inside spaces, which cannot make Linux system calls: they only
// compute and dret().  All I/O (the final printout, error messages) is done
// by the master.
#include <detux/detux.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>

#include "actors.h"

namespace actors {
Actor g_actors[kActors];  // global (bss): the memory djoin merges
}  // namespace actors

namespace {

[[noreturn]] void fail(const char *what, int step, int actor, long err) {
  std::fprintf(stderr, "actors_detux: %s(step %d, actor %d): %s\n", what, step, actor,
               det_strerror(err));
  std::exit(1);
}

[[noreturn]] void fail_join(int step, int actor, long err, const det_status &st) {
  std::fprintf(stderr, "actors_detux: djoin(step %d, actor %d): %s\n", step, actor,
               det_strerror(err));
  if (err == -DET_ECONFLICT || st.conflict)
    std::fprintf(stderr, "  merge conflict at address 0x%" PRIx64 "\n", st.conflict_addr);
  if (st.state == DET_S_EXITED)
    std::fprintf(stderr, "  child exited with code %d\n", static_cast<int>(st.exit_code));
  if (st.state == DET_S_FAULTED) {
    switch (st.fault) {
      case DET_FAULT_SIGNAL:
        std::fprintf(stderr, "  child faulted: signal %d at address 0x%" PRIx64 "\n",
                     static_cast<int>(st.signal), st.addr);
        break;
      case DET_FAULT_SYSCALL:
        std::fprintf(stderr, "  child faulted: refused system call %" PRId64 "\n", st.syscall);
        break;
      case DET_FAULT_BADCALL:
        std::fprintf(stderr, "  child faulted: bad detux call\n");
        break;
      default:
        std::fprintf(stderr, "  child faulted (fault kind %d)\n", static_cast<int>(st.fault));
        break;
    }
  }
  std::exit(1);
}

}  // namespace

int main(int argc, char **argv) {
  using namespace actors;
  if (argc != 1) {
    std::fprintf(stderr, "usage: %s\n", argv[0]);
    return 2;
  }
  if (const int err = det_become_master(); err < 0) fail("det_become_master", -1, -1, err);

  init(g_actors);
  // Nothing may sit in stdio's buffer when spaces are forked: a child that
  // flushed it would make a system call.  (Nothing is printed before the end,
  // and children stop with dret(), not exit(), so this is belt and braces.)
  std::fflush(nullptr);

  for (int step = 0; step < kSteps; step++) {
    for (int i = 0; i < kActors; i++) {
      const int r = dfork(static_cast<det_child_t>(i));
      if (r < 0) fail("dfork", step, i, r);
      if (r == 0) {
        // Child space: its memory is a snapshot of the master's at this
        // dfork, so every neighbour it reads holds the previous step's state.
        // It writes only g_actors[i], so the merges never conflict.
        update(g_actors, g_actors, i, step);
        for (;;) dret();  // djoin merges and kills us; never resumed
      }
    }
    for (int i = 0; i < kActors; i++) {
      det_status st{};
      const int r = djoin_status(static_cast<det_child_t>(i), &st);
      if (r < 0) fail_join(step, i, r, st);
    }
    // djoin wrote g_actors behind the compiler's back: make sure no value of
    // it is kept in a register across the joins, even under LTO.
    asm volatile("" : : "r"(g_actors) : "memory");
  }

  print_state(g_actors);
  return 0;
}
