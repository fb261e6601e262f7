// api.cc: the public calls of <detux/detux.h>.
//
// In a space every call is one trap to the supervisor (detux_trap).  In the
// master it is a direct call into the kernel, which lives in the master
// thread.  A Put that creates a child from the master forks the master; the
// child comes back out of this very dput() through the sigjmp_buf saved on
// entry, so that it returns DET_CHILD like a child made by a space does.
#include <detux/detux.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <string.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "abi.h"
#include "kernel/kernel.h"
#include "ptrace/birth.h"
#include "ptrace/ptrace_machine.h"
#include "rt/fault.h"
#include "rt/heap.h"
#include "rt/fsemu.h"
#include "rt/join.h"

using detux::abi::kOpGet;
using detux::abi::kOpPut;
using detux::abi::kOpRet;

namespace {

struct Master {
  detux::PtraceMachine machine;
  detux::Kernel kernel{machine};
};

Master* g_master = nullptr;
// True on the thread that became master, and only there: only it may make
// master calls.  A thread-local flag, not a thread id compared with gettid()
// on every call (a system call, 1 us on a PVM guest); a fork() clears it in
// the child, which runs on a new thread (clear_master_thread).  Spaces
// inherit the cleared flag and never read it.  A process made by a raw
// clone system call, which runs no fork handlers, is not caught: it is an
// ordinary Linux process of the master's user, which could reach the
// spaces' memory anyway; the check is against mistakes, not attacks.
thread_local bool t_master_thread = false;

void clear_master_thread() { t_master_thread = false; }

sigjmp_buf* g_entry = nullptr;

[[noreturn]] void child_entry() { siglongjmp(*g_entry, 1); }

long register_image(const char* name, const char* path) {
  std::vector<uint8_t> bytes;
  if (FILE* f = fopen(path, "rb")) {
    uint8_t buf[1 << 16];
    for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) bytes.insert(bytes.end(), buf, buf + n);
    bool bad = ferror(f);
    fclose(f);
    if (bad) return -EIO;
  } else {
    return -errno;
  }
  detux::rt::SystemHeap system;
  auto s = g_master->kernel.register_image(name, std::move(bytes));
  return s.ok() ? 0 : s.err();
}

// `detux run --image NAME=PATH ...` passes DETUX_IMAGES=NAME=PATH:NAME=PATH.
void register_images_from_env() {
  const char* list = getenv("DETUX_IMAGES");
  if (!list || !*list) return;
  std::string all = list;
  for (size_t at = 0; at <= all.size();) {
    size_t end = all.find(':', at);
    if (end == std::string::npos) end = all.size();
    std::string item = all.substr(at, end - at);
    size_t eq = item.find('=');
    long r = eq == std::string::npos ? -EINVAL
                                     : register_image(item.substr(0, eq).c_str(),
                                                      item.substr(eq + 1).c_str());
    if (r < 0) {
      fprintf(stderr, "detux: cannot register image %s: %s\n", item.c_str(), strerror(-r));
      exit(2);
    }
    at = end + 1;
  }
}

// 0, or -DET_ETHREAD if a master exists and this is not its thread.
long on_master_thread() {
  if (!g_master || t_master_thread) return 0;
  return -DET_ETHREAD;
}

long ensure_master() {
  if (detux::g_in_space) return -DET_ENOTSPACE;
  if (g_master) return on_master_thread();
  detux::rt::rt_master_init();
  detux::rt::SystemHeap system;
  g_master = new Master;
  t_master_thread = true;
  pthread_atfork(nullptr, nullptr, clear_master_thread);
  detux::set_child_entry(child_entry);
  detux::rt::Extent sys = detux::rt::system_heap_span();
  detux::set_supervisor_memory(sys.lo, sys.size());
  detux::set_sigsys_handler(detux::rt::on_sigsys);
  const char* sched = getenv("DETUX_SPACE_SCHED");  // "normal": spaces not SCHED_IDLE
  detux::set_spaces_in_background(!(sched && strcmp(sched, "normal") == 0));
  const char* t = getenv("DETUX_TRACE");
  g_master->kernel.set_trace(t && *t && strcmp(t, "0") != 0);
  register_images_from_env();
  return 0;
}

}  // namespace

namespace detux::rt {
void master_before_exec() {
  if (!g_master || !t_master_thread || detux::g_in_space) return;
  detux::rt::SystemHeap system;
  g_master->kernel.end_all_spaces();
}
}  // namespace detux::rt

namespace {

long master_call(long op, det_child_t child, unsigned long flags, void* addr, size_t size,
                 void* child_addr) {
  // dput and dget checked the thread already (before their bookkeeping).
  if (!g_master) {
    if (long r = ensure_master(); r < 0) return r;
  }
  detux::rt::SystemHeap system;  // the kernel's allocations are never merged
  sigjmp_buf here;
  if (sigsetjmp(here, 0) != 0) return DET_CHILD;  // a new space, born in this call
  sigjmp_buf* outer = g_entry;
  g_entry = &here;
  detux::Call c{op, child, flags, reinterpret_cast<uint64_t>(addr), size,
                reinterpret_cast<uint64_t>(child_addr)};
  uint64_t sp;  // a new space returns above it; below is the supervisor's
  asm volatile("mov %%rsp, %0" : "=r"(sp));
  detux::set_entry_stack_top(sp);
  long r = g_master->kernel.master_call(c);
  detux::set_entry_stack_top(0);
  g_entry = outer;
  return r;
}

long space_call(long op, det_child_t child, unsigned long flags, void* addr, size_t size,
                void* child_addr) {
  return detux_trap(op, static_cast<long>(child), static_cast<long>(flags),
                    reinterpret_cast<long>(addr), static_cast<long>(size),
                    reinterpret_cast<long>(child_addr));
}

}  // namespace

