// abi.h: the wire format between a space and the supervisor.
//
// A space reaches the supervisor through one Linux system call number that
// does not exist (DETUX_NR).  The seccomp filter installed in every space
// sends that number to the tracer (SECCOMP_RET_TRACE with DETUX_SECCOMP_CALL),
// lets exit and exit_group through, and sends everything else to the tracer
// marked REFUSED or BADARCH, where it faults the space.  Registers:
//   rax = DETUX_NR, rdi = op, rsi = child, rdx = flags,
//   r10 = addr, r8 = size, r9 = child_addr.
// The result is the 8 bytes at the stack pointer of the call: the stub zeroes
// them before the call and the supervisor writes any other result there.  The
// supervisor then lets the call itself run on, as the unknown number it is,
// which leaves -ENOSYS in rax: answering through registers would cost two
// more ptrace calls per call (PTRACE_GETREGS and _SETREGS).  Where it does
// set registers anyway (another step at that stop needed them), rax holds the
// result too.  So the stub takes the slot when rax is -ENOSYS and rax
// otherwise: a call that never reached the supervisor (a program's own
// filter answered it with an errno) still returns that error.
// A space that traps without the stub gets its answer at its own stack
// pointer all the same; if nothing is mapped there, it gets none.  A backend
// inside the kernel would write the same slot (and may set rax too).
// A few calls the runtime emulates inside the space (console I/O) are sent
// back to the space itself as SIGSYS (SECCOMP_RET_TRAP); see filter.h.
// Only this header is shared by the space-side stubs and the supervisor.
#pragma once

#include <cstdint>

namespace detux::abi {

inline constexpr long kSyscallNr = 0xde7;  // 3559: far above any Linux call

enum Op : long {
  kOpPut = 1,
  kOpGet = 2,
  kOpRet = 3,
  kOpBirth = 4,  // a new space created by the master reports for duty; from
                 // an exec'd program: addr, size = where it takes the carried
                 // bytes, child_addr = its own detux_gadget
  kOpRefuse = 5, // the runtime's system call emulation refuses call `child`:
                 // the space faults as if the filter had refused it
  kOpExec = 6,   // replace this space's program: an ExecRequest at addr
};

// What a space asks for with kOpExec.  Every pointer is in the space's own
// memory.  The new program is a registered image (image_name, given to the
// master with det_exec_register) or the bytes [image, image+image_len).  It
// starts with argv and envp (NULL-terminated arrays of C strings) and, once
// it has confined itself, receives `carry` (bytes the runtime passes to its
// own next incarnation) and the pages of [keep, keep+keep_len) that the
// space had populated, at the same addresses.
struct ExecRequest {
  uint64_t image_name = 0, image_name_len = 0;
  uint64_t image = 0, image_len = 0;
  uint64_t argv = 0, envp = 0;
  uint64_t carry = 0, carry_len = 0;
  uint64_t keep = 0, keep_len = 0;
};

// SECCOMP_RET_DATA values the filter attaches to a traced call.
enum SeccompData : uint16_t {
  kSeccompCall = 1,     // a detux call
  kSeccompBadArch = 2,  // int 0x80 (i386 ABI) or an x32 number
  kSeccompRefused = 3,  // any other Linux system call
  kSeccompLoad = 4,     // any call of a program still loading (filter.h)
};

}  // namespace detux::abi
