// birth.h: how the master makes a space out of itself.
//
// fork() in the master gives a child with the master's memory.  Before it
// runs a single instruction of the program it confines itself, in this
// order: die with the master (PDEATHSIG), ask to be traced and stop, join
// the spaces' process group, forget the supervisor (its heap, its pids, the
// space's own pid in glibc's thread descriptor, any threads the master ran
// in glibc's single-threaded flag), replace shared and
// writable file-backed mappings by private anonymous copies, unmap the
// vDSO, close every file descriptor, make rdtsc and cpuid fault, (for a
// dfork) clone its own frozen snapshot, install the seccomp filter, and
// report for duty with a kOpBirth call.  At that stop the supervisor zeroes
// its own dead stack frames in the space and points it at
// detux_space_entry (gadget.S), which clears the registers and jumps back
// into the dput() that created it (BirthPlan::entry).
//
// Everything here runs in a fresh child of a possibly multi-threaded
// process: no malloc, no locks, only raw system calls.
#pragma once

#include <linux/filter.h>
#include <signal.h>
#include <sys/types.h>

#include <cstdint>

namespace detux {

struct BirthPlan {
  const sock_fprog* filter = nullptr;
  pid_t master_pid = 0;
  pid_t pgid = 0;                 // the spaces' process group, or 0
  uint64_t vdso = 0;              // getauxval(AT_SYSINFO_EHDR), or 0
  bool snapshot = false;          // also fork the frozen reference
  bool cpuid_faults = false;      // this CPU can make cpuid fault
  void (*entry)() = nullptr;      // [[noreturn]]: back into dput()
  // The runtime's SIGSYS handler, which emulates the calls the filter traps
  // (console I/O), or null.
  void (*sigsys)(int, siginfo_t*, void*) = nullptr;
  // The supervisor's own memory (its heap and that heap's bookkeeping),
  // which the space reads as zeros: not copied by the fork, dropped if it was.
  uint64_t hidden_start = 0, hidden_len = 0;
  // Where glibc keeps the thread's id in its descriptor (fs:0 + tid_offset),
  // or -1 if the master could not tell (find_tid_offset).
  long tid_offset = -1;
};

// Runs in the child; never returns.  Besides confining the space, it takes
// away what the supervisor left in the copy that differs from run to run:
// the supervisor's heap (the tree of spaces, their pids) and its
// bookkeeping (which moves with the supervisor's timing), this plan's pids,
// and the space's own pid in glibc's thread descriptor (a fixed kSpaceTid).
// (The supervisor's dead stack frames go at the kOpBirth stop: start_clean.)
[[noreturn]] void space_birth(BirthPlan& plan);

// What every space's thread descriptor says its thread id is (an exec'd
// program's loader is told the same by set_tid_address: ptrace/exec.cc).
inline constexpr int kSpaceTid = 1;

// In the master: the offset from fs:0 of glibc's copy of this thread's id,
// found by looking for gettid() in the first KiB of the descriptor; -1 if it
// is not there exactly once.
long find_tid_offset();

// In the master, once: makes every page of its private writable file
// mappings of up to 1 MiB (libraries' data) a private copy, as each space's
// birth would.  The copies hold the same bytes; the one difference the
// master could see is that a later change to such a file no longer shows in
// the pages it never wrote (which POSIX leaves unspecified anyway).  A space
// forked afterwards finds them done and copies nothing.  And it gives each
// of its code mappings one anonymous page (same bytes), so that a fork
// copies the code's page-table entries instead of the space faulting them
// in again (birth.cc, copy_code_entries_at_fork).
void prepare_master_mappings();

// Exec in a space (ptrace/exec.cc): a fresh child of the master that will
// run a new program image.  Before execve it asks to be traced and stops,
// joins the spaces' group, keeps only the space filter (as fd 3, for the
// new program's runtime to install) and the image (fd 4), turns address
// randomisation off, makes rdtsc fault, and installs the load filter
// (confine/filter.h), so that not one instruction of the image runs
// unsupervised.
struct ExecPlan {
  const sock_fprog* load_filter = nullptr;
  pid_t master_pid = 0;
  pid_t pgid = 0;
  int filter_fd = -1, image_fd = -1;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
};
[[noreturn]] void exec_birth_helper(const ExecPlan& plan);

// In the new program, from its runtime's constructor: finish the
// confinement (private mappings, no descriptors, cpuid faulting, the SIGSYS
// handler, the space filter read from fd 3) and report with kOpBirth,
// offering [carry, carry+cap) for what the old program passed on.  Returns
// that call's result: the number of carried bytes, or a negative error.
long exec_birth(void (*sigsys)(int, siginfo_t*, void*), void* carry, size_t cap);

// The descriptor the space filter reaches a new program on.
inline constexpr int kExecFilterFd = 3;

// Set in every space, clear in the master.
extern volatile int g_in_space;

}  // namespace detux

extern "C" long detux_trap(long op, long child, long flags, long addr,
                           long size, long child_addr);
extern "C" char detux_gadget[];
// gadget.S: where a space the master made starts (PtraceMachine::start_clean).
extern "C" char detux_space_entry[];
