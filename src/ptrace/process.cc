// process.cc: stopping, resuming, killing and injecting into spaces with
// ptrace, and making a space out of a space (an injected clone).  Making one
// out of the master is spawn.cc, decoding stops is events.cc.
#include <errno.h>
#include <asm/prctl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "abi.h"
#include "confine/cpuid.h"
#include "ptrace/birth.h"
#include "ptrace/ptrace_machine.h"

namespace detux {

namespace {

constexpr uint64_t kTscStart = 1'000'000'000ULL;

uint64_t gadget_addr() { return reinterpret_cast<uint64_t>(&detux_gadget); }

bool g_background = true;  // set_spaces_in_background

// SCHED_IDLE or SCHED_OTHER (priority 0) for a space.  Best effort.
void set_policy(pid_t pid, int policy) {
  sched_param none{};
  sched_setscheduler(pid, policy, &none);
}

}  // namespace

PtraceMachine::PtraceMachine() {
  master_.pid = getpid();
  master_.is_master = true;
  prepare_births();
}

// Every space faults on cpuid, and Linux rewrites an MSR on each switch
// between a thread that does and one that does not: in these VMs that adds
// about 16 us to every round trip between a space and the master.  So while
// the master thread serves spaces within one call it faults on cpuid too
// (supervisor code never executes cpuid; glibc cached the CPU's features at
// start-up), and end_of_call() turns that off before the program runs on.
// SIGCHLD is blocked for the same span, so waits need no mask changes.
void PtraceMachine::serve() {
  if (serving_) return;
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &chld, &saved_mask_);
  cpuid_off_ =
      confine::cpuid_faulting_supported() && syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) == 0;
  serving_ = true;
}

void PtraceMachine::end_of_call() {
  if (!serving_) return;
  if (cpuid_off_) syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
  pthread_sigmask(SIG_SETMASK, &saved_mask_, nullptr);
  serving_ = cpuid_off_ = false;
}

PtraceMachine::~PtraceMachine() {
  for (auto& [pid, p] : procs_) kill_and_reap(pid);
  for (auto& [pid, owner] : refs_) kill_and_reap(pid);
}

void set_spaces_in_background(bool on) { g_background = on; }

Result<pid_t> PtraceMachine::wait_pid(pid_t pid, int* status) {
  for (;;) {
    pid_t r = waitpid(pid, status, __WALL);
    if (r >= 0) return r;
    if (errno != EINTR) return Err{-errno};
  }
}

// Kill without waiting for the death: a dying process tears down its memory
// for a while (milliseconds for large spaces).  A stopped one first loses
// PTRACE_O_TRACEEXIT so that it does not stop again on the way out; one
// already in its exit stop is not woken by SIGKILL and is continued.  The
// zombie is reaped by reap_graveyard() or by the next wait.
void PtraceMachine::kill_later(pid_t pid, StopKind stop) {
  if (pid <= 0) return;
  const bool running = stop == StopKind::kRunning;
  if (!running) ptrace(PTRACE_SETOPTIONS, pid, nullptr, kPtraceOptions & ~PTRACE_O_TRACEEXIT);
  kill(pid, SIGKILL);
  if (running) {  // it will stop once more, at PTRACE_EVENT_EXIT, holding its memory
    int st = 0;
    pid_t w;
    while ((w = waitpid(pid, &st, __WALL)) < 0 && errno == EINTR) {
    }
    if (w < 0 || WIFEXITED(st) || WIFSIGNALED(st)) return;  // gone already
  }
  if (running || stop == StopKind::kExit) ptrace(PTRACE_CONT, pid, nullptr, nullptr);
  graveyard_.push_back(pid);
  reap_graveyard();
}

