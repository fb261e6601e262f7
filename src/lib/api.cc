// api.cc: the public calls of <detux/detux.h>.
//
// In a space every call is one trap to the supervisor (detux_trap).  In the
// master it is a direct call into the kernel, which lives in the master
// thread.  A Put that creates a child from the master forks the master; the
// child comes back out of this very dput() through the sigjmp_buf saved on
// entry, so that it returns DET_CHILD like a child made by a space does.
#include <detux/detux.h>
#include <errno.h>
#include <link.h>
#include <setjmp.h>
#include <string.h>

#include <cstdlib>
#include <vector>

#include "abi.h"
#include "kernel/kernel.h"
#include "ptrace/birth.h"
#include "ptrace/ptrace_machine.h"

using detux::abi::kOpGet;
using detux::abi::kOpPut;
using detux::abi::kOpRet;

namespace {

struct Master {
  detux::PtraceMachine machine;
  detux::Kernel kernel{machine};
};

Master* g_master = nullptr;
sigjmp_buf* g_entry = nullptr;

// The main executable's writable segments: what djoin merges.
struct Segment {
  uint64_t start, len;
};
std::vector<Segment>* g_segments = nullptr;

[[noreturn]] void child_entry() { siglongjmp(*g_entry, 1); }

// Cut [cut, cut+len) out of every segment.
void subtract(std::vector<Segment>* segs, uint64_t cut, uint64_t len) {
  std::vector<Segment> out;
  for (const Segment& s : *segs) {
    uint64_t e = s.start + s.len, ce = cut + len;
    if (ce <= s.start || cut >= e) {
      out.push_back(s);
      continue;
    }
    if (cut > s.start) out.push_back({s.start, cut - s.start});
    if (ce < e) out.push_back({ce, e - ce});
  }
  *segs = std::move(out);
}

// The main executable's writable PT_LOAD segments, without the parts the
// dynamic linker writes: RELRO, and the lazily bound .got.plt (a child and
// its parent both resolving the same function would otherwise conflict).
int find_segments(dl_phdr_info* info, size_t, void* out) {
  auto* segs = static_cast<std::vector<Segment>*>(out);
  const ElfW(Dyn)* dyn = nullptr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_DYNAMIC) dyn = reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + ph.p_vaddr);
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_W)) continue;
    segs->push_back({info->dlpi_addr + ph.p_vaddr, ph.p_memsz});
  }
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_GNU_RELRO) subtract(segs, info->dlpi_addr + ph.p_vaddr, ph.p_memsz);
  }
  uint64_t pltgot = 0, pltrelsz = 0;
  for (; dyn && dyn->d_tag != DT_NULL; ++dyn) {
    if (dyn->d_tag == DT_PLTGOT) pltgot = dyn->d_un.d_ptr;  // relocated by ld.so
    if (dyn->d_tag == DT_PLTRELSZ) pltrelsz = dyn->d_un.d_val;
  }
  if (pltgot) subtract(segs, pltgot, (3 + pltrelsz / sizeof(ElfW(Rela))) * 8);
  return 1;  // the first object is the main executable
}

long ensure_master() {
  if (detux::g_in_space) return -DET_ENOTSPACE;
  if (g_master) return 0;
  g_segments = new std::vector<Segment>;
  dl_iterate_phdr(find_segments, g_segments);
  g_master = new Master;
  detux::set_child_entry(child_entry);
  const char* t = getenv("DETUX_TRACE");
  g_master->kernel.set_trace(t && *t && strcmp(t, "0") != 0);
  return 0;
}

long master_call(long op, det_child_t child, unsigned long flags, void* addr, size_t size,
                 void* child_addr) {
  if (long r = ensure_master(); r < 0) return r;
  sigjmp_buf here;
  if (sigsetjmp(here, 0) != 0) return DET_CHILD;  // a new space, born in this call
  sigjmp_buf* outer = g_entry;
  g_entry = &here;
  detux::Call c{op, child, flags, reinterpret_cast<uint64_t>(addr), size,
                reinterpret_cast<uint64_t>(child_addr)};
  long r = g_master->kernel.master_call(c);
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
  if (detux::g_in_space) return space_call(kOpPut, child, flags, addr, size, child_addr);
  return master_call(kOpPut, child, flags, addr, size, child_addr);
}

long dget(det_child_t child, unsigned long flags, void* addr, size_t size, void* child_addr) {
  if (detux::g_in_space) return space_call(kOpGet, child, flags, addr, size, child_addr);
  return master_call(kOpGet, child, flags, addr, size, child_addr);
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
  det_status st{};
  long r = dget(child, DET_STATUS, &st, sizeof st, nullptr);
  if (r < 0) return static_cast<int>(r);
  if (st.state == DET_S_ABSENT) return -ESRCH;
  if (st.state == DET_S_FAULTED) r = -DET_EFAULTED;
  else if (st.state == DET_S_EXITED && st.exit_code != 0) r = -DET_EEXITED;
  for (size_t i = 0; r == 0 && g_segments && i < g_segments->size(); ++i) {
    void* a = reinterpret_cast<void*>((*g_segments)[i].start);
    r = dget(child, DET_MERGE, a, (*g_segments)[i].len, a);
  }
  if (r == -DET_ECONFLICT) dget(child, DET_STATUS, &st, sizeof st, nullptr);
  if (out) *out = st;
  long k = dput(child, DET_KILL, nullptr, 0, nullptr);
  if (r == 0 && k < 0) r = k;
  return static_cast<int>(r);
}

int djoin(det_child_t child) { return djoin_status(child, nullptr); }

int det_become_master(void) { return static_cast<int>(ensure_master()); }

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
    default: break;
  }
  if (err == DET_CHILD) return "in the new child";
  if (err > 0) return "success";
  return strerror(static_cast<int>(-err));
}

}  // extern "C"