extern "C" {

long dput(det_child_t child, unsigned long flags, void* addr, size_t size, void* child_addr) {
  // A new space starts with its creator's errno, not what the supervisor's
  // own calls left there (which may differ from run to run).
  const int caller_errno = errno;
  if (!detux::g_in_space) {  // before any bookkeeping: a refused call changes nothing
    if (long r = on_master_thread(); r < 0) return r;
  }
  // A Put that forks a child gives it a heap extent of its own (rt/join.h).
  detux::rt::ForkPlan plan = detux::rt::fork_prepare(flags);
  if (plan.refused) return plan.refused;
  long r = detux::g_in_space ? space_call(kOpPut, child, flags, addr, size, child_addr)
                             : master_call(kOpPut, child, flags, addr, size, child_addr);
  if (r == DET_CHILD) {
    detux::rt::fork_child(plan, child);
    errno = caller_errno;
    return r;
  }
  detux::rt::fork_done(plan, child, r);
  if ((flags & DET_KILL) && r >= 0) detux::rt::child_killed(child);
  return r;
}

long dget(det_child_t child, unsigned long flags, void* addr, size_t size, void* child_addr) {
  if (!detux::g_in_space) {
    if (long r = on_master_thread(); r < 0) return r;
  }
  long r = detux::g_in_space ? space_call(kOpGet, child, flags, addr, size, child_addr)
                             : master_call(kOpGet, child, flags, addr, size, child_addr);
  // A conflict merged nothing; anything else may have (the caller may hold
  // the child's heap blocks now, and its extent is kept at its kill).
  if ((flags & DET_MERGE) && r != -DET_ECONFLICT) detux::rt::child_merged(child);
  return r;
}

void dret(void) {
  if (detux::g_in_space) space_call(kOpRet, 0, 0, nullptr, 0, nullptr);
}

int dfork(det_child_t child) {
  long r = dput(child, DET_FORK | DET_SNAP | DET_START, nullptr, 0, nullptr);
  if (r < 0) return static_cast<int>(r);
  return r == DET_CHILD ? 0 : 1;
}

int djoin_status(det_child_t child, struct det_status* out) {
  return detux::rt::join_child(child, true, out);
}

int djoin(det_child_t child) { return djoin_status(child, nullptr); }

const char* det_describe_address(uint64_t addr, char* buf, size_t len) {
  if (!buf || len == 0) return buf;
  std::string s = detux::rt::describe(addr);
  snprintf(buf, len, "%s", s.c_str());
  return buf;
}

int det_fs_save(const char* image) {
  if (detux::g_in_space) return -DET_ENOTSPACE;
  if (long r = ensure_master(); r < 0) return static_cast<int>(r);
  std::string why;
  return static_cast<int>(detux::rt::fs_save(image, &why));
}

int det_fs_load(const char* image, char* why, size_t why_len) {
  if (detux::g_in_space) return -DET_ENOTSPACE;
  if (long r = ensure_master(); r < 0) return static_cast<int>(r);
  std::string w;
  long r = detux::rt::fs_load(image, &w);
  if (why && why_len) snprintf(why, why_len, "%s", w.c_str());
  return static_cast<int>(r);
}

const char* det_fs_conflicts(void) { return detux::rt::last_fs_conflicts().c_str(); }

int det_become_master(void) { return static_cast<int>(ensure_master()); }

int det_exec_register(const char* name, const char* path) {
  if (detux::g_in_space) return -DET_ENOTSPACE;
  if (long r = ensure_master(); r < 0) return static_cast<int>(r);
  if (!name || !path) return -EINVAL;
  return static_cast<int>(register_image(name, path));
}

int det_is_master(void) { return detux::g_in_space ? 0 : 1; }

int det_allow_signals(const sigset_t* set) {
  if (long r = ensure_master(); r < 0) return static_cast<int>(r);
  g_master->kernel.set_allowed_signals(set);
  return 0;
}

int det_set_wait_timeout(long ms) {
  if (long r = ensure_master(); r < 0) return static_cast<int>(r);
  if (ms < 0) return -EINVAL;
  g_master->kernel.set_timeout(ms);
  return 0;
}

int det_set_limits(const struct det_limits* limits) {
  if (long r = ensure_master(); r < 0) return static_cast<int>(r);
  if (!limits) return -EINVAL;
  auto s = g_master->kernel.set_limits(*limits);
  if (s.ok() && limits->max_space_bytes) detux::rt::heap_set_limit(limits->max_space_bytes);
  return s.ok() ? 0 : static_cast<int>(s.err());
}

const char* det_strerror(long err) {
  switch (-err) {
    case 0: return "success";
    case DET_ECONFLICT: return "merge conflict: both parent and child changed the same bytes";
    case DET_EFAULTED: return "the child faulted";
    case DET_EEXITED: return "the child exited with a non-zero code";
    case DET_ELIMIT: return "space quota exhausted";
    case DET_ENOTSPACE: return "master-only call made in a space";
    case DET_ETHREAD: return "master call from a thread other than the master thread";
    default: break;
  }
  if (err == DET_CHILD) return "in the new child";
  if (err > 0) return "success";
  return strerror(static_cast<int>(-err));
}

}  // extern "C"