void PtraceMachine::reap_graveyard() {
  std::erase_if(graveyard_, [](pid_t pid) {
    int st;
    pid_t r = waitpid(pid, &st, __WALL | WNOHANG);
    if (r == pid && WIFSTOPPED(st)) ptrace(PTRACE_CONT, pid, nullptr, nullptr);
    return r < 0 || (r == pid && (WIFEXITED(st) || WIFSIGNALED(st)));
  });
}

// While the supervisor works on a stopped space, keep it on the master's CPU:
// every stop and resume is then a same-CPU handoff (a few microseconds)
// instead of a cross-CPU wakeup (70-80 microseconds in these VMs).
void PtraceMachine::pin(Proc* p) {
  int cpu = sched_getcpu();
  if (p->pinned && cpu == p->pinned_cpu) return;
  // A space the program pinned to one CPU itself stays where it was put.
  if (cpu < 0 || CPU_COUNT(&p->affinity) == 1) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (sched_setaffinity(p->pid, sizeof one, &one) == 0) {
    p->pinned = true;
    p->pinned_cpu = cpu;
  }
}

// The master does the supervisor's work (forks, merges, teardown) on one
// CPU, and its spaces compute on all of them, the master's included.  At
// normal priority each runnable space takes as large a share as the master:
// lu 2048^2 keeps up to 64 children runnable, so on 2 CPUs the master got
// about 1/33 of its CPU, and a fork of it (0.15 ms of CPU) took 1.4 ms of
// wall time, most of it waiting to run again.  The whole program then waited
// on the master while the CPUs stood idle 40 % of the time.  So a space runs
// SCHED_IDLE from its first start: whenever no normal task wants its CPU,
// and the master preempts it at once.  Not earlier: its birth (and an exec'd
// program's loading) is work the master waits for.  The cost: spaces also
// yield to every other normal task in their scheduling group (with
// autogroup, the same session), so a CPU-bound program started beside them
// slows them down; DETUX_SPACE_SCHED=normal in the master's environment
// turns this off.  A clone injected into a space is born at the normal
// priority its creator had for the injection (InForeground) and goes to the
// background at its first resume like any space.  Best effort: a space left
// SCHED_OTHER is only slower.
void PtraceMachine::to_background(Proc* p) {
  set_policy(p->pid, SCHED_IDLE);
  p->background = true;
}

// An injection makes the space run a system call while the master waits for
// it, stop by stop (seccomp, clone event, int3).  At SCHED_IDLE each stop
// first waited for the leaves computing on that CPU to yield it (0.15-0.4 ms
// a stop measured under load, see docs/performance.md), so for the injection the
// space runs at normal priority: qsort 1M at N = 2, whose inner spaces fork
// their leaves this way, 0.060-0.063 -> 0.055-0.061 s (4 alternating pairs).
PtraceMachine::InForeground::InForeground(Proc* p) : p_(p->background ? p : nullptr) {
  if (p_) set_policy(p_->pid, SCHED_OTHER);
}

PtraceMachine::InForeground::~InForeground() {
  if (p_) set_policy(p_->pid, SCHED_IDLE);
}

void PtraceMachine::unpin(Proc* p) {
  if (!p->pinned) return;
  sched_setaffinity(p->pid, sizeof p->affinity, &p->affinity);
  p->pinned = false;
}

void PtraceMachine::kill_and_reap(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGKILL);
  // A task in its PTRACE_EVENT_EXIT stop is not woken by SIGKILL: continue it.
  ptrace(PTRACE_CONT, pid, nullptr, nullptr);
  int st;
  for (;;) {
    pid_t r = waitpid(pid, &st, __WALL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return;
    if (WIFEXITED(st) || WIFSIGNALED(st)) return;
    ptrace(PTRACE_CONT, pid, nullptr, nullptr);  // an exit stop: let it die
  }
}

