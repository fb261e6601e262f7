// console.h: standard input and output for spaces.
//
// A space cannot write to a terminal.  What it writes to fd 1 and 2 (with
// printf, puts, std::cout, write ...) is kept in its own memory, in order,
// and handed to its parent when the parent joins or waits for it; the
// parent writes it to its own stdout and stderr through stdio, so the master
// prints every space's output at that space's join: a deterministic order
// that no timing can change (the thesis's special stdout file).
//
// Standard input is one stream, read by the master from its real stdin on
// demand.  A space holds the part of the stream it has been given (a child
// inherits its parent's part, and its read position, at fork); reading past
// it makes the space Ret asking for more, and its parent, when it next
// waits for the child, supplies the next bytes of the stream -- reading
// them first itself, from its own parent or, in the master, from fd 0.
#pragma once

#include <detux/detux.h>
#include <sys/types.h>

#include <cstddef>

#include "rt/state.h"

namespace detux::rt {

// In a space: the emulated write(fd, ...) for fd 1 and 2.
long console_write(int fd, const void* buf, size_t len);
// In a space: the emulated read(0, ...).  Blocks (Rets) for more input.
long console_read(void* buf, size_t len);

// In a space that ends (or reaches a barrier): input its stdio read ahead
// but did not consume goes back to the stream, so that the parent, which
// takes over the child's position when it joins or waits for it, reads on
// from exactly where the program stopped reading.
void console_give_back_input();
// Parent side, at a join or wait: the child read on from here.
void console_adopt_position(const RtState& child_rt);

// Parent side.  Copies the child's pending output (as `child_rt` describes
// it) and writes it to this process's stdout and stderr.
long console_collect(det_child_t child, const RtState& child_rt);
// Parent side, when the child Ret with RetWhy::kInput: give it the next
// bytes of the stream (or end of file).  The caller restarts the child.
long console_supply(det_child_t child, const RtState& child_rt);

// In a new child: start with no pending output, and let go of the parent's
// stdio buffers (see console.cc).
void console_child_start(bool parent_in_space);

}  // namespace detux::rt
