// machine.h: the seam between detux's semantics and its mechanism.
//
// The kernel (kernel.cc) decides what Put, Get and Ret mean: the tree, the
// waiting, the order of operations, the merge rule, the limits.  A Machine
// does the work on real processes: it makes and kills spaces, resumes and
// stops them, reads and writes their memory and registers, and reports when
// a space stops and why.  The stock-Linux machine is PtraceMachine (ptrace,
// seccomp, /proc/PID/pagemap, process_vm_readv/writev); an in-kernel
// backend is meant to implement the same interface and reuse the kernel and
// the tests unchanged.
//
// A space is named to the machine by an opaque Proc*.  The master is a Proc
// too (master() below): memory operations on it act on the calling process.
#pragma once

#include <detux/detux.h>
#include <signal.h>

#include <errno.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "util/result.h"

namespace detux {

struct Proc;  // the machine's handle for one space (or the master)

// Why a space stopped.
struct StopEvent {
  enum Kind {
    kCall,   // it made a detux call (args below)
    kFault,  // fault: fault/signal/addr/syscall below
    kExited, // it called exit(code); still inspectable
    kGone,   // the process is gone (killed from outside, or reaped)
  } kind = kCall;
  Proc* proc = nullptr;
  // kCall
  long op = 0, flags = 0;
  unsigned long child = 0;
  uint64_t addr = 0, size = 0, child_addr = 0;
  // kFault / kExited / kGone
  int fault = DET_FAULT_NONE;
  int signal = 0;
  uint64_t fault_addr = 0;
  int64_t syscall = 0;
  int exit_code = 0;
};

// How the master waits: its own (nondeterministic) timeout and signals.
struct WaitPolicy {
  long timeout_ms = 0;          // 0 = forever
  const sigset_t* allowed = nullptr;  // signals that end the wait
  bool poll = false;            // do not wait: -EAGAIN if nothing has stopped
};

struct MemRange {
  uint64_t start = 0, len = 0;
  uint64_t end() const { return start + len; }
};

class Machine {
 public:
  virtual ~Machine() = default;

  virtual Proc* master() = 0;
  // The master's call is over: undo whatever was set up to serve spaces
  // during it (see PtraceMachine::serve).
  virtual void end_of_call() {}
  // A new space, a copy-on-write copy of `parent` (stopped at a call, or the
  // master), stopped, with the registers of the parent's current call and
  // DET_CHILD as that call's result.  With `snapshot`, it also has its
  // snapshot already (as if snapshot() had been called at once).
  // `started`: the caller's next step is resume(), with nothing done to the
  // space before it but own_pages(); the machine may then finish making it
  // (and do what own_pages() asked) later, by
  // settle_births() at the latest (a failed birth is then reported by
  // next_event() as the space's death).
  virtual Result<Proc*> fork_space(Proc* parent, bool snapshot, bool started) = 0;
  // Finish every space fork_space() left unfinished.  Called at the start of
  // every master call that does not itself make a started space.
  virtual void settle_births() {}
  // Take a frozen snapshot of `p`'s whole memory (replacing any old one).
  virtual Status snapshot(Proc* p) = 0;
  virtual bool has_snapshot(Proc* p) = 0;
  // Kill the process (and its snapshot) and free the handle.
  virtual void destroy(Proc* p) = 0;

  // Resume a stopped space.  If it is stopped at a call, `result` is that
  // call's return value.
  virtual Status resume(Proc* p, long result) = 0;
  // Wait for the next stop of any space.  Result error: -ETIMEDOUT, -EINTR.
  virtual Result<StopEvent> next_event(const WaitPolicy& policy) = 0;

  virtual Status get_regs(Proc* p, det_regs* out) = 0;
  virtual Status set_regs(Proc* p, const det_regs& in) = 0;