Proc* PtraceMachine::adopt(pid_t pid, const Proc& parent) {
  auto p = std::make_unique<Proc>();
  p->pid = pid;
  p->stop = StopKind::kSignal;
  p->tsc = parent.is_master ? kTscStart : parent.tsc;
  p->gadget = parent.is_master ? gadget_addr() : parent.gadget;
  // A space cannot change its own affinity: it is the creator's, kept here.
  // (A space the master makes gets the affinity fork_here() read.)
  // A clone injected into a space has the Linux affinity its creator had at
  // that moment: pinned to the master's CPU if the injection pinned it.  It
  // is then pinned too, and its first resume gives it its own affinity back
  // (it had run on one CPU for good: placement_test.cc).
  if (!parent.is_master) {
    p->affinity = parent.affinity;
    p->pinned = parent.pinned;
    p->pinned_cpu = parent.pinned_cpu;
    // It also has the normal priority its creator ran at for the injection
    // (InForeground): its first resume puts it in the background.
  }
  Proc* raw = p.get();
  procs_[pid] = std::move(p);
  return raw;
}

Result<Proc*> PtraceMachine::fork_space(Proc* parent, bool snapshot, bool started) {
  if (parent->is_master) return spawn_from_master(snapshot, started);
  DETUX_ASSERT(parent->stop != StopKind::kRunning);
  DETUX_TRY(fetch_regs(parent));
  user_regs_struct at_call = parent->regs;
  DETUX_TRY(record_dirty_before_fork(parent));
  auto child = inject_clone(parent);
  if (!child.ok()) return Err{child.err()};
  Proc* c = adopt(*child, *parent);
  // The child continues from the parent's call, which returns DET_CHILD: in
  // rax, which the stub takes since it is not -ENOSYS (abi.h).  Not in the
  // slot: a Copy or Zero into the child before it starts may cover that.
  c->regs = at_call;
  c->regs.rax = DET_CHILD;
  c->regs.orig_rax = static_cast<unsigned long long>(-1);
  c->regs_dirty = true;
  if (snapshot) {
    Status s = this->snapshot(c);
    if (!s.ok()) {
      destroy(c);
      return Err{s.err()};
    }
  }
  return c;
}

Status PtraceMachine::snapshot(Proc* p) {
  DETUX_ASSERT(!p->is_master);
  drop_ref(p);
  p->dirty_accum.clear();
  p->remapped.clear();
  auto ref = inject_clone(p);
  if (!ref.ok()) return Err{ref.err()};
  set_ref(p, *ref);
  return ok_status();
}

// Kill p's snapshot (if any) and forget it.
void PtraceMachine::drop_ref(Proc* p) {
  if (p->ref_pid > 0) {
    refs_.erase(p->ref_pid);
    kill_later(p->ref_pid, StopKind::kSignal);
  }
  forget_ref(p);
}

void PtraceMachine::forget_ref(Proc* p) {
  if (p->ref_pagemap_fd >= 0) close(p->ref_pagemap_fd);
  if (p->ref_mem_fd >= 0) close(p->ref_mem_fd);
  p->ref_pagemap_fd = p->ref_mem_fd = -1;
  p->ref_pid = 0;
}

void PtraceMachine::set_ref(Proc* p, pid_t ref) {
  DETUX_ASSERT(p->ref_pid <= 0 && p->ref_pagemap_fd < 0 && p->ref_mem_fd < 0);
  p->ref_pid = ref;
  p->dirty_accum.clear();
  p->remapped.clear();
  refs_[ref] = p;
}

// clone(CLONE_PARENT) inside p: the new process is the master's child, traced
// by us, stopped by the SIGSTOP of auto-attach, and never runs until resumed.
Result<pid_t> PtraceMachine::inject_clone(Proc* p) {
  pid_t child = 0;
  const long args[6] = {CLONE_PARENT, 0, 0, 0, 0, 0};
  auto r = inject(p, SYS_clone, args, &child);
  if (!r.ok() || *r < 0 || *r != child) {
    if (child > 0) kill_later(child, StopKind::kRunning);  // it was made: never let it live
    return Err{!r.ok() ? r.err() : *r < 0 ? *r : -ECHILD};
  }
  int st;
  DETUX_TRY(wait_pid(child, &st));
  if (!WIFSTOPPED(st)) return Err{-ECHILD};
  return child;
}

