// cpuid.h: the one CPU every space sees, and the decoder for the
// instructions the supervisor emulates.
//
// CPUID and RDTSC/RDTSCP are instructions, not system calls, so the seccomp
// filter cannot see them, yet they leak the machine: the vendor, the model,
// which vector extensions exist, how big the caches are, the APIC id of the
// core the space happens to run on, and of course the time.  A program that
// picks a memcpy by CPUID or seeds a hash with RDTSC would behave
// differently on another machine, or on the next run.  So spaces run with
// TSC faulting (prctl(PR_SET_TSC, PR_TSC_SIGSEGV)) and, where the processor
// supports it, CPUID faulting (arch_prctl(ARCH_SET_CPUID, 0)); the resulting
// SIGSEGV stops the space in the tracer, which decodes the faulting
// instruction with decode_trap_insn, emulates it (for CPUID: answers from
// cpuid_answer) and steps the space past it.
//
// The table describes a deliberately modest x86-64-v2 machine (roughly an
// Intel Nehalem): "GenuineIntel", family 6, SSE through SSE4.2, SSSE3,
// POPCNT, CMPXCHG16B, LAHF/SAHF in 64-bit mode.  Nothing the real host might
// lack, and nothing that would pull a program onto a path detux cannot keep
// deterministic:
//   * no AVX/AVX2/AVX-512, no XSAVE and no OSXSAVE, so nobody executes
//     XGETBV or expects more vector state than FXSAVE covers (det_regs
//     carries exactly the 512-byte FXSAVE image);
//   * no RDRAND and no RDSEED: those are hardware randomness that cannot be
//     trapped, so a program must never think it may use them;
//   * no hypervisor bit, no TSC-deadline timer, no invariant-TSC claim, no
//     MONITOR/MWAIT, no PCID, no FSGSBASE;
//   * every APIC id and every "logical processors sharing" field is 0: one
//     core, one thread.
// Leaves above the maximum (7 basic, 0x80000008 extended) and every leaf in
// between that is not listed in cpuid.cc answer all zeros, like an AMD part
// (Intel would repeat the highest basic leaf; zeros are simpler to reason
// about and what well-behaved software expects of an absent leaf).
//
// The answers are a pure function of (leaf, subleaf): they never depend on
// the host, so the same binary sees the same CPU on every run and machine.
//
// Both traps need the machine's help, and not every machine gives it.
// Without CPUID faulting (some AMD parts and hypervisors) cpuid cannot be
// trapped from user space, and spaces run it natively: they see the host's
// real answers, including the APIC id of the core they run on.  And some
// hypervisors (seen: a PVM guest, whose kernel runs outside ring 0) accept
// PR_SET_TSC but never set CR4.TSD, so rdtsc and rdtscp read the real
// clock.  Each is then a hole in confinement like RDRAND's.  The two probes
// below are how the supervisor, `detux run` and the tests know.
#pragma once

#include <cstddef>
#include <cstdint>

namespace detux::confine {

struct CpuidRegs {
  uint32_t eax, ebx, ecx, edx;
};

// What CPUID answers in a space for EAX = leaf, ECX = subleaf.  The subleaf
// matters only for leaves 4 and 7 and is ignored elsewhere, as on hardware.
CpuidRegs cpuid_answer(uint32_t leaf, uint32_t subleaf);

// Whether this machine can make cpuid fault (ARCH_SET_CPUID).  Probed once,
// on the calling thread, which it leaves as it found it.
bool cpuid_faulting_supported();

// Whether rdtsc really faults after prctl(PR_SET_TSC, PR_TSC_SIGSEGV) here.
// Probed once, in a forked child that executes rdtsc (about a millisecond).
bool tsc_faulting_honoured();

// The instructions the supervisor emulates when a space traps on them.
enum class TrapInsn { None, Rdtsc, Rdtscp, Cpuid };

// Decodes the instruction at `bytes` (n bytes readable): 0F 31 is RDTSC,
// 0F 01 F9 is RDTSCP, 0F A2 is CPUID.  Any prefix, anything else, or too few
// bytes gives None.  *insn_len receives the instruction's length (0 for
// None); insn_len may be null.
TrapInsn decode_trap_insn(const uint8_t* bytes, size_t n, size_t* insn_len);

}  // namespace detux::confine
