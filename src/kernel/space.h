// space.h: a node of the space tree, as the kernel sees it.
//
// The tree is the kernel's and only the kernel's: a space names its children
// by the ids it chose, and can reach nothing else.  Each Space owns its
// children; destroying a Space destroys its subtree (children cannot outlive
// their parent).  The master is the root Space.
#pragma once

#include <detux/detux.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernel/machine.h"

namespace detux {

// A call as the kernel receives it, from the master or a space.
struct Call {
  long op = 0;
  unsigned long child = 0;
  unsigned long flags = 0;
  uint64_t addr = 0, size = 0, child_addr = 0;
};

// What an exec carries from a space's old program to its new one, held by
// the kernel while the new program loads (kernel/exec.cc).
struct ExecCarry {
  std::vector<uint8_t> carry;   // the runtime's bytes
  std::vector<uint64_t> pages;  // kept pages (addresses) ...
  std::vector<uint8_t> data;    // ... and their contents, 4096 bytes each
};

struct Space {
  enum class Run { kStopped, kRunning, kExited, kFaulted };

  Proc* proc = nullptr;
  Space* parent = nullptr;
  det_child_t id = 0;
  bool is_master = false;
  std::string path;  // "/" for the master, "/3/0" for child 0 of child 3
  std::map<det_child_t, std::unique_ptr<Space>> children;

  Run run = Run::kStopped;
  // Its process is reaped (killed from outside): its pid may name another
  // process now, so nothing but its status and its kill is done to it.
  bool gone = false;
  det_status status{};  // fault, exit and conflict details
  // Set while this space waits in a Put or Get on a running child.
  std::optional<Call> pending;
  // Set while its new program loads (between exec and its kOpBirth).
  std::unique_ptr<ExecCarry> exec;

  long quota_free = 0;    // spaces it may still create (and hand out)
  long quota_given = 0;   // what its parent handed it
  uint64_t bytes_gained = 0;  // memory gained by Perm, Zero and Copy
  // Pages it had written, as found by the refreshes (Put DET_MERGE) since its
  // last snapshot: what a DET_OWN with no range owns (a barrier's thread
  // mostly writes the same pages in its next round).
  std::vector<uint64_t> refreshed_dirty;

  Space* child(det_child_t c) {
    auto it = children.find(c);
    return it == children.end() ? nullptr : it->second.get();
  }
  bool stopped() const { return run != Run::kRunning; }
};

}  // namespace detux
