// ptrace_machine.h: detux's mechanism on a stock Linux kernel.
//
// In a nutshell: every space is a Linux process, a direct child of the
// master process, traced by the master thread (ptrace) and confined by a
// seccomp filter that sends every system call to the tracer.  A space's
// detux call is a seccomp stop; a fault is a signal-delivery stop; exit is a
// PTRACE_EVENT_EXIT stop, where the memory is still readable.  New spaces
// and snapshots are clone(CLONE_PARENT) calls injected into a stopped space
// through a `syscall; int3` gadget that every space has at the same address
// (it is part of libdetux, which every space inherits from the master).  A
// snapshot is one more clone that is never run: while it lives, every page
// the space has not written stays shared with it, so /proc/PID/pagemap's
// exclusive bit names exactly the pages the space wrote.  Memory moves with
// process_vm_readv/writev.  rdtsc, rdtscp and cpuid fault in a space
// (PR_SET_TSC, ARCH_SET_CPUID) and are answered here.
//
// All ptrace calls come from the thread that became master (ptrace ties a
// tracee to one tracer thread).
#pragma once

#include <sched.h>
#include <signal.h>
#include <linux/filter.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/user.h>

#include <deque>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "kernel/machine.h"
#include "ptrace/vma.h"
#include "util/page_buffer.h"

namespace detux {

// How a space is stopped, as ptrace sees it.
enum class StopKind {
  kRunning,
  kSyscall,  // at a seccomp stop (a detux call or a refused call)
  kSignal,   // at a signal-delivery stop (fault, fresh clone, after inject)
  kExit,     // at PTRACE_EVENT_EXIT
  kDead,     // reaped
};

struct Proc {
  pid_t pid = 0;
  bool is_master = false;
  StopKind stop = StopKind::kRunning;
  bool call_pending = false;  // resume() answers the call (abi.h)
  uint64_t call_sp = 0;       // its stack pointer: the answer's slot
  user_regs_struct regs{};    // the registers of the current stop, when valid
  bool regs_valid = false;    // regs were read (or written) at this stop
  bool regs_dirty = false;    // regs were changed here and not yet written
  pid_t ref_pid = 0;                  // the frozen snapshot, if any
  int ref_pagemap_fd = -1;            // its /proc/PID/pagemap, once opened
  int ref_mem_fd = -1;                // its /proc/PID/mem, once opened
  std::vector<uint64_t> dirty_accum;  // pages written before it forked
  std::vector<MemRange> remapped;     // zero-mapped since the snapshot
  uint64_t tsc = 0;                   // emulated time stamp counter
  int pagemap_fd = -1;
  int maps_fd = -1;
  bool loading = false;  // a new program image, not yet confined (exec.cc)
  uint64_t gadget = 0;   // its `syscall; int3` (libdetux's detux_gadget)
  bool pinned = false;  // kept on the master's CPU while the supervisor works on it
  int pinned_cpu = -1;  // that CPU
  cpu_set_t affinity{}; // its own affinity (its creator's), restored when unpinned
  bool background = false;  // SCHED_IDLE (to_background)
  // A space the master made whose birth is not finished (finish_birth).
  bool birthing = false;
  bool birth_snapshot = false;  // its birth clones its snapshot
  bool start_at_birth = false;  // resumed while birthing: start it at the end
  pid_t birth_pgid = 0;         // the group it was told to join
  uint64_t birth_top = 0;       // the master's call's stack pointer at the fork
  MemRange birth_dead{};        // the master's dead stack below it then
  std::vector<MemRange> birth_own;  // DET_OWN's pages, owned when the birth ends
};

inline constexpr long kPtraceOptions = PTRACE_O_EXITKILL | PTRACE_O_TRACESECCOMP |
                                       PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK |
                                       PTRACE_O_TRACEEXIT;

// `syscall; int3`: what inject() runs a call through.
inline constexpr uint8_t kGadget[3] = {0x0f, 0x05, 0xcc};

// fork() with the child on the caller's CPU only (spawn.cc).
pid_t fork_here(cpu_set_t* mine, bool* pinned);

// Whether a wait status is the ptrace event stop PTRACE_EVENT_<event>.
inline bool is_event(int status, int event) { return (status >> 8) == (SIGTRAP | (event << 8)); }

// The seccomp program every space runs under (confine/filter.h), built once.
const std::vector<sock_filter>& space_filter();
// The mappings of p that meet r, in order (memory.cc).
Result<std::vector<Vma>> vmas_in(Proc* p, MemRange r);
// Once, as the master's machine is made: what every birth needs prepared
// (spawn.cc).
void prepare_births();

// The function a space made by the master runs when first started: it jumps
// back into the dput() that created it.  Set once by the library.
void set_child_entry(void (*entry)());
// The stack pointer of the master's detux call in progress, or 0: what lies
// below it is the supervisor's, and a space the master makes during the call
// gets it zeroed (PtraceMachine::start_clean).  Set by the library.
void set_entry_stack_top(uint64_t sp);
// The supervisor's own memory, which no space needs: its heap and that
// heap's bookkeeping.  Every space made by the master reads zeros there
// (birth.h).  Set by the library.
void set_supervisor_memory(uint64_t start, uint64_t len);
// The handler every space runs for the calls the filter traps (birth.h).
void set_sigsys_handler(void (*handler)(int, siginfo_t*, void*));
// Whether spaces run behind the master in the scheduler (SCHED_IDLE from
// their first start, the default: PtraceMachine::to_background).  Set by
// the library from DETUX_SPACE_SCHED.
void set_spaces_in_background(bool on);

class PtraceMachine final : public Machine {
 public:
  PtraceMachine();
  ~PtraceMachine() override;
  PtraceMachine(const PtraceMachine&) = delete;
  PtraceMachine& operator=(const PtraceMachine&) = delete;

