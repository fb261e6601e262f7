// fault.h: how the runtime reacts to a bad input from the program.
//
// In a space, a bad pointer handed to the runtime (free of a pointer the heap
// never gave out, a double free) faults the space after writing a line to its
// stderr, so the parent sees DET_FAULT_SIGNAL (SIGILL) and the message comes
// out at the join.  In the master it prints the message and aborts.
#pragma once

#include <signal.h>

namespace detux::rt {

[[noreturn]] void bad_pointer(const char* what, const void* p);

// The SIGSYS handler every space runs (sysemu.cc).
void on_sigsys(int sig, siginfo_t* si, void* ctx);

}  // namespace detux::rt
