// process.cc: making, stopping, resuming and killing spaces with ptrace.
//
// Stops are decoded into StopEvents here; everything a space cannot see
// (external signals, emulated rdtsc/cpuid) is handled and hidden here.
#include <errno.h>
#include <asm/prctl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/auxv.h>
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
#include "confine/filter.h"
#include "ptrace/birth.h"
#include "ptrace/ptrace_machine.h"

namespace detux {

namespace {

constexpr uint64_t kTscStart = 1'000'000'000ULL;

uint64_t gadget_addr() { return reinterpret_cast<uint64_t>(&detux_gadget); }

sock_fprog g_fprog;
// The space filter where a space still sees it after its birth drops the
// supervisor's heap (which holds space_filter()'s vector).
sock_filter g_filter[BPF_MAXINSNS];
BirthPlan g_plan;
uint64_t g_entry_top = 0;  // set_entry_stack_top
bool g_background = true;  // set_spaces_in_background

bool is_event(int status, int event) { return (status >> 8) == (SIGTRAP | (event << 8)); }

}  // namespace

const std::vector<sock_filter>& space_filter() {
  static const std::vector<sock_filter> f = confine::build_space_filter();
  return f;
}

PtraceMachine::PtraceMachine() {
  master_.pid = getpid();
  master_.is_master = true;
  prepare_master_mappings();
  g_plan.tid_offset = find_tid_offset();
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
  cpuid_off_ = syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) == 0;
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

void set_child_entry(void (*entry)()) { g_plan.entry = entry; }
void set_sigsys_handler(void (*handler)(int, siginfo_t*, void*)) { g_plan.sigsys = handler; }
void set_spaces_in_background(bool on) { g_background = on; }
void set_entry_stack_top(uint64_t sp) { g_entry_top = sp; }
void set_supervisor_memory(uint64_t heap, uint64_t heap_len, uint64_t books, uint64_t books_len) {
  g_plan.hidden_start = heap;
  g_plan.hidden_len = heap_len;
  g_plan.books_start = books;
  g_plan.books_len = books_len;
}

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
    int st;
    while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(st) || WIFSIGNALED(st)) return;
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
  sched_param none{};
  sched_setscheduler(p->pid, SCHED_IDLE, &none);
  p->background = true;
}

// An injection makes the space run a system call while the master waits for
// it, stop by stop (seccomp, clone event, int3).  At SCHED_IDLE each stop
// first waited for the leaves computing on that CPU to yield it (0.15-0.4 ms
// a stop measured under load, see the README), so for the injection the
// space runs at normal priority: qsort 1M at N = 2, whose inner spaces fork
// their leaves this way, 0.060-0.063 -> 0.055-0.061 s (4 alternating pairs).
PtraceMachine::InForeground::InForeground(Proc* p) : p_(p->background ? p : nullptr) {
  sched_param none{};
  if (p_) sched_setscheduler(p_->pid, SCHED_OTHER, &none);
}

