// state.h: what the runtime keeps per space, and what a parent reads of it.
//
// The runtime's state lives in a small mapping of its own at a fixed
// address, which djoin never merges: every space has its own copy,
// inherited at fork and then reset for the child (rt_child_start).  A
// parent reads its child's copy with one Get/Copy from that address, which
// is the same in every detux program -- so also in a child that has exec'd
// another program -- and writes into it only to answer a request for input.
#pragma once

#include <detux/detux.h>

#include <cstdint>

#include "rt/heap.h"

namespace detux::rt {

// Console output not yet handed to the parent: records of
// [fd: 1 byte][length: 4 bytes][bytes], in the order they were written.
struct ConsoleOut {
  uint64_t buf = 0, len = 0, cap = 0;
  bool owned = false;  // buf is this space's block (else inherited or none)
};

// Standard input as a stream: every space holds the prefix of the master's
// input it has received so far; reading past it asks the parent for more.
struct ConsoleIn {
  uint64_t buf = 0, len = 0, cap = 0;  // the stream so far
  uint64_t pos = 0;                    // this space's read position (fd 0)
  bool eof = false;
  bool owned = false;
};

// Why a space called Ret, for its parent's runtime.
enum class RetWhy : uint32_t { kNone = 0, kInput = 1, kBarrier = 2 };

// Filled by the parent when it answers kInput: bytes were copied to
// `in.buf + in.len` (room for `want` bytes was made by the child).
struct InputReply {
  uint64_t got = 0;
  bool eof = false;
};

struct RtState {
  det_child_t self = 0;     // the id this space has in its parent
  Extent extent;            // the heap extent its parent gave it
  ConsoleOut out;
  ConsoleIn in;
  RetWhy why = RetWhy::kNone;
  uint64_t want = 0;        // bytes asked for with kInput
  InputReply reply;
};

inline constexpr uint64_t kRtStateAddr = 0x5f0000000000ULL;  // 95 TiB
inline RtState& rt_state() { return *reinterpret_cast<RtState*>(kRtStateAddr); }
// Maps it (zeroed: a fresh state) in the master or in a new program.
void rt_state_map();

// In a new child, right after it was forked by its parent's runtime.
// parent_in_space: the parent was a space, not the master.
void rt_child_start(det_child_t self, Extent e, bool parent_in_space);

}  // namespace detux::rt