  Proc* master() override { return &master_; }
  void end_of_call() override;
  Result<Proc*> fork_space(Proc* parent, bool snapshot, bool started) override;
  void settle_births() override;
  Status snapshot(Proc* p) override;
  bool has_snapshot(Proc* p) override { return p->ref_pid > 0; }
  void destroy(Proc* p) override;
  Status resume(Proc* p, long result) override;
  Result<StopEvent> next_event(const WaitPolicy& policy) override;
  Status get_regs(Proc* p, det_regs* out) override;
  Status set_regs(Proc* p, const det_regs& in) override;
  Status read(Proc* p, uint64_t addr, void* buf, size_t len) override;
  Status write(Proc* p, uint64_t addr, const void* buf, size_t len) override;
  Status move(Proc* from, uint64_t src, Proc* to, uint64_t dst, size_t len) override;
  Status map_zero(Proc* p, MemRange r, int prot) override;
  Status unmap(Proc* p, MemRange r) override;
  Result<uint64_t> protect(Proc* p, MemRange r, int prot) override;
  Result<std::vector<MemRange>> holes(Proc* p, MemRange r) override;
  Result<std::vector<MemRange>> read_only(Proc* p, MemRange r) override;
  Result<std::vector<uint64_t>> dirty_pages(Proc* p, MemRange r) override;
  Result<std::vector<uint64_t>> populated_pages(Proc* p, MemRange r) override;
  Status read_pages(Proc* p, bool snapshot, std::span<const uint64_t> pages,
                    uint8_t* out) override;
  Status write_pages(Proc* p, std::span<const uint64_t> pages,
                     const uint8_t* data) override;
  Result<std::vector<uint8_t>> unchanged_since_snapshot(
      Proc* parent, Proc* child, std::span<const uint64_t> pages) override;
  bool in_place(Proc* p, std::span<const uint64_t> pages) override;
  Status copy_pages(Proc* from, Proc* to, std::span<const uint64_t> pages) override;
  Status take_pages(Proc* child, Proc* parent, std::span<const uint64_t> pages) override;
  Status own_pages(Proc* p, std::span<const MemRange> ranges) override;
  Status confine_born(Proc* p, uint64_t scratch, size_t len) override;
  Result<Proc*> exec_space(std::span<const uint8_t> image, const std::vector<std::string>& argv,
                           const std::vector<std::string>& envp) override;