PtraceMachine::InForeground::~InForeground() {
  sched_param none{};
  if (p_) sched_setscheduler(p_->pid, SCHED_IDLE, &none);
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

// ---- Space creation ---------------------------------------------------------

// fork(), the child born on the master's CPU and kept there until started
// (see pin()): the master's own affinity is narrowed for the fork and then
// restored.  *mine gets that affinity; *pinned says whether the child is.
pid_t fork_here(cpu_set_t* mine, bool* pinned) {
  cpu_set_t one;
  CPU_ZERO(&one);
  int cpu = sched_getcpu();
  CPU_SET(cpu < 0 ? 0 : cpu, &one);
  *pinned = sched_getaffinity(0, sizeof *mine, mine) == 0 &&
            sched_setaffinity(0, sizeof one, &one) == 0;
  pid_t pid = fork();
  if (pid != 0 && *pinned) sched_setaffinity(0, sizeof *mine, mine);
  return pid;
}

// fork_here(), the child running `birth` (which asks to be traced and stops
// with SIGSTOP), then `options` and a PTRACE_CONT: the child runs on, traced.
Result<pid_t> PtraceMachine::fork_traced(void (*birth)(void*), void* plan,
                                         long options, cpu_set_t* mine, bool* pinned) {
  pid_t pid = fork_here(mine, pinned);
  if (pid == 0) birth(plan);  // never returns
  if (pid < 0) return Err{-errno};
  int st;
  DETUX_TRY(wait_pid(pid, &st));
  // A birth the master does not wait for runs on any CPU (spawn_from_master).
  if (*pinned && release_births_) *pinned = sched_setaffinity(pid, sizeof *mine, mine) != 0;
  if (!WIFSTOPPED(st) || WSTOPSIG(st) != SIGSTOP ||
      ptrace(PTRACE_SETOPTIONS, pid, nullptr, options) != 0 ||
      ptrace(PTRACE_CONT, pid, nullptr, nullptr) != 0) {
    kill_and_reap(pid);
    return Err{-ECHILD};
  }
  return pid;
}

namespace {

// For its lifetime, a fork gives the child the supervisor's heap as zeros
// (MADV_WIPEONFORK) instead of a copy that birth would drop at once: the
// fork copies none of its page-table entries and the birth frees none.
// It matters because the merge buffers keep several MB of that heap
// populated (lu 2048^2: 8.5 MB, over 2000 entries per fork).  Any other
// fork of the master (the program's own) still copies it.
class SupervisorHeapStaysHome {
 public:
  SupervisorHeapStaysHome(uint64_t start, uint64_t len) : start_(start), len_(len) {
    if (len_) madvise(reinterpret_cast<void*>(start_), len_, MADV_WIPEONFORK);
  }
  ~SupervisorHeapStaysHome() {
    if (len_) madvise(reinterpret_cast<void*>(start_), len_, MADV_KEEPONFORK);
  }
  SupervisorHeapStaysHome(const SupervisorHeapStaysHome&) = delete;
  SupervisorHeapStaysHome& operator=(const SupervisorHeapStaysHome&) = delete;

 private:
  uint64_t start_, len_;
};

}  // namespace

// A space made by the master.  The master forks (fork_traced) and the
// child sets itself up (birth.h) up to its kOpBirth call; finish_birth()
// takes it from there.  When the caller starts the space at once and does
// nothing else with it first (`started`: dfork), the master does not wait
// for the birth: it returns, and finishes it at its next call (the next
// dfork, after forking that one's child).  Meanwhile the birth (the mapping
// walk, the snapshot's clone, the filter) runs on another CPU.
Result<Proc*> PtraceMachine::spawn_from_master(bool snapshot, bool started) {
  DETUX_ASSERT(g_plan.entry != nullptr);
  if (g_fprog.len == 0) {  // the first space: the filter is built and copied once
    auto& f = space_filter();
    DETUX_ASSERT(!f.empty() && f.size() <= BPF_MAXINSNS);
    std::copy(f.begin(), f.end(), g_filter);
    g_fprog.len = static_cast<unsigned short>(f.size());
    g_fprog.filter = g_filter;
    g_plan.filter = &g_fprog;
  }
  g_plan.master_pid = getpid();
  g_plan.pgid = pgid_;
  g_plan.vdso = getauxval(AT_SYSINFO_EHDR);
  g_plan.snapshot = snapshot;
  serve();
  // A birth joins the spaces' process group, which every wait uses.  A space
  // makes the group when there is none (the first, or every space before it
  // reaped), and then its birth is waited for, so that the next one is told
  // the right group.
  release_births_ = started && pgid_ > 0 && group_has_members();
  cpu_set_t mine;
  bool pinned = false;
  Result<pid_t> born = Err{-ECHILD};
  {
    SupervisorHeapStaysHome home(g_plan.hidden_start, g_plan.hidden_len);
    born = fork_traced([](void* plan) { space_birth(*static_cast<BirthPlan*>(plan)); }, &g_plan,
                       kPtraceOptions, &mine, &pinned);
  }
  const bool later = release_births_;
  release_births_ = false;  // exec_space's fork_traced keeps its child pinned
  if (!born.ok()) return Err{born.err()};
  Proc* p = adopt(*born, master_);
  p->pinned = pinned;
  p->pinned_cpu = pinned ? sched_getcpu() : -1;
  p->affinity = mine;
  p->stop = StopKind::kRunning;
  p->birthing = true;
  p->birth_snapshot = snapshot;
  p->birth_top = g_entry_top & ~15ULL;
  p->birth_pgid = g_plan.pgid;
  if (p->birth_top) {
    auto dead = stack_below(p->birth_top);
    if (!dead.ok()) {
      (void)finish_birth(p);
      destroy(p);
      return Err{dead.err()};
    }
    p->birth_dead = *dead;
  }
  if (later) {
    settle_births();  // the one before, which ran while this one was forked
    births_.push_back(p);
    return p;
  }
  if (Status s = finish_birth(p); !s.ok()) {
    destroy(p);
    return Err{s.err()};
  }
  return p;
}

// Whether a space other than `except` is still in the spaces' group (alive,
// or dead and not yet reaped).
bool PtraceMachine::group_has_members(const Proc* except) const {
  if (!graveyard_.empty()) return true;
  for (const auto& [pid, p] : procs_)
    if (p.get() != except && p->stop != StopKind::kDead) return true;
  return false;
}

// Every birth not yet finished, in order.  A birth that failed is reported
// as the space's death by the next next_event().
void PtraceMachine::settle_births() {
  while (!births_.empty()) {
    Proc* p = births_.front();
    if (finish_birth(p).ok()) continue;
    StopEvent gone;
    gone.proc = p;
    gone.kind = StopEvent::kGone;
    gone.signal = SIGKILL;
    pending_.push_back(gone);
  }
}

// The rest of p's birth: the snapshot's clone event (if it takes one), then
// its kOpBirth call, where the supervisor's dead frames are zeroed
// (start_clean).  A space already started is resumed.  On failure (its exit
// code says where) p is dead and so is its snapshot.
Status PtraceMachine::finish_birth(Proc* p) {
  p->birthing = false;
  std::erase(births_, p);
  const pid_t pid = p->pid;
  pid_t ref = 0;
  int st = 0;
  bool ok = wait_pid(pid, &st).ok();
  const bool cloned = is_event(st, PTRACE_EVENT_CLONE) || is_event(st, PTRACE_EVENT_FORK);
  if (ok && p->birth_snapshot && cloned) {
    unsigned long msg = 0;
    ptrace(PTRACE_GETEVENTMSG, pid, nullptr, &msg);
    ref = static_cast<pid_t>(msg);
    int rst;
    ok = wait_pid(ref, &rst).ok() && WIFSTOPPED(rst) &&
         ptrace(PTRACE_CONT, pid, nullptr, nullptr) == 0 && wait_pid(pid, &st).ok();
  }
  auto failed = [&] {
    kill_and_reap(pid);
    if (ref > 0) kill_and_reap(ref);
    p->stop = StopKind::kDead;
    return Err{-ECHILD};
  };
  if (!ok || !is_event(st, PTRACE_EVENT_SECCOMP) || (p->birth_snapshot && ref <= 0)) return failed();
  // A group that emptied (every space in it reaped) while other spaces live
  // in another: only reachable after a failed birth.  Refused.
  const pid_t group = getpgid(pid);
  if (group != p->birth_pgid && p->birth_pgid > 0 && group_has_members(p)) return failed();
  pgid_ = group;
  if (ref > 0) set_ref(p, ref);
  p->stop = StopKind::kSyscall;
  p->call_pending = true;  // the kOpBirth call; its result is ignored
  DETUX_TRY(start_clean(p));
  return p->start_at_birth ? resume(p, 0) : ok_status();
}

// A space made by the master is a copy of the master in the middle of this
// call: below the dput() it returns into lie the supervisor's dead frames
// (pids, wait statuses, clock readings), and the registers hold whatever the
// supervisor last computed.  None of that may reach the program, or a space
// reading below its stack pointer would see different bytes on every run.
// So the dead stack, from its lowest populated page up to the call's stack
// pointer, is zeroed (about 45 KiB in lu's master), and the space enters
// through detux_space_entry, which zeroes the registers before it jumps back
// into dput().  Both as they were at the fork (birth_top, birth_dead): a
// birth may be finished during a later call.
Status PtraceMachine::start_clean(Proc* p) {
  DETUX_TRY(fetch_regs(p));
  const uint64_t top = p->birth_top;  // the call's stack pointer at the fork
  if (top == 0) return ok_status();  // not from a library call (machine tests)
  const MemRange* dead = &p->birth_dead;
  // Written, not dropped: an injected madvise costs two more round trips,
  // which measured slower than the dozen copy-on-write copies (lu 128^2).
  static const uint8_t zeros[1 << 16] = {};
  for (uint64_t at = dead->start; at < dead->end();) {
    size_t n = std::min<uint64_t>(sizeof zeros, dead->end() - at);
    DETUX_TRY(write(p, at, zeros, n));
    at += n;
  }
  static const bool avx = __builtin_cpu_supports("avx");
  user_regs_struct& r = p->regs;
  r.rip = reinterpret_cast<uint64_t>(detux_space_entry);
  r.rsp = top;
  r.rdi = reinterpret_cast<uint64_t>(g_plan.entry);
  r.rsi = avx ? 1 : 0;
  r.eflags = 0x202;  // IF and the always-set bit
  p->regs_dirty = true;
  return ok_status();
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
  // The child continues from the parent's call, which returns DET_CHILD.
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
  if (p->background && p->stop != StopKind::kDead) {
    sched_param none{};
    sched_setscheduler(p->pid, SCHED_OTHER, &none);
  }
  if (p->stop != StopKind::kDead) kill_later(p->pid, p->stop);
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
  if (p->call_pending || p->stop == StopKind::kSyscall) {
    DETUX_TRY(fetch_regs(p));
    // Skip the system call (if at one) and never restart it.
    p->regs.orig_rax = static_cast<unsigned long long>(-1);
    if (p->call_pending) p->regs.rax = static_cast<unsigned long long>(result);
    else p->regs.rax = static_cast<unsigned long long>(-ENOSYS);  // a refused call
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
  // A program still loading runs under the load filter only.
  const unsigned long want_data = p->loading ? abi::kSeccompLoad : abi::kSeccompRefused;
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
    if (WIFEXITED(st) || WIFSIGNALED(st)) {
      p->stop = StopKind::kDead;
      return Err{-ESRCH};
    }
    if (is_event(st, PTRACE_EVENT_SECCOMP)) {
      user_regs_struct now;
      ptrace(PTRACE_GETREGS, p->pid, nullptr, &now);
      unsigned long data = 0;
      ptrace(PTRACE_GETEVENTMSG, p->pid, nullptr, &data);
      bool ours = data == want_data && now.rip == gadget + 2 && static_cast<long>(now.orig_rax) == nr &&
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
    } else if (is_event(st, PTRACE_EVENT_EXIT)) {
      p->stop = StopKind::kExit;
      return Err{-ESRCH};
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