  // Memory of a stopped space (or the master).  Bad ranges: -EFAULT.
  virtual Status read(Proc* p, uint64_t addr, void* buf, size_t len) = 0;
  virtual Status write(Proc* p, uint64_t addr, const void* buf, size_t len) = 0;
  // len bytes from `from`'s memory at src to `to`'s at dst (a parent and its
  // stopped child, either of them possibly the master): the whole range, or
  // -EFAULT (-ESRCH if one is gone), in which case some may have moved.
  virtual Status move(Proc* from, uint64_t src, Proc* to, uint64_t dst, size_t len) = 0;
  // Page-aligned.  Map fresh zero pages over [start, end) with prot.
  virtual Status map_zero(Proc* p, MemRange r, int prot) = 0;
  // Page-aligned.  Unmap what map_zero mapped, for a call that failed.
  virtual Status unmap(Proc* p, MemRange r) = 0;
  // Page-aligned.  Change protection of mapped pages; fill unmapped holes
  // with zero pages if prot != 0.  Returns the bytes newly mapped.
  virtual Result<uint64_t> protect(Proc* p, MemRange r, int prot) = 0;
  // Page-aligned.  Unmapped parts of r (for auto-mapping).
  virtual Result<std::vector<MemRange>> holes(Proc* p, MemRange r) = 0;
  // Page-aligned.  Parts of r that are mapped but not writable.
  virtual Result<std::vector<MemRange>> read_only(Proc* p, MemRange r) = 0;
  // Pages of r (page addresses, ascending) that may differ from p's
  // snapshot.  A superset of the changed pages; never misses one.
  virtual Result<std::vector<uint64_t>> dirty_pages(Proc* p, MemRange r) = 0;
  // Read whole pages (ascending page addresses) into out, 4096 bytes each.
  // From p's snapshot (snapshot=true) pages it lacks read as zeros; from
  // its live memory an unreadable page is -EFAULT.
  virtual Status read_pages(Proc* p, bool snapshot,
                            std::span<const uint64_t> pages, uint8_t* out) = 0;
  virtual Status write_pages(Proc* p, std::span<const uint64_t> pages,
                             const uint8_t* data) = 0;
  // For each page: 1 if `parent`'s page is still the very page `child`'s
  // snapshot holds (so the parent has not written it since), else 0.  All
  // zeros is always a correct answer, only a slower one.
  virtual Result<std::vector<uint8_t>> unchanged_since_snapshot(
      Proc* parent, Proc* child, std::span<const uint64_t> pages) = 0;
  // Page-aligned.  Pages of r that are populated in p (ascending).
  virtual Result<std::vector<uint64_t>> populated_pages(Proc* p, MemRange r) = 0;
  // True when every page (ascending page addresses) is memory of this very
  // process that plain loads and stores may touch: the master's own private,
  // anonymous, writable mappings.  The kernel then merges into those pages
  // in place instead of reading and writing them through the machine.
  virtual bool in_place(Proc* p, std::span<const uint64_t> pages) = 0;
  // Page-aligned ranges, ascending.  Give stopped space p its own copy of
  // every page of them in its writable private mappings, bytes unchanged
  // (DET_OWN); other pages are left alone.  Doing nothing is a correct
  // answer, only a slower one.
  virtual Status own_pages(Proc* p, std::span<const MemRange> ranges) = 0;
  // Copy whole pages from one stopped space (or the master) to another at
  // the same addresses.
  virtual Status copy_pages(Proc* from, Proc* to, std::span<const uint64_t> pages) = 0;
  // A merge's whole pages: pages that `parent` has not written since
  // `child`'s snapshot (unchanged_since_snapshot) become the child's.  On an
  // error the parent's pages are as they were: the snapshot holds their
  // bytes.
  virtual Status take_pages(Proc* child, Proc* parent, std::span<const uint64_t> pages) = 0;

  // A new space running a new program: `image` (an ELF executable linked
  // with libdetux) started with argv and envp, at fixed addresses, its
  // loader supervised.  It runs at once; its first detux call is a kOpBirth
  // once its runtime has confined it (addr, size: where it takes the state
  // the kernel carries over).  -ENOEXEC if Linux cannot run the image.
  virtual Result<Proc*> exec_space(std::span<const uint8_t> image,
                                   const std::vector<std::string>& argv,
                                   const std::vector<std::string>& envp) = 0;
  // That program's kOpBirth, before anything is carried over: its runtime
  // confined it, but its code is not trusted to have.  Check what can be
  // seen (no shared mapping, no open descriptor) and do again what cannot
  // (the space's filter and traps, put on by the machine itself).  -EPERM:
  // it is not a space, and faults.  [scratch, +len): its memory, for the
  // machine's use (where it asked for the carried bytes).
  virtual Status confine_born(Proc* p, uint64_t scratch, size_t len) = 0;
};

// A NUL-terminated string at addr in p's memory, read a page at a time (so
// that a string ending just before an unmapped page is read whole), at most
// `max` bytes long.  -EFAULT if unreadable, -E2BIG if longer.
inline Result<std::string> read_c_string(Machine& m, Proc* p, uint64_t addr, size_t max) {
  constexpr uint64_t kPage = 4096;
  std::string out;
  for (;;) {
    char buf[kPage];
    size_t chunk = kPage - (addr & (kPage - 1));
    if (!m.read(p, addr, buf, chunk).ok()) return Err{-EFAULT};
    const void* z = std::memchr(buf, 0, chunk);
    size_t n = z ? static_cast<size_t>(static_cast<const char*>(z) - buf) : chunk;
    if (out.size() + n > max) return Err{-E2BIG};
    out.append(buf, n);
    if (z) return out;
    addr += chunk;
  }
}

}  // namespace detux