 private:
  Result<pid_t> fork_traced(void (*birth)(void*), void* plan, long options,
                            cpu_set_t* mine, bool* pinned);
  Result<Proc*> spawn_from_master(bool snapshot, bool started);
  Status finish_birth(Proc* p);
  Status own_now(Proc* p, std::span<const MemRange> ranges);
  bool group_has_members(const Proc* except = nullptr) const;
  Status start_clean(Proc* p);
  Result<MemRange> stack_below(uint64_t top);  // memory.cc
  void set_ref(Proc* p, pid_t ref);
  void drop_ref(Proc* p);
  void forget_ref(Proc* p);
  Result<pid_t> inject_clone(Proc* p);
  // At `gadget` (default: libdetux's) there must be `syscall; int3`.
  Result<long> inject(Proc* p, long nr, const long (&args)[6],
                      pid_t* forked = nullptr, uint64_t gadget = 0);
  // exec.cc
  Status prepare_image(Proc* p);
  bool load_call(Proc* p);
  Status fetch_regs(Proc* p);
  Status record_dirty_before_fork(Proc* p);
  Proc* adopt(pid_t pid, const Proc& parent);
  bool decode(pid_t pid, int status, StopEvent* ev);
  bool decode_signal(Proc* p, StopEvent* ev);
  bool emulate_insn(Proc* p);
  bool answer_query(Proc* p);
  Result<pid_t> wait_pid(pid_t pid, int* status);
  void kill_and_reap(pid_t pid);
  void kill_later(pid_t pid, StopKind stop);
  void reap_graveyard();
  void serve();
  void pin(Proc* p);
  void unpin(Proc* p);
  void to_background(Proc* p);
  // For its lifetime, a SCHED_IDLE space runs at normal priority.
  class InForeground {
   public:
    explicit InForeground(Proc* p);
    ~InForeground();
    InForeground(const InForeground&) = delete;
    InForeground& operator=(const InForeground&) = delete;

   private:
    Proc* p_;
  };

  Proc master_;
  std::map<pid_t, std::unique_ptr<Proc>> procs_;
  std::map<pid_t, Proc*> refs_;  // snapshot pid -> its owner
  pid_t pgid_ = 0;               // the process group all spaces share
  std::vector<pid_t> graveyard_; // killed, not yet reaped
  std::vector<Proc*> births_;    // made by the master, birth not finished
  bool release_births_ = false;  // the fork under way: its birth is not waited for
  std::deque<StopEvent> pending_;  // stops found early, for next_event()
  bool serving_ = false;         // inside a master call that serves spaces
  bool cpuid_off_ = false;       // the master thread faults on cpuid meanwhile
  // Scratch for pagemap entries (memory.cc): 64 KiB, allocated by the
  // constructor on the supervisor's heap, which no space sees (a static
  // buffer would hand every space the last physical frame numbers read).
  std::vector<uint64_t> pagemap_buf_ = std::vector<uint64_t>(8192);
  // Pages on their way between two processes (memory.cc, copy_pages): one
  // MiB on the same heap, kept for the master's life, because on a PVM
  // guest the kernel's first store into each page of a buffer costs ~7 us
  // and every later one ~0.6 us.
  static constexpr size_t kStagingPages = 256;
  PageBuffer staging_ = page_buffer(kStagingPages * 4096);
  sigset_t saved_mask_{};        // the program's signal mask, restored after
};

}  // namespace detux
