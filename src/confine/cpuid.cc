// cpuid.cc: the fixed CPUID table, the trapped-instruction decoder and the
// probe for CPUID faulting (see cpuid.h).  Every value in the table is a
// constant; nothing in it is read from the host.
#include "confine/cpuid.h"

#include <asm/prctl.h>
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace detux::confine {
namespace {

constexpr uint32_t bit(unsigned n) { return uint32_t{1} << n; }

// Four ASCII bytes as CPUID returns them: first character in the low byte.
constexpr uint32_t chars(const char* s, size_t i, size_t len) {
  uint32_t v = 0;
  for (size_t j = 0; j < 4; ++j) {
    const size_t at = i + j;
    const uint32_t c = at < len ? static_cast<unsigned char>(s[at]) : 0;
    v |= c << (8 * j);
  }
  return v;
}

constexpr uint32_t kMaxBasicLeaf = 0x7;
constexpr uint32_t kMaxExtLeaf = 0x80000008;

// ---- Leaf 0: maximum basic leaf and vendor ("Genu" "ineI" "ntel" are EBX,
// EDX, ECX in that order).
constexpr const char kVendor[] = "GenuineIntel";
constexpr CpuidRegs kLeaf0 = {kMaxBasicLeaf, chars(kVendor, 0, 12), chars(kVendor, 8, 12),
                              chars(kVendor, 4, 12)};

// ---- Leaf 1: signature, misc, feature flags.
// EAX 0x000106A5: stepping 5, model 0xA + extended model 1 = 0x1A, family 6,
// type 0: Nehalem, the first Intel core that meets x86-64-v2.  Software that
// tunes by model number (glibc does) takes old, well-trodden paths.
constexpr uint32_t kSignature = 0x5 | (0xA << 4) | (6 << 8) | (0x1 << 16);
// EBX: brand index 0, CLFLUSH line 8 x 8 = 64 bytes, 1 addressable logical
// processor (HTT is clear, so this is informational), initial APIC id 0.
constexpr uint32_t kLeaf1Ebx = (8 << 8) | (1 << 16) | (0u << 24);
// ECX: SSE3(0) SSSE3(9) CX16(13) SSE4.1(19) SSE4.2(20) POPCNT(23).
// Deliberately clear: PCLMULQDQ(1), MONITOR(3), VMX(5), FMA(12), PCID(17),
// x2APIC(21), MOVBE(22), TSC-deadline(24), AES(25), XSAVE(26), OSXSAVE(27),
// AVX(28), F16C(29), RDRAND(30), hypervisor(31).
constexpr uint32_t kLeaf1Ecx = bit(0) | bit(9) | bit(13) | bit(19) | bit(20) | bit(23);
// EDX: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC (0-9), SEP MTRR PGE MCA CMOV
// PAT PSE36 (11-17), CLFSH(19), MMX FXSR SSE SSE2 (23-26).  TSC is set
// because RDTSC is emulated.  Clear: PSN(18), DS(21), ACPI(22), SS(27),
// HTT(28), TM(29), PBE(31).
constexpr uint32_t kLeaf1Edx = 0x3FF | (0x7F << 11) | bit(19) | (0xF << 23);
constexpr CpuidRegs kLeaf1 = {kSignature, kLeaf1Ebx, kLeaf1Ecx, kLeaf1Edx};

// ---- Leaf 2: legacy cache descriptors.  AL = 1 (one round), descriptor
// 0xFF = "no descriptors here, use leaf 4".
constexpr CpuidRegs kLeaf2 = {0x0000FF01, 0, 0, 0};

// ---- Leaf 4: deterministic cache parameters, one subleaf per cache; the
// first subleaf with type 0 ends the list.  EAX: type(4:0) 1 data,
// 2 instruction, 3 unified; level(7:5); self-initialising(8); sharing
// logical processors - 1 (25:14) = 0; cores per package - 1 (31:26) = 0.
// EBX: line - 1 (11:0), partitions - 1 (21:12), ways - 1 (31:22).  ECX: sets
// - 1.  EDX bit 1: inclusive of lower levels.
//   L1d 32 KiB 8-way, L1i 32 KiB 8-way, L2 256 KiB 8-way, L3 8 MiB 16-way
//   inclusive, all with 64-byte lines (Nehalem's shape).
constexpr uint32_t cache_eax(uint32_t type, uint32_t level) {
  return type | (level << 5) | bit(8);
}
constexpr uint32_t cache_ebx(uint32_t ways) { return 63 | (0 << 12) | ((ways - 1) << 22); }
constexpr CpuidRegs kLeaf4[] = {
    {cache_eax(1, 1), cache_ebx(8), 64 - 1, 0},      // L1d: 8*64*64
    {cache_eax(2, 1), cache_ebx(8), 64 - 1, 0},      // L1i: 8*64*64
    {cache_eax(3, 2), cache_ebx(8), 512 - 1, 0},     // L2: 8*64*512
    {cache_eax(3, 3), cache_ebx(16), 8192 - 1, 0x2}, // L3: 16*64*8192
};

// Leaves 3 (serial number), 5 (MONITOR/MWAIT), 6 (thermal and power: no
// ARAT, no turbo) are zeros because the matching feature bits are clear.

// ---- Leaf 7 subleaf 0: structured extended features.  EAX = 0: no further
// subleaves.  EBX/ECX/EDX all zero: no FSGSBASE, BMI, AVX2, ERMS, RDSEED
// (EBX bit 18), ADX, SHA, AVX-512, no speculation-control enumeration.
constexpr CpuidRegs kLeaf7 = {0, 0, 0, 0};

// ---- 0x80000000: maximum extended leaf.  Intel leaves EBX..EDX zero.
constexpr CpuidRegs kExt0 = {kMaxExtLeaf, 0, 0, 0};
// ---- 0x80000001: ECX LAHF/SAHF in 64-bit mode(0); no LZCNT(5) or
// PREFETCHW(8) (x86-64-v3 territory).  EDX SYSCALL(11) NX(20) RDTSCP(27,
// emulated) LM(29); no 1 GiB pages(26).
constexpr CpuidRegs kExt1 = {0, 0, bit(0), bit(11) | bit(20) | bit(27) | bit(29)};

// ---- 0x80000002..4: the brand string, 48 bytes, NUL padded.
constexpr const char kBrand[] = "detux deterministic CPU";
constexpr size_t kBrandLen = sizeof(kBrand) - 1;
static_assert(kBrandLen < 48);
constexpr CpuidRegs brand(uint32_t part) {
  const size_t at = 16 * part;
  return {chars(kBrand, at, kBrandLen), chars(kBrand, at + 4, kBrandLen),
          chars(kBrand, at + 8, kBrandLen), chars(kBrand, at + 12, kBrandLen)};
}

// ---- 0x80000005: reserved on Intel, zeros.
// ---- 0x80000006: L2 in AMD form, matching leaf 4: ECX = size KiB (31:16)
// 256, associativity code (15:12) 6 = 8-way, line (7:0) 64.
constexpr CpuidRegs kExt6 = {0, 0, (256u << 16) | (0x6 << 12) | 64, 0};
// ---- 0x80000007: zeros; in particular no invariant-TSC claim (EDX bit 8).
// ---- 0x80000008: 40 physical, 48 linear address bits; no core count.
constexpr CpuidRegs kExt8 = {40 | (48 << 8), 0, 0, 0};

constexpr CpuidRegs kZero = {0, 0, 0, 0};

}  // namespace

CpuidRegs cpuid_answer(uint32_t leaf, uint32_t subleaf) {
  switch (leaf) {
    case 0x0: return kLeaf0;
    case 0x1: return kLeaf1;
    case 0x2: return kLeaf2;
    case 0x4:
      return subleaf < sizeof kLeaf4 / sizeof kLeaf4[0] ? kLeaf4[subleaf] : kZero;
    case 0x7: return subleaf == 0 ? kLeaf7 : kZero;
    case 0x80000000: return kExt0;
    case 0x80000001: return kExt1;
    case 0x80000002: return brand(0);
    case 0x80000003: return brand(1);
    case 0x80000004: return brand(2);
    case 0x80000006: return kExt6;
    case 0x80000008: return kExt8;
    default: return kZero;  // 3, 5, 6, 0x80000005, 0x80000007, and all unknown
  }
}

TrapInsn decode_trap_insn(const uint8_t* bytes, size_t n, size_t* insn_len) {
  TrapInsn insn = TrapInsn::None;
  size_t len = 0;
  if (bytes != nullptr && n >= 2 && bytes[0] == 0x0F) {
    if (bytes[1] == 0x31) {
      insn = TrapInsn::Rdtsc;
      len = 2;
    } else if (bytes[1] == 0xA2) {
      insn = TrapInsn::Cpuid;
      len = 2;
    } else if (n >= 3 && bytes[1] == 0x01 && bytes[2] == 0xF9) {
      insn = TrapInsn::Rdtscp;
      len = 3;
    }
  }
  if (insn_len != nullptr) *insn_len = len;
  return insn;
}

bool cpuid_faulting_supported() {
  static const bool supported = [] {
    if (syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0) == 0) return true;  // faulting already
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) return false;
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    return true;
  }();
  return supported;
}

bool tsc_faulting_honoured() {
  static const bool honoured = [] {
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
      signal(SIGSEGV, SIG_DFL);
      prctl(PR_SET_DUMPABLE, 0);  // no core file
      prctl(PR_SET_TSC, PR_TSC_SIGSEGV);
      uint32_t lo, hi;
      asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
      _exit(0);
    }
    int st = 0;
    pid_t got;
    while ((got = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {
    }
    return got == pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
  }();
  return honoured;
}

}  // namespace detux::confine
