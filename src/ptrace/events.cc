// events.cc: waiting for spaces and telling why they stopped.
//
// The master thread waits on the spaces' process group.  Without a timeout
// or signals to watch, that is one blocking waitpid().  Otherwise, with
// SIGCHLD blocked, it drains waitpid(WNOHANG) and sleeps in sigtimedwait() on
// SIGCHLD plus the signals the master allowed to interrupt it: every ptrace
// stop of a space sends SIGCHLD to its tracer, so no stop is missed, and a
// short slice bounds the sleep in case another thread consumed the SIGCHLD.
#include <errno.h>
#include <linux/audit.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>

#include "abi.h"
#include "confine/cpuid.h"
#include "ptrace/ptrace_machine.h"

namespace detux {

namespace {

long now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

constexpr uint64_t kTscStep = 1000;

}  // namespace

Result<StopEvent> PtraceMachine::next_event(const WaitPolicy& policy) {
  serve();  // SIGCHLD is blocked from here to the end of the master's call
  settle_births();  // their stops are not the kernel's to see
  if (!pending_.empty()) {
    StopEvent ev = pending_.front();
    pending_.pop_front();
    return ev;
  }
  reap_graveyard();
  sigset_t waitset, old;
  sigemptyset(&waitset);
  sigaddset(&waitset, SIGCHLD);
  if (policy.allowed) {
    for (int s = 1; s < NSIG; ++s)
      if (s != SIGKILL && s != SIGSTOP && sigismember(policy.allowed, s) == 1) sigaddset(&waitset, s);
    pthread_sigmask(SIG_BLOCK, &waitset, &old);
  }
  // With no timeout and no signal to watch, one blocking waitpid is the wait.
  bool plain = policy.timeout_ms <= 0 && !policy.allowed && !policy.poll;
  long deadline = policy.timeout_ms > 0 ? now_ms() + policy.timeout_ms : 0;
  Result<StopEvent> out = Err{-ECHILD};
  for (;;) {
    int st;
    pid_t pid = pgid_ > 0 ? waitpid(-pgid_, &st, __WALL | (plain ? 0 : WNOHANG)) : 0;
    if (pid > 0) {
      StopEvent ev;
      if (decode(pid, st, &ev)) {
        out = ev;
        break;
      }
      continue;
    }
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0 && errno == ECHILD) {
      pgid_ = 0;
      if (procs_.empty()) break;  // nothing can ever stop: -ECHILD
    }
    if (policy.poll) {
      out = Err{-EAGAIN};
      break;
    }
    long slice = 50;
    if (deadline) {
      long left = deadline - now_ms();
      if (left <= 0) {
        out = Err{-ETIMEDOUT};
        break;
      }
      slice = std::min(slice, left);
    }
    timespec ts{slice / 1000, (slice % 1000) * 1000000};
    siginfo_t si;
    int sig = sigtimedwait(&waitset, &si, &ts);
    if (sig > 0 && sig != SIGCHLD) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      end_of_call();  // its handler is the program's code, which may use cpuid
      // Deliver it as usual now that the wait is over.
      syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), sig);
      return Err{-EINTR};
    }
  }
  if (policy.allowed) pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return out;
}

// Turns one wait status into an event; false if there is nothing to report
// (the stop was hidden from the space and it runs on).
bool PtraceMachine::decode(pid_t pid, int st, StopEvent* ev) {
  auto it = procs_.find(pid);
  if (it == procs_.end()) {
    // A snapshot, or a killed space on its way out.  Snapshots stay stopped.
    if (WIFSTOPPED(st) && std::find(graveyard_.begin(), graveyard_.end(), pid) != graveyard_.end())
      ptrace(PTRACE_CONT, pid, nullptr, nullptr);
    if (WIFEXITED(st) || WIFSIGNALED(st)) std::erase(graveyard_, pid);
    if (WIFEXITED(st) || WIFSIGNALED(st)) {
      auto r = refs_.find(pid);
      if (r != refs_.end()) {  // killed from outside: the owner loses it
        forget_ref(r->second);
        refs_.erase(r);
      }
    }
    return false;
  }
  Proc* p = it->second.get();
  ev->proc = p;
  if (WIFEXITED(st) || WIFSIGNALED(st)) {
    p->stop = StopKind::kDead;
    ev->kind = StopEvent::kGone;
    ev->signal = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    ev->exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 0;
    return true;
  }
  DETUX_ASSERT(WIFSTOPPED(st));
  p->regs_dirty = false;
  p->regs_valid = false;  // a new stop
  if (is_event(st, PTRACE_EVENT_SECCOMP)) {
    // One ptrace call for the filter's mark, the number and the arguments;
    // the registers are read only if something needs them (abi.h).
    __ptrace_syscall_info info{};
    if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof info, &info) <= 0 ||
        info.op != PTRACE_SYSCALL_INFO_SECCOMP)
      return false;
    p->stop = StopKind::kSyscall;
    const unsigned long data = info.seccomp.ret_data;
    const auto& a = info.seccomp.args;
    // Only the detux call itself is one (a program's own stacked filter
    // could mark another call so; it is refused instead).
    if (data == abi::kSeccompCall && static_cast<long>(info.seccomp.nr) == abi::kSyscallNr &&
        info.arch == AUDIT_ARCH_X86_64) {
      if (p->loading) p->gadget = a[5];  // kOpBirth names it (inject checks it)
      p->loading = false;  // the space filter is on: it is confined now
      p->call_pending = true;
      p->call_sp = info.stack_pointer;
      ev->kind = StopEvent::kCall;
      ev->op = static_cast<long>(a[0]);
      ev->child = a[1];
      ev->flags = static_cast<long>(a[2]);
      ev->addr = a[3], ev->size = a[4], ev->child_addr = a[5];
      return true;
    }
    if (fetch_regs(p).ok() == false) return false;
    const user_regs_struct& r = p->regs;
    if (data == abi::kSeccompRefused && answer_query(p)) return false;
    if (data == abi::kSeccompLoad && p->loading && load_call(p)) return false;
    ev->kind = StopEvent::kFault;
    ev->fault = DET_FAULT_SYSCALL;
    ev->syscall = static_cast<int64_t>(r.orig_rax & 0xffffffffULL);
    if (data == abi::kSeccompBadArch) ev->syscall |= 1LL << 32;
    return true;
  }
  if (is_event(st, PTRACE_EVENT_EXIT)) {
    unsigned long msg = 0;
    ptrace(PTRACE_GETEVENTMSG, pid, nullptr, &msg);
    int status = static_cast<int>(msg);
    p->stop = StopKind::kExit;
    if (WIFSIGNALED(status)) {
      ev->kind = StopEvent::kFault;
      ev->fault = DET_FAULT_SIGNAL;
      ev->signal = WTERMSIG(status);
    } else {
      ev->kind = StopEvent::kExited;
      ev->exit_code = WEXITSTATUS(status);
    }
    return true;
  }
  if ((st >> 16) != 0) {  // another ptrace event: nothing for the space
    ptrace(PTRACE_CONT, pid, nullptr, nullptr);
    return false;
  }
  p->stop = StopKind::kSignal;
  return decode_signal(p, ev);
}

