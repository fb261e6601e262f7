// filter.h: the seccomp filter that every space runs under.
//
// A space may make exactly one kind of system call: the detux call
// (abi::kSyscallNr).  Everything else the Linux kernel offers -- clocks,
// files, signals, mmap, getpid -- is a source of nondeterminism or a way
// out of the space, so the space must never reach it.  The supervisor
// traces every space with PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL and the
// space runs under this filter, which sorts each call into one of four
// bins by (arch, nr) alone (the arguments never matter):
//
//   arch != AUDIT_ARCH_X86_64          -> TRACE | abi::kSeccompBadArch
//     (an `int $0x80` call from 64-bit code arrives as AUDIT_ARCH_I386)
//   nr has bit 0x40000000 (x32 ABI)    -> TRACE | abi::kSeccompBadArch
//   nr == abi::kSyscallNr              -> TRACE | abi::kSeccompCall
//   nr == exit or exit_group           -> ALLOW
//   nr == rt_sigreturn                 -> ALLOW
//   nr in kEmulatedCalls               -> TRAP (SIGSYS in the space)
//   anything else                      -> TRACE | abi::kSeccompRefused
//
// exit and exit_group are let through so that a space can end itself
// without a round trip to the tracer; ending is deterministic.  The
// emulated calls (console reads and writes, fstat and friends) are raised
// as SIGSYS in the space itself, where the runtime's handler (rt/sysemu.cc)
// answers them from the space's own memory or refuses them with a kOpRefuse
// call, which faults the space as a refused call would.  rt_sigreturn ends
// that handler; it only loads registers and a signal mask from the space's
// own stack, which is deterministic (a garbage frame faults the space).
// Every other
// outcome stops the space at a PTRACE_EVENT_SECCOMP stop, where the
// supervisor reads SECCOMP_RET_DATA with PTRACE_GET_SYSCALL_INFO and either
// serves the detux call or faults the space.
//
// The filter is written with libseccomp and exported as a classic BPF
// program once, in the supervisor, before any fork.  Facts about libseccomp
// 2.5.4 that this relies on (checked by the tests and, for the policy as a
// whole, by build_space_filter itself on every build):
//   * seccomp_rule_add_exact accepts the non-existent number 0xde7 on the
//     native x86_64 arch and emits a plain `nr == 0xde7` comparison.
//   * When x32 is not one of the filter's arches, the x86_64 section starts
//     with `if (nr >= 0x40000000 && nr != -1) goto bad-arch action`, so x32
//     numbers take SCMP_FLTATR_ACT_BADARCH without any rule of ours (a rule
//     could not express "bit 30 of nr set" anyway: libseccomp rules compare
//     arguments, not the number).  nr == -1 falls to the default action.
// Because those are implementation details of libseccomp, build_space_filter
// runs the exported program through evaluate_filter on a sweep of inputs and
// throws if any answer differs from the policy above.
//
// One instruction is ours, in front of libseccomp's program: a load of the
// instruction pointer, which libseccomp's first load (arch) overwrites.  It
// changes no answer; it stops Linux from emulating the whole program for
// every system call number when a space installs it (filter.cc says why).
//
// install_filter runs in a freshly forked child of a process that may have
// had other threads: it must not allocate, take locks, or touch anything
// but the already-built program and two system calls.
#pragma once

#include <linux/filter.h>
#include <linux/seccomp.h>

#include <cstdint>
#include <vector>

namespace detux::confine {

// The calls sent back to the space as SIGSYS for the runtime to emulate:
// console I/O on fds 0-2 and the detux file system (rt/sysemu.cc,
// rt/fsemu.cc).
inline constexpr int kEmulatedCalls[] = {
    0 /* read */,     1 /* write */,     2 /* open */,      3 /* close */,
    4 /* stat */,     5 /* fstat */,     6 /* lstat */,     8 /* lseek */,
    16 /* ioctl */,   17 /* pread64 */,  18 /* pwrite64 */, 19 /* readv */,
    20 /* writev */,  21 /* access */,   32 /* dup */,      72 /* fcntl */,
    76 /* truncate */, 77 /* ftruncate */, 82 /* rename */, 83 /* mkdir */,
    84 /* rmdir */,   86 /* link */,     87 /* unlink */,   257 /* openat */,
    258 /* mkdirat */, 262 /* newfstatat */, 263 /* unlinkat */, 264 /* renameat */,
    265 /* linkat */, 269 /* faccessat */, 316 /* renameat2 */, 439 /* faccessat2 */,
    217 /* getdents64 */};
bool is_emulated_call(long nr);

// Builds the space filter (see above) as a classic BPF program.  Throws
// std::runtime_error / std::system_error if libseccomp fails or the
// exported program does not implement the policy.
std::vector<sock_filter> build_space_filter();

// The calls a loading program may make without asking (they act on its own
// memory, signal state, or on descriptors of files it was let open).  Not
// fstat: its times and a memfd's inode differ from run to run (load_call
// answers it).
inline constexpr int kLoadAllowedCalls[] = {
    0 /* read */,  3 /* close */,   8 /* lseek */,   9 /* mmap */,
    10 /* mprotect */, 11 /* munmap */, 12 /* brk */, 13 /* rt_sigaction */,
    14 /* rt_sigprocmask */, 17 /* pread64 */, 25 /* mremap */, 28 /* madvise */,
    436 /* close_range */};

// The filter a new program image loads under (exec in a space, see
// ptrace/exec.cc): the same arch checks, exit, exit_group, rt_sigreturn and
// kLoadAllowedCalls allowed, and every other call, the detux call included,
// sent to the tracer as TRACE | abi::kSeccompLoad, where the supervisor lets
// through only what the dynamic loader needs.  The program's runtime then stacks the space
// filter on top.  Stacked filters all run, the strictest action wins, and
// between equal actions the newer filter's data does: so once the space
// filter is on, it decides every call, except that whatever it allows is
// still TRACEd as kSeccompLoad by this one, which the supervisor refuses
// from a space that has finished loading.
std::vector<sock_filter> build_load_filter();

// Installs `prog` as the calling thread's seccomp filter: PR_SET_NO_NEW_PRIVS
// and then the raw seccomp(SECCOMP_SET_MODE_FILTER) system call.  Returns 0,
// or -errno (-EINVAL for an empty program or one longer than BPF_MAXINSNS).
// Allocates nothing; safe between fork and exec/the first detux call.
// Once it returns 0 the very next system call is already filtered.
long install_filter(const std::vector<sock_filter>& prog);

// A reference interpreter for classic BPF seccomp programs: the action
// (SECCOMP_RET_*) that `prog` returns for `data`.  Anything the kernel would
// refuse to run (a bad opcode, a load outside seccomp_data, a jump past the
// end, falling off the end) yields SECCOMP_RET_KILL_PROCESS, which the space
// filter never returns.  Used to check the exported filter without a kernel.
uint32_t evaluate_filter(const std::vector<sock_filter>& prog,
                         const seccomp_data& data);

}  // namespace detux::confine