void PtraceMachine::destroy(Proc* p) {
  DETUX_ASSERT(!p->is_master);
  if (p->birthing) (void)finish_birth(p);
  drop_ref(p);
  if (p->pagemap_fd >= 0) close(p->pagemap_fd);
  if (p->maps_fd >= 0) close(p->maps_fd);
  // Dying is not the program's work: a space torn down at SCHED_IDLE holds
  // its pages busy while the master runs, and the master's next huge-page
  // collapse fails on them (heap.cc).
  if (p->background && p->stop != StopKind::kDead) set_policy(p->pid, SCHED_OTHER);
  if (p->stop != StopKind::kDead) kill_later(p->pid, p->stop);
  // A stop found early (a failed birth) must not outlive its Proc.
  std::erase_if(pending_, [p](const StopEvent& e) { return e.proc == p; });
  procs_.erase(p->pid);
}

// ---- Registers, resuming, injecting ---------------------------------------

Status PtraceMachine::fetch_regs(Proc* p) {
  DETUX_ASSERT(!p->birthing);
  if (p->regs_dirty || p->regs_valid) return ok_status();
  if (ptrace(PTRACE_GETREGS, p->pid, nullptr, &p->regs) != 0) return Err{-ESRCH};
  p->regs_valid = true;
  return ok_status();
}

Status PtraceMachine::resume(Proc* p, long result) {
  DETUX_ASSERT(!p->is_master);
  if (p->birthing) {  // finish_birth() starts it
    p->start_at_birth = true;
    return ok_status();
  }
  if (p->stop == StopKind::kDead || p->stop == StopKind::kExit) return Err{-ESRCH};
  if (p->stop == StopKind::kRunning) return ok_status();
  // The answer goes to the slot the stub reads (abi.h); 0 is there already.
  // A slot the space unmapped gets nothing: that space called without the stub.
  if (p->call_pending && result != 0) (void)write(p, p->call_sp, &result, sizeof result);
  // A call at its stop with registers untouched runs on as the unknown
  // number it is; anything else skips the system call and never restarts it.
  const bool runs_on =
      p->call_pending && p->stop == StopKind::kSyscall && !p->regs_valid && !p->regs_dirty;
  if (!runs_on && (p->call_pending || p->stop == StopKind::kSyscall)) {
    DETUX_TRY(fetch_regs(p));
    // orig_rax is -1 already where the parent put registers (set_regs): its
    // rax is the answer then, even to a refused call.
    const bool skipped = p->regs.orig_rax == static_cast<unsigned long long>(-1);
    p->regs.orig_rax = static_cast<unsigned long long>(-1);
    if (p->call_pending) p->regs.rax = static_cast<unsigned long long>(result);
    else if (!skipped) p->regs.rax = static_cast<unsigned long long>(-ENOSYS);  // a refused call
    p->regs_dirty = true;
  }
  if (p->regs_dirty && ptrace(PTRACE_SETREGS, p->pid, nullptr, &p->regs) != 0)
    return Err{-ESRCH};
  p->regs_dirty = false;
  p->regs_valid = false;
  bool answering = p->call_pending;
  p->call_pending = false;
  // A space that gets the answer to its call is woken on this CPU, where the
  // master is about to sleep: its next call then wakes the master locally.
  // Its affinity is restored at once, so the balancer may still move it.
  if (answering) pin(p);
  if (g_background && !p->background) to_background(p);
  long r = ptrace(PTRACE_CONT, p->pid, nullptr, nullptr);
  unpin(p);
  if (r != 0) return Err{-ESRCH};
  p->stop = StopKind::kRunning;
  return ok_status();
}

