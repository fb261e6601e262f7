// kernel.h: the semantics of Put, Get and Ret, independent of mechanism.
//
// The kernel owns the space tree and decides, for every call from the master
// or from a space, what happens and in which order (Determinator's do_put
// and do_get): create the child if absent, wait until it is stopped, then
// registers, copy or zero, permissions, snapshot, owning the pages the
// child will write (DET_OWN, a hint), start; for Get: registers,
// copy or merge, status, and zero or permissions on the caller itself.
// Waiting differs by caller: the master blocks here, running the event loop
// that serves every space; a space is simply left stopped with its call
// pending until the child stops.
#pragma once

#include <csignal>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernel/machine.h"
#include "kernel/space.h"
#include "util/page_buffer.h"

namespace detux {

class Kernel {
 public:
  explicit Kernel(Machine& machine);
  ~Kernel();

  // A call made by the master.
  long master_call(const Call& c);

  void set_timeout(long ms) { timeout_ms_ = ms; }
  void set_allowed_signals(const sigset_t* set);
  Status set_limits(const det_limits& limits);
  void set_trace(bool on) { trace_ = on; }
  // A program image spaces may exec by `name` (kernel/exec.cc).
  Status register_image(const std::string& name, std::vector<uint8_t> image);
  // Kills every space: the master's program is about to be replaced (an
  // execve keeps the ptrace links, so nothing else would end them).
  void end_all_spaces() { forget_subtree(root_); }

 private:
  static constexpr long kBlocked = 1L << 62;  // the caller waits; no result yet

  long call(Space& caller, const Call& c);
  long put(Space& caller, const Call& c);
  long get(Space& caller, const Call& c);
  long ret(Space& caller);
  long act_on_stopped(Space& caller, Space& child, const Call& c);
  long do_put(Space& caller, Space& child, const Call& c,
              const std::vector<MemRange>* own = nullptr);
  long do_get(Space& caller, Space& child, const Call& c);

  // exec.cc
  long exec(Space& s, const Call& c);
  Result<std::vector<std::string>> read_strings(Space& s, uint64_t array);
  void exec_arrived(Space& s, const StopEvent& ev);

  Result<Space*> create_child(Space& caller, det_child_t id, bool snapshot, bool started);
  void kill_child(Space& parent, det_child_t id);
  void forget_subtree(Space& s);
  long wait_stopped(Space& child);
  void serve_stopped();  // handles every stop already there, waiting for none

  void handle(const StopEvent& ev);
  void on_stop(Space& s);
  void fault(Space& s, int kind, int signal, uint64_t addr, int64_t syscall);
  void finish(Space& caller, long result);

  // memops.cc
  long move_bytes(Space& from, uint64_t src, Space& to, uint64_t dst, uint64_t len);
  long copy_range(Space& from, uint64_t src, Space& to, uint64_t dst, uint64_t len);
  long zero_range(Space& s, uint64_t addr, uint64_t len, unsigned long flags);
  long perm_range(Space& s, uint64_t addr, uint64_t len, unsigned long flags);
  Result<std::vector<MemRange>> own_spans(Space& caller, const Call& c);
  Result<std::vector<MemRange>> checked_own(Space& caller, Space& s, const Call& c);
  long own_range(Space& child, const Call& c, const std::vector<MemRange>& spans);
  long merge_range(Space& parent, Space& child, uint64_t addr, uint64_t len);
  long merge_dirty(Space& parent, Space& child, uint64_t addr, uint64_t len, MemRange span,
                   const std::vector<uint64_t>& pages);
  long refresh_range(Space& parent, Space& child, uint64_t addr, uint64_t len);
  Result<std::vector<uint64_t>> child_dirty(Space& child, uint64_t addr, uint64_t len,
                                            MemRange* span);
  long map_holes(Space& s, MemRange span, const std::vector<uint64_t>& pages,
                 std::vector<uint64_t>* mapped);
  void unmap_holes(Space& s, const std::vector<uint64_t>& mapped);
  long merge_pages(Space& parent, Space& child, uint64_t addr, uint64_t len,
                   const std::vector<uint64_t>& pages, std::vector<uint64_t>* changed,
                   uint8_t* results);
  long merge_in_place(Space& parent, Space& child, uint64_t addr, uint64_t len,
                      const std::vector<uint64_t>& whole, const std::vector<uint64_t>& partial);
  long gain(Space& s, uint64_t bytes);

  void log_call(const Space& caller, const Call& c, long result) const;
  void log_stop(const Space& s) const;

  Machine& m_;
  Space root_;
  std::unordered_map<Proc*, Space*> by_proc_;
  long timeout_ms_ = 0;
  sigset_t allowed_{};
  bool have_allowed_ = false;
  long max_space_bytes_ = 16L << 30;
  bool trace_ = false;
  std::map<std::string, std::vector<uint8_t>> images_;
  // A merge's buffers (memops.cc): the child's pages, its snapshot's, and
  // the results.  Kept while up to 4 MiB each.
  static constexpr size_t kScratchKept = 4 << 20;
  ScratchPages theirs_{kScratchKept}, ref_{kScratchKept}, results_{kScratchKept};
};

}  // namespace detux
