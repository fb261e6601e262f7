// join.h: creating and joining children, the runtime's half.
//
// The kernel forks and merges; the runtime adds what a program expects
// around that: a fresh heap extent for each child it forks (so allocations
// never collide), the child's console output printed at its join, input
// served while the parent waits, the heap given back at the end, and the
// choice of what memory a join merges -- the program's shared data: the
// main executable's writable segments and the heap, never stacks, the C
// library's private state (stdio) or detux's own.
#pragma once

#include <detux/detux.h>

#include <string>
#include <vector>

#include "rt/state.h"

namespace detux::rt {

// Around a Put that forks the caller into a new child.
struct ForkPlan {
  Extent extent;
  bool parent_in_space = false;
  long refused = 0;  // -DET_ELIMIT: the caller has kMaxRecs live children already
};
ForkPlan fork_prepare(unsigned long flags);         // parent, before the Put
void fork_child(const ForkPlan& plan, det_child_t self);  // in the new child
// Parent, after the Put: it made the child (r >= 0) or failed (r < 0).
void fork_done(const ForkPlan& plan, det_child_t child, long r);
// Parent: a Get merged from the child / a Put killed it.  A child killed
// without any merge gives its heap extent back; one that merged keeps it
// (the parent may hold its blocks now).
void child_merged(det_child_t child);
void child_killed(det_child_t child);

// Waits until the child stops other than to ask for input (serving those
// requests), and reads its runtime state.  -ESRCH if there is no child.
long wait_child(det_child_t child, det_status* st, RtState* crt);

// The program's shared memory, the ranges a join merges: the heap first,
// then the main executable's writable data.
struct Span {
  uint64_t start, len;
};
std::vector<Span> shared_spans();

// Merges the program's shared data from the child (heap first, then the
// main executable's writable data).  0, -DET_ECONFLICT or another error;
// *heap_merged says whether the heap part went in.
long merge_shared(det_child_t child, bool* heap_merged);

// The whole join: wait, merge (if merge_memory and the child ended well),
// print its output, take back its heap, kill it.  Returns 0, -DET_ECONFLICT,
// -DET_EFAULTED, -DET_EEXITED or another error; *out gets the final status.
int join_child(det_child_t child, bool merge_memory, det_status* out);

// The paths the last join marked conflicted, one per line.
const std::string& last_fs_conflicts();

// A name for an address of this process (det_describe_address).
std::string describe(uint64_t addr);

// Called once when the process becomes master.
void rt_master_init();
// The master is about to execve: its spaces end first (lib/api.cc), even if
// the exec then fails.
void master_before_exec();
// The same for a program exec'd in a space (rt/exec.cc), before it is
// confined: the heap, the state page, the file-system region (unformatted).
void rt_init(bool master);

}  // namespace detux::rt