// Make p execute one system call at the gadget, then put its registers back.
// Every stop on the way is checked: the call that runs is exactly `nr` with
// `args`, whatever the space has done to its own memory.
Result<long> PtraceMachine::inject(Proc* p, long nr, const long (&args)[6], pid_t* forked,
                                   uint64_t gadget) {
  DETUX_TRY(fetch_regs(p));
  if (gadget == 0) gadget = p->gadget;
  // A program still loading runs under the load filter only; one born of an
  // exec keeps it under its own filters, whose strictest action and newest
  // data decide (filter.h), so either mark may come.  The registers below
  // say whether the stop is the injected call.
  auto marked = [](unsigned long data) {
    return data == abi::kSeccompLoad || data == abi::kSeccompRefused;
  };
  // The space may have remapped the gadget's page (Perm on itself): the
  // gadget must still be exactly `syscall; int3`, or nothing is injected.
  uint8_t code[3];
  if (!read(p, gadget, code, sizeof code).ok() || std::memcmp(code, kGadget, 3) != 0)
    return Err{-EPERM};
  serve();
  pin(p);
  InForeground served(p);  // the master waits for each of its stops
  user_regs_struct saved = p->regs;
  user_regs_struct r = saved;
  r.rip = gadget;
  r.rax = nr;
  r.orig_rax = static_cast<unsigned long long>(-1);
  r.rdi = args[0], r.rsi = args[1], r.rdx = args[2], r.r10 = args[3], r.r8 = args[4],
  r.r9 = args[5];
  if (ptrace(PTRACE_SETREGS, p->pid, nullptr, &r) != 0) return Err{-ESRCH};
  long result = -ENOSYS;
  bool done = false;
  int st;
  if (ptrace(PTRACE_CONT, p->pid, nullptr, nullptr) != 0) return Err{-ESRCH};
  while (!done) {
    DETUX_TRY(wait_pid(p->pid, &st));
    if (WIFEXITED(st) || WIFSIGNALED(st) || is_event(st, PTRACE_EVENT_EXIT)) {
      // Killed from outside meanwhile: this was the only report of it, so it
      // is kept for next_event(), or the space's parent would wait forever.
      StopEvent ev;
      if (decode(p->pid, st, &ev)) pending_.push_back(ev);
      return Err{-ESRCH};
    }
    if (is_event(st, PTRACE_EVENT_SECCOMP)) {
      user_regs_struct now;
      ptrace(PTRACE_GETREGS, p->pid, nullptr, &now);
      unsigned long data = 0;
      ptrace(PTRACE_GETEVENTMSG, p->pid, nullptr, &data);
      bool ours = marked(data) && now.rip == gadget + 2 && static_cast<long>(now.orig_rax) == nr &&
                  static_cast<long>(now.rdi) == args[0] && static_cast<long>(now.rsi) == args[1] &&
                  static_cast<long>(now.rdx) == args[2] && static_cast<long>(now.r10) == args[3] &&
                  static_cast<long>(now.r8) == args[4] && static_cast<long>(now.r9) == args[5];
      if (!ours) {  // the space rewrote the gadget: refuse and give up
        now.orig_rax = static_cast<unsigned long long>(-1);
        now.rax = static_cast<unsigned long long>(-EPERM);
        ptrace(PTRACE_SETREGS, p->pid, nullptr, &now);
        result = -EPERM;
      }
    } else if (is_event(st, PTRACE_EVENT_CLONE) || is_event(st, PTRACE_EVENT_FORK)) {
      unsigned long msg = 0;
      ptrace(PTRACE_GETEVENTMSG, p->pid, nullptr, &msg);
      if (forked) *forked = static_cast<pid_t>(msg);
    } else if (WIFSTOPPED(st) && (st >> 16) == 0) {
      user_regs_struct now;
      ptrace(PTRACE_GETREGS, p->pid, nullptr, &now);
      siginfo_t si{};
      ptrace(PTRACE_GETSIGINFO, p->pid, nullptr, &si);
      if (WSTOPSIG(st) == SIGTRAP && now.rip == gadget + 3) {
        if (result != -EPERM) result = static_cast<long>(now.rax);
        done = true;
        break;
      }
      if (si.si_code > 0 || WSTOPSIG(st) == SIGTRAP) {  // a real fault: give up
        result = -EFAULT;
        done = true;
        break;
      }
      // An external signal: suppressed.
    }
    if (ptrace(PTRACE_CONT, p->pid, nullptr, nullptr) != 0) return Err{-ESRCH};
  }
  p->stop = StopKind::kSignal;
  if (ptrace(PTRACE_SETREGS, p->pid, nullptr, &saved) != 0) return Err{-ESRCH};
  p->regs = saved;
  p->regs_dirty = false;
  p->regs_valid = true;
  return result;
}