bool PtraceMachine::decode_signal(Proc* p, StopEvent* ev) {
  siginfo_t si{};
  if (ptrace(PTRACE_GETSIGINFO, p->pid, nullptr, &si) != 0) return false;
  // Sent by a process (kill, tgkill, sigqueue): never seen by the space.
  if (si.si_code <= 0) {
    p->stop = StopKind::kRunning;
    ptrace(PTRACE_CONT, p->pid, nullptr, nullptr);
    return false;
  }
  // A call the filter sends back to the space (SECCOMP_RET_TRAP): the
  // runtime's handler in the space emulates it.  Only the kernel makes this
  // si_code; a process cannot forge it for another process.
  if (si.si_signo == SIGSYS && si.si_code == 1 /* SYS_SECCOMP */) {
    p->stop = StopKind::kRunning;
    ptrace(PTRACE_CONT, p->pid, nullptr, reinterpret_cast<void*>(SIGSYS));
    return false;
  }
  if (si.si_signo == SIGSEGV && si.si_code == SI_KERNEL && emulate_insn(p)) {
    p->stop = StopKind::kRunning;
    ptrace(PTRACE_CONT, p->pid, nullptr, nullptr);
    return false;
  }
  ev->kind = StopEvent::kFault;
  ev->fault = DET_FAULT_SIGNAL;
  ev->signal = si.si_signo;
  ev->fault_addr = reinterpret_cast<uint64_t>(si.si_addr);
  return true;
}

// One refused call is answered instead of faulting: sigaltstack(NULL, &old),
// a pure query of the space's own state, which AddressSanitizer makes before
// every noreturn call.  The answer is fixed: no alternate stack.
bool PtraceMachine::answer_query(Proc* p) {
  user_regs_struct& r = p->regs;
  if (r.orig_rax != SYS_sigaltstack || r.rdi != 0) return false;
  if (r.rsi != 0) {
    stack_t none{};
    none.ss_flags = SS_DISABLE;
    if (!write(p, r.rsi, &none, sizeof none).ok()) return false;
  }
  r.orig_rax = static_cast<unsigned long long>(-1);
  r.rax = 0;
  if (ptrace(PTRACE_SETREGS, p->pid, nullptr, &r) != 0) return false;
  p->stop = StopKind::kRunning;
  ptrace(PTRACE_CONT, p->pid, nullptr, nullptr);
  return true;
}

// rdtsc, rdtscp and cpuid fault in a space; answer them deterministically.
bool PtraceMachine::emulate_insn(Proc* p) {
  if (!fetch_regs(p).ok()) return false;
  uint8_t code[3] = {};
  if (!read(p, p->regs.rip, code, sizeof code).ok()) return false;
  size_t len = 0;
  user_regs_struct& r = p->regs;
  switch (confine::decode_trap_insn(code, sizeof code, &len)) {
    case confine::TrapInsn::Rdtsc:
    case confine::TrapInsn::Rdtscp: {
      p->tsc += kTscStep;
      r.rax = p->tsc & 0xffffffffULL;
      r.rdx = p->tsc >> 32;
      if (len == 3) r.rcx = 0;  // rdtscp: IA32_TSC_AUX, "cpu 0"
      break;
    }
    case confine::TrapInsn::Cpuid: {
      auto a = confine::cpuid_answer(static_cast<uint32_t>(r.rax), static_cast<uint32_t>(r.rcx));
      r.rax = a.eax, r.rbx = a.ebx, r.rcx = a.ecx, r.rdx = a.edx;
      break;
    }
    default:
      return false;
  }
  r.rip += len;
  return ptrace(PTRACE_SETREGS, p->pid, nullptr, &r) == 0;
}

}  // namespace detux
