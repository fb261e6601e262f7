// kernel.cc: calls, waiting and stops (see kernel.h).
#include "kernel/kernel.h"

#include <errno.h>

#include <cmath>

#include "abi.h"

namespace detux {

namespace {

constexpr unsigned long kProt = DET_PROT_READ | DET_PROT_WRITE | DET_PROT_EXEC;
constexpr unsigned long kAllFlags = DET_REGS | DET_COPY | DET_ZERO | DET_SNAP | DET_MERGE |
                                    DET_PERM | DET_START | DET_KILL | DET_STATUS | DET_FORK |
                                    DET_DONT_WAIT | DET_OWN | kProt;
constexpr long kDefaultQuota = 8192;

long isqrt(long v) {
  long r = static_cast<long>(std::sqrt(static_cast<double>(v)));
  while (r * r > v) --r;
  while ((r + 1) * (r + 1) <= v) ++r;
  return r;
}

}  // namespace

Kernel::Kernel(Machine& machine) : m_(machine) {
  root_.proc = m_.master();
  root_.is_master = true;
  root_.path = "";
  root_.run = Space::Run::kRunning;
  root_.quota_free = kDefaultQuota;
  by_proc_[root_.proc] = &root_;
}

Kernel::~Kernel() { forget_subtree(root_); }

void Kernel::set_allowed_signals(const sigset_t* set) {
  have_allowed_ = set != nullptr;
  if (set) allowed_ = *set;
}

Status Kernel::set_limits(const det_limits& l) {
  if (!root_.children.empty()) return Err{-EBUSY};
  if (l.max_spaces < 0 || l.max_space_bytes < 0) return Err{-EINVAL};
  if (l.max_spaces) root_.quota_free = l.max_spaces;
  if (l.max_space_bytes) max_space_bytes_ = l.max_space_bytes;
  return ok_status();
}

namespace {

// A Put that makes a child with its snapshot and starts it, and does
// nothing else to it but DET_OWN's hint (dfork, det_thread_start_writing):
// the machine need not finish making it before the call returns
// (Machine::fork_space).
bool makes_started_space(const Call& c) {
  const unsigned long f = c.flags;
  return c.op == abi::kOpPut && (f & DET_SNAP) && (f & DET_START) &&
         !(f & (DET_COPY | DET_ZERO | DET_PERM | DET_REGS | DET_MERGE | DET_KILL | DET_STATUS));
}

}  // namespace

long Kernel::master_call(const Call& c) {
  if (!makes_started_space(c)) m_.settle_births();
  long r = call(root_, c);
  m_.end_of_call();
  DETUX_ASSERT(r != kBlocked);
  return r;
}

// ---- Calls ----------------------------------------------------------------

long Kernel::call(Space& caller, const Call& c) {
  bool known = c.op == abi::kOpPut || c.op == abi::kOpGet || c.op == abi::kOpRet ||
               (c.op == abi::kOpExec && !caller.is_master);
  if (!known || (c.flags & ~kAllFlags)) {
    if (caller.is_master) return -EINVAL;
    fault(caller, DET_FAULT_BADCALL, 0, 0, 0);
    return kBlocked;
  }
  if ((c.flags & DET_DONT_WAIT) && !caller.is_master) return -EPERM;
  long r;
  if (c.op == abi::kOpRet) r = ret(caller);
  else if (c.op == abi::kOpExec) r = c.flags ? -EINVAL : exec(caller, c);
  else if (c.child > DET_CHILD_MAX) r = -EINVAL;
  else r = c.op == abi::kOpPut ? put(caller, c) : get(caller, c);
  if (trace_ && c.op != abi::kOpRet) log_call(caller, c, r);
  return r;
}

long Kernel::ret(Space& caller) {
  if (caller.is_master) return 0;
  caller.run = Space::Run::kStopped;
  caller.status.state = DET_S_STOPPED;
  on_stop(caller);
  return kBlocked;
}

long Kernel::put(Space& caller, const Call& c) {
  unsigned long f = c.flags;
  if (f & DET_STATUS) return -EINVAL;
  if ((f & DET_MERGE) && (f & (DET_COPY | DET_ZERO | DET_PERM | DET_REGS))) return -EINVAL;
  if ((f & DET_MERGE) && c.child_addr && c.child_addr != c.addr) return -EINVAL;
  if ((f & DET_COPY) && (f & DET_ZERO)) return -EINVAL;
  if ((f & DET_REGS) && (f & (DET_COPY | DET_ZERO | DET_PERM))) return -EINVAL;
  if ((f & DET_OWN) && (f & (DET_REGS | DET_COPY | DET_ZERO | DET_PERM | DET_MERGE)))
    return -EINVAL;
  if (f & DET_KILL) {
    if (f & ~(DET_KILL | DET_DONT_WAIT)) return -EINVAL;
    kill_child(caller, c.child);
    return 0;
  }
  Space* ch = caller.child(c.child);
  if (ch && (f & DET_FORK)) return -EEXIST;
  if (!ch) {
    // DET_OWN's range is checked before the child is made, in the caller it
    // will copy.
    std::vector<MemRange> own;
    if (f & DET_OWN) {
      auto checked = checked_own(caller, caller, c);
      if (!checked.ok()) return checked.err();
      own = std::move(*checked);
    }
    // A snapshot of the new child's unchanged memory is taken as it is made
    // (one step cheaper); a Copy, Zero or Perm first means it comes after.
    bool snap_now = (f & DET_SNAP) && !(f & (DET_COPY | DET_ZERO | DET_PERM));
    auto made = create_child(caller, c.child, snap_now, makes_started_space(c));
    if (!made.ok()) return made.err();
    ch = *made;
    Call rest = c;
    if (snap_now) rest.flags &= ~DET_SNAP;
    return do_put(caller, *ch, rest, &own);  // a new child is stopped
  }
  return act_on_stopped(caller, *ch, c);
}

long Kernel::get(Space& caller, const Call& c) {
  unsigned long f = c.flags;
  if (f & (DET_SNAP | DET_START | DET_KILL | DET_FORK | DET_OWN)) return -EINVAL;
  if (f & (DET_ZERO | DET_PERM)) {  // on the caller itself; no child involved
    if (f & ~(DET_ZERO | DET_PERM | kProt | DET_DONT_WAIT)) return -EINVAL;
    return (f & DET_ZERO) ? zero_range(caller, c.addr, c.size, f)
                          : perm_range(caller, c.addr, c.size, f);
  }
  if ((f & DET_COPY) && (f & DET_MERGE)) return -EINVAL;
  if ((f & DET_STATUS) && (f & ~(DET_STATUS | DET_DONT_WAIT))) return -EINVAL;
  if ((f & DET_REGS) && (f & (DET_COPY | DET_MERGE))) return -EINVAL;
  Space* ch = caller.child(c.child);
  if (!ch) {
    if (!(f & DET_STATUS)) return -ESRCH;
    if (c.size < sizeof(det_status)) return -EINVAL;
    det_status st{};
    st.state = DET_S_ABSENT;
    return m_.write(caller.proc, c.addr, &st, sizeof st).ok() ? 0 : -EFAULT;
  }
  return act_on_stopped(caller, *ch, c);
}

// Put and Get act only on a stopped child: the master waits here for it; a
// space is left stopped with the call pending (finished in on_stop).
long Kernel::act_on_stopped(Space& caller, Space& child, const Call& c) {
  if (!child.stopped()) {
    if (!caller.is_master) {
      caller.pending = c;
      return kBlocked;
    }
    if (c.flags & DET_DONT_WAIT) {
      serve_stopped();  // what stopped meanwhile: this child, perhaps
    } else if (long w = wait_stopped(child); w < 0) {
      return w;
    }
  }
  if (!child.stopped()) {  // polled, and still running
    if (!(c.flags & DET_STATUS)) return -EAGAIN;
    if (c.size < sizeof(det_status)) return -EINVAL;
    det_status st = child.status;
    st.state = DET_S_RUNNING;
    return m_.write(caller.proc, c.addr, &st, sizeof st).ok() ? 0 : -EFAULT;
  }
  const bool status_only = c.op == abi::kOpGet && !(c.flags & ~(DET_STATUS | DET_DONT_WAIT));
  if (child.gone && !status_only) return -ESRCH;
  return c.op == abi::kOpPut ? do_put(caller, child, c) : do_get(caller, child, c);
}

// `own`: DET_OWN's pieces, already checked (for a child made by this very
// call); else they are found and checked here, before anything is done.
long Kernel::do_put(Space& caller, Space& child, const Call& c, const std::vector<MemRange>* own) {
  unsigned long f = c.flags;
  std::vector<MemRange> spans;
  if ((f & DET_OWN) && !own) {
    auto checked = checked_own(caller, child, c);
    if (!checked.ok()) return checked.err();
    spans = std::move(*checked);
    own = &spans;
  }
  if (f & DET_REGS) {
    det_regs regs;
    if (c.size != sizeof regs) return -EINVAL;
    if (!m_.read(caller.proc, c.addr, &regs, sizeof regs).ok()) return -EFAULT;
    if (child.run == Space::Run::kExited) return -ESRCH;
    Status s = m_.set_regs(child.proc, regs);
    if (!s.ok()) return s.err();
  }
  long r = 0;
  if (f & DET_MERGE) r = refresh_range(caller, child, c.addr, c.size);
  else if (f & DET_COPY) r = copy_range(caller, c.addr, child, c.child_addr, c.size);
  else if (f & DET_ZERO) r = zero_range(child, c.child_addr, c.size, f);
  else if (f & DET_PERM) r = perm_range(child, c.child_addr, c.size, f);
  if (r < 0) return r;
  if (f & DET_SNAP) {
    if (child.run == Space::Run::kExited) return -ESRCH;
    Status s = m_.snapshot(child.proc);
    if (!s.ok()) return s.err();
    child.status.conflict = 0;
    child.status.conflict_addr = 0;
    if (!(f & DET_OWN)) child.refreshed_dirty.clear();
  }
  if (f & DET_OWN) {
    if (child.run == Space::Run::kExited) return -ESRCH;
    if (long o = own_range(child, c, *own); o < 0) return o;
  }
  if (f & DET_START) {
    if (child.run == Space::Run::kExited) return -ESRCH;
    Status s = m_.resume(child.proc, 0);
    if (!s.ok()) return s.err();
    child.run = Space::Run::kRunning;
    child.status = det_status{};
    child.status.state = DET_S_RUNNING;
  }
  return 0;
}

long Kernel::do_get(Space& caller, Space& child, const Call& c) {
  unsigned long f = c.flags;
  if (f & DET_REGS) {
    det_regs regs;
    if (c.size != sizeof regs) return -EINVAL;
    Status s = m_.get_regs(child.proc, &regs);
    if (!s.ok()) return s.err();
    if (!m_.write(caller.proc, c.addr, &regs, sizeof regs).ok()) return -EFAULT;
  }
  if (f & DET_COPY) {
    long r = copy_range(child, c.child_addr, caller, c.addr, c.size);
    if (r < 0) return r;
  }
  if (f & DET_MERGE) {
    if (c.child_addr != 0 && c.child_addr != c.addr) return -EINVAL;
    long r = merge_range(caller, child, c.addr, c.size);
    if (r < 0) return r;
  }
  if (f & DET_STATUS) {
    if (c.size < sizeof(det_status)) return -EINVAL;
    if (!m_.write(caller.proc, c.addr, &child.status, sizeof child.status).ok()) return -EFAULT;
  }
  return 0;
}

// ---- The tree ---------------------------------------------------------------

Result<Space*> Kernel::create_child(Space& caller, det_child_t id, bool snapshot, bool started) {
  if (caller.quota_free < 1) return Err{-DET_ELIMIT};
  long give = isqrt(caller.quota_free - 1);
  auto proc = m_.fork_space(caller.proc, snapshot, started);
  if (!proc.ok()) return Err{proc.err()};
  auto s = std::make_unique<Space>();
  s->proc = *proc;
  s->parent = &caller;
  s->id = id;
  s->path = caller.path + "/" + std::to_string(id);
  s->quota_free = s->quota_given = give;
  s->bytes_gained = caller.is_master ? 0 : caller.bytes_gained;
  s->run = Space::Run::kStopped;
  s->status.state = DET_S_STOPPED;
  caller.quota_free -= 1 + give;
  Space* raw = s.get();
  by_proc_[raw->proc] = raw;
  caller.children[id] = std::move(s);
  return raw;
}

void Kernel::kill_child(Space& parent, det_child_t id) {
  Space* ch = parent.child(id);
  if (!ch) return;
  forget_subtree(*ch);
  by_proc_.erase(ch->proc);
  m_.destroy(ch->proc);
  parent.quota_free += 1 + ch->quota_given;
  parent.children.erase(id);
}

// Kill every descendant of s (not s itself).
void Kernel::forget_subtree(Space& s) {
  for (auto& [id, ch] : s.children) {
    forget_subtree(*ch);
    by_proc_.erase(ch->proc);
    m_.destroy(ch->proc);
    s.quota_free += 1 + ch->quota_given;
  }
  s.children.clear();
}

void Kernel::serve_stopped() {
  WaitPolicy pol;
  pol.poll = true;
  // A bounded number: busy spaces could otherwise keep a poll from returning.
  int n = 0;
  for (auto ev = m_.next_event(pol); ev.ok(); ev = m_.next_event(pol)) {
    handle(*ev);
    if (++n == 256) break;
  }
}

long Kernel::wait_stopped(Space& child) {
  WaitPolicy pol{timeout_ms_, have_allowed_ ? &allowed_ : nullptr};
  while (!child.stopped()) {
    auto ev = m_.next_event(pol);
    if (!ev.ok()) return ev.err();
    handle(*ev);
  }
  return 0;
}

// ---- Stops ------------------------------------------------------------------

void Kernel::handle(const StopEvent& ev) {
  auto it = by_proc_.find(ev.proc);
  DETUX_ASSERT(it != by_proc_.end());
  Space& s = *it->second;
  switch (ev.kind) {
    case StopEvent::kCall: {
      if (s.exec) {  // a new program: its first call must be kOpBirth
        if (ev.op == abi::kOpBirth) exec_arrived(s, ev);
        else fault(s, DET_FAULT_BADCALL, 0, 0, 0);
        return;
      }
      if (ev.op == abi::kOpBirth) {  // only the master's fork path makes these
        fault(s, DET_FAULT_BADCALL, 0, 0, 0);
        return;
      }
      if (ev.op == abi::kOpRefuse) {  // the space's own emulation said no
        fault(s, DET_FAULT_SYSCALL, 0, 0, static_cast<int64_t>(ev.child));
        return;
      }
      Call c{ev.op, ev.child, static_cast<unsigned long>(ev.flags), ev.addr, ev.size,
             ev.child_addr};
      long r = call(s, c);
      if (r != kBlocked) finish(s, r);
      return;
    }
    case StopEvent::kFault:
      fault(s, ev.fault, ev.signal, ev.fault_addr, ev.syscall);
      return;
    case StopEvent::kExited:
      s.run = Space::Run::kExited;
      s.status.state = DET_S_EXITED;
      s.status.exit_code = ev.exit_code;
      s.exec.reset();
      forget_subtree(s);
      on_stop(s);
      return;
    case StopEvent::kGone:
      s.gone = true;
      if (s.run != Space::Run::kExited)
        fault(s, DET_FAULT_SIGNAL, ev.signal ? ev.signal : SIGKILL, 0, 0);
      s.run = Space::Run::kExited;  // nothing left to run or inspect
      forget_subtree(s);
      return;
  }
}

void Kernel::fault(Space& s, int kind, int signal, uint64_t addr, int64_t syscall) {
  s.run = Space::Run::kFaulted;
  s.status.state = DET_S_FAULTED;
  s.status.fault = kind;
  s.status.signal = signal;
  s.status.addr = addr;
  s.status.syscall = syscall;
  s.pending.reset();
  s.exec.reset();
  on_stop(s);
}

void Kernel::on_stop(Space& s) {
  if (trace_) log_stop(s);
  Space* parent = s.parent;
  if (!parent || parent->is_master || !parent->pending || parent->pending->child != s.id) return;
  Call c = *parent->pending;
  parent->pending.reset();
  long r = act_on_stopped(*parent, s, c);
  if (trace_) log_call(*parent, c, r);
  finish(*parent, r);
}

void Kernel::finish(Space& caller, long result) {
  if (caller.is_master) return;
  if (m_.resume(caller.proc, result).ok()) caller.run = Space::Run::kRunning;
}

}  // namespace detux