Status PtraceMachine::get_regs(Proc* p, det_regs* out) {
  DETUX_TRY(fetch_regs(p));
  const user_regs_struct& r = p->regs;
  *out = det_regs{};
  out->rax = r.rax, out->rbx = r.rbx, out->rcx = r.rcx, out->rdx = r.rdx;
  out->rsi = r.rsi, out->rdi = r.rdi, out->rbp = r.rbp, out->rsp = r.rsp;
  out->r8 = r.r8, out->r9 = r.r9, out->r10 = r.r10, out->r11 = r.r11;
  out->r12 = r.r12, out->r13 = r.r13, out->r14 = r.r14, out->r15 = r.r15;
  out->rip = r.rip, out->rflags = r.eflags, out->fs_base = r.fs_base, out->gs_base = r.gs_base;
  if (p->call_pending) out->rax = 0;  // what the pending call will return
  user_fpregs_struct fp;
  if (ptrace(PTRACE_GETFPREGS, p->pid, nullptr, &fp) != 0) return Err{-ESRCH};
  static_assert(sizeof fp == sizeof out->fxsave);
  std::memcpy(out->fxsave, &fp, sizeof fp);
  return ok_status();
}

Status PtraceMachine::set_regs(Proc* p, const det_regs& in) {
  DETUX_TRY(fetch_regs(p));
  constexpr unsigned long long kUserFlags = 0x8d5;  // CF PF AF ZF SF DF OF
  user_regs_struct& r = p->regs;
  r.rax = in.rax, r.rbx = in.rbx, r.rcx = in.rcx, r.rdx = in.rdx;
  r.rsi = in.rsi, r.rdi = in.rdi, r.rbp = in.rbp, r.rsp = in.rsp;
  r.r8 = in.r8, r.r9 = in.r9, r.r10 = in.r10, r.r11 = in.r11;
  r.r12 = in.r12, r.r13 = in.r13, r.r14 = in.r14, r.r15 = in.r15;
  r.rip = in.rip;
  r.eflags = (r.eflags & ~kUserFlags) | (in.rflags & kUserFlags);
  r.fs_base = in.fs_base, r.gs_base = in.gs_base;
  r.orig_rax = static_cast<unsigned long long>(-1);
  // Explicit registers replace the result of whatever call it stopped in.
  p->call_pending = false;
  if (ptrace(PTRACE_SETREGS, p->pid, nullptr, &r) != 0) {
    p->regs_dirty = p->regs_valid = false;
    (void)fetch_regs(p);
    return Err{-EINVAL};  // e.g. a non-canonical fs_base
  }
  p->regs_dirty = false;
  p->regs_valid = true;
  user_fpregs_struct fp;
  std::memcpy(&fp, in.fxsave, sizeof fp);
  if (ptrace(PTRACE_SETFPREGS, p->pid, nullptr, &fp) != 0) return Err{-EINVAL};
  return ok_status();
}

}  // namespace detux
