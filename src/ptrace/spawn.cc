// spawn.cc: making a space out of the master (the master's side of birth.h).
//
// The master forks itself (fork_traced); the child confines itself and
// stops at its kOpBirth call (birth.h); finish_birth() takes it from there:
// it records the snapshot the child cloned, zeroes the supervisor's dead
// stack frames in the child (start_clean) and, for a space already started,
// resumes it.  A dfork does not wait for that: the master finishes the
// birth at its next call, so in a burst of dforks each child sets itself up
// on another CPU while the master forks the next (settle_births).
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include "confine/cpuid.h"
#include "confine/filter.h"
#include "ptrace/birth.h"
#include "ptrace/ptrace_machine.h"

namespace detux {

namespace {

sock_fprog g_fprog;
// The space filter where a space still sees it after its birth drops the
// supervisor's heap (which holds space_filter()'s vector).
sock_filter g_filter[BPF_MAXINSNS];
BirthPlan g_plan;
uint64_t g_entry_top = 0;  // set_entry_stack_top

}  // namespace

const std::vector<sock_filter>& space_filter() {
  static const std::vector<sock_filter> f = confine::build_space_filter();
  return f;
}

void prepare_births() {
  prepare_master_mappings();
  g_plan.tid_offset = find_tid_offset();
}

void set_child_entry(void (*entry)()) { g_plan.entry = entry; }
void set_sigsys_handler(void (*handler)(int, siginfo_t*, void*)) { g_plan.sigsys = handler; }
void set_entry_stack_top(uint64_t sp) { g_entry_top = sp; }
void set_supervisor_memory(uint64_t start, uint64_t len) {
  g_plan.hidden_start = start;
  g_plan.hidden_len = len;
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
  g_plan.cpuid_faults = confine::cpuid_faulting_supported();
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
  p->stop = StopKind::kSyscall;
  p->call_pending = true;  // the kOpBirth call; its result is ignored
  if (!start_clean(p).ok()) return failed();  // dead, as the caller reports it
  pgid_ = group;
  if (ref > 0) set_ref(p, ref);
  if (!p->birth_own.empty()) {  // a hint: a failure only costs the faults
    (void)own_now(p, p->birth_own);
    p->birth_own.clear();
  }
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
  static const int vectors = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx") ? 1 : 0;
  user_regs_struct& r = p->regs;
  r.rip = reinterpret_cast<uint64_t>(detux_space_entry);
  r.rsp = top;
  r.rdi = reinterpret_cast<uint64_t>(g_plan.entry);
  r.rsi = static_cast<uint64_t>(vectors);
  r.eflags = 0x202;  // IF and the always-set bit
  p->regs_dirty = true;
  return ok_status();
}

}  // namespace detux
