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

// The instructions the supervisor emulates when a space traps on them.
enum class TrapInsn { None, Rdtsc, Rdtscp, Cpuid };

// Decodes the instruction at `bytes` (n bytes readable): 0F 31 is RDTSC,
// 0F 01 F9 is RDTSCP, 0F A2 is CPUID.  Any prefix, anything else, or too few
// bytes gives None.  *insn_len receives the instruction's length (0 for
// None); insn_len may be null.
TrapInsn decode_trap_insn(const uint8_t* bytes, size_t n, size_t* insn_len);

}  // namespace detux::confine
