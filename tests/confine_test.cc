// confine_test.cc: the space filter under a real kernel and a real tracer,
// the filter's policy over whole ranges of numbers (through the reference
// BPF interpreter), the fixed CPUID table, and the trapped-instruction
// decoder.
#include <errno.h>
#include <linux/audit.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "abi.h"
#include "confine/cpuid.h"
#include "confine/filter.h"

namespace detux::confine {
namespace {

constexpr uint32_t kTrace = SECCOMP_RET_TRACE;
constexpr uint32_t kCall = kTrace | abi::kSeccompCall;
constexpr uint32_t kBadArch = kTrace | abi::kSeccompBadArch;
constexpr uint32_t kRefused = kTrace | abi::kSeccompRefused;
constexpr long kX32Bit = 0x40000000;

const std::vector<sock_filter>& space_filter() {
  static const std::vector<sock_filter> prog = build_space_filter();
  return prog;
}

// ---------------------------------------------------------------------------
// A minimal tracer.

// What the tracer sets rax to when it skips a call whose SECCOMP_RET_DATA
// is `data`: the child checks it to prove the call was skipped, not run.
constexpr long skipped_result(unsigned long data) { return 0x1000 + static_cast<long>(data); }

struct SeccompStop {
  unsigned long event_msg;  // PTRACE_GETEVENTMSG
  uint32_t arch;            // PTRACE_GET_SYSCALL_INFO
  uint64_t nr;
  uint32_t ret_data;
};

struct TraceResult {
  std::string error;  // non-empty if tracing itself went wrong
  std::vector<SeccompStop> stops;
  std::vector<int> signals;  // signal-delivery stops other than the first SIGSTOP
  bool exited = false;
  int exit_code = -1;
  int term_signal = 0;
};

// Deliberately not [[noreturn]]: under AddressSanitizer a call to a
// noreturn function first runs __asan_handle_no_return, which makes system
// calls (sigaltstack) that the filter would send to the tracer.
void raw_exit_group(int code) {
  asm volatile("syscall" : : "a"(SYS_exit_group), "D"(code) : "rcx", "r11", "memory");
}

// An i386 system call from 64-bit code: arrives as AUDIT_ARCH_I386.
long int80(long nr, long arg1) {
  long ret;
  asm volatile("int $0x80"
               : "=a"(ret)
               : "a"(nr), "b"(arg1), "c"(0L), "d"(0L)
               : "memory", "r8", "r9", "r10", "r11");
  return ret;
}

// Forks a child that becomes a traced space: PTRACE_TRACEME, SIGSTOP,
// install_filter, then `body`, then exit_group(body's return value).  The
// parent sets TRACESECCOMP|EXITKILL and skips every traced call (orig_rax
// = -1, rax = skipped_result(data)).
TraceResult trace_space(int (*body)()) {
  TraceResult r;
  const std::vector<sock_filter>& prog = space_filter();  // built before fork
  const pid_t pid = fork();
  if (pid < 0) {
    r.error = std::string("fork: ") + strerror(errno);
    return r;
  }
  if (pid == 0) {
    if (ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) _exit(101);
    raise(SIGSTOP);
    const int code = install_filter(prog) == 0 ? body() : 100;
    for (;;) raw_exit_group(code);
  }
  auto fail = [&](const std::string& what) {
    r.error = what + ": " + strerror(errno);
    kill(pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return r;
  };
  auto wait = [&](int* status) {
    pid_t w;
    do w = waitpid(pid, status, 0);
    while (w < 0 && errno == EINTR);
    return w == pid;
  };
  int status;
  if (!wait(&status)) return fail("waitpid");
  if (!WIFSTOPPED(status) || WSTOPSIG(status) != SIGSTOP) {
    errno = 0;
    return fail("child did not stop with SIGSTOP, status " + std::to_string(status));
  }
  if (ptrace(PTRACE_SETOPTIONS, pid, nullptr,
             reinterpret_cast<void*>(PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL)) != 0) {
    return fail("PTRACE_SETOPTIONS");
  }
  if (ptrace(PTRACE_CONT, pid, nullptr, nullptr) != 0) return fail("PTRACE_CONT");
  for (int events = 0; events < 64; ++events) {
    if (!wait(&status)) return fail("waitpid");
    if (WIFEXITED(status)) {
      r.exited = true;
      r.exit_code = WEXITSTATUS(status);
      return r;
    }
    if (WIFSIGNALED(status)) {
      r.term_signal = WTERMSIG(status);
      return r;
    }
    if (!WIFSTOPPED(status)) continue;
    if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
      SeccompStop s{};
      if (ptrace(PTRACE_GETEVENTMSG, pid, nullptr, &s.event_msg) != 0) {
        return fail("PTRACE_GETEVENTMSG");
      }
      __ptrace_syscall_info info{};  // glibc's copy of the kernel struct
      if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, reinterpret_cast<void*>(sizeof info), &info) <= 0) {
        return fail("PTRACE_GET_SYSCALL_INFO");
      }
      if (info.op != PTRACE_SYSCALL_INFO_SECCOMP) {
        errno = 0;
        return fail("syscall info op " + std::to_string(info.op));
      }
      s.arch = info.arch;
      s.nr = info.seccomp.nr;
      s.ret_data = info.seccomp.ret_data;
      r.stops.push_back(s);
      user_regs_struct regs;
      if (ptrace(PTRACE_GETREGS, pid, nullptr, &regs) != 0) return fail("PTRACE_GETREGS");
      regs.orig_rax = static_cast<unsigned long long>(-1);  // skip the call
      regs.rax = static_cast<unsigned long long>(skipped_result(s.event_msg));
      if (ptrace(PTRACE_SETREGS, pid, nullptr, &regs) != 0) return fail("PTRACE_SETREGS");
      if (ptrace(PTRACE_CONT, pid, nullptr, nullptr) != 0) return fail("PTRACE_CONT");
    } else {
      const int sig = WSTOPSIG(status);
      r.signals.push_back(sig);
      if (ptrace(PTRACE_CONT, pid, nullptr, reinterpret_cast<void*>(static_cast<long>(sig))) != 0) {
        return fail("PTRACE_CONT(signal)");
      }
    }
  }
  errno = 0;
  return fail("child still running after 64 events");
}

// Child bodies: only raw system calls after install_filter.  Each returns 7
// if every call came back with the tracer's marker, another code otherwise.

int body_detux_call() {
  long r = syscall(abi::kSyscallNr, abi::kOpRet, 1, 2, 3, 4, 5);
  return r == skipped_result(abi::kSeccompCall) ? 7 : 21;
}

int body_getpid() {
  long r = syscall(SYS_getpid);
  return r == skipped_result(abi::kSeccompRefused) ? 7 : 22;
}

int body_x32_getpid() {
  long r = syscall(kX32Bit | SYS_getpid);
  return r == skipped_result(abi::kSeccompBadArch) ? 7 : 23;
}

int body_int80_getpid() {
  long r = int80(20, 0);  // i386 getpid
  return static_cast<int32_t>(r) == skipped_result(abi::kSeccompBadArch) ? 7 : 24;
}

int body_exit_only() {
  syscall(SYS_exit, 9);  // single thread: ends the process
  return 98;
}

int body_all_in_order() {
  if (syscall(abi::kSyscallNr, abi::kOpGet, 0, 0, 0, 0, 0) != skipped_result(abi::kSeccompCall)) {
    return 31;
  }
  if (syscall(SYS_getpid) != skipped_result(abi::kSeccompRefused)) return 32;
  if (syscall(kX32Bit | SYS_getpid) != skipped_result(abi::kSeccompBadArch)) return 33;
  if (static_cast<int32_t>(int80(20, 0)) != skipped_result(abi::kSeccompBadArch)) return 34;
  return 7;
}

void expect_stop(const SeccompStop& s, uint32_t arch, uint64_t nr, unsigned long data) {
  EXPECT_EQ(s.event_msg, data);
  EXPECT_EQ(s.ret_data, data);  // PTRACE_GET_SYSCALL_INFO agrees with GETEVENTMSG
  EXPECT_EQ(s.arch, arch);
  EXPECT_EQ(s.nr, nr);
}

// True if this kernel refuses int 0x80 outright (IA32 emulation disabled):
// the child then dies of SIGSEGV before seccomp ever sees the call.
bool int80_unavailable(const TraceResult& r) {
  return r.stops.empty() && !r.signals.empty() && r.signals[0] == SIGSEGV;
}

TEST(SpaceFilter, DetuxCallStopsInTracerAsCall) {
  TraceResult r = trace_space(body_detux_call);
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(r.stops.size(), 1u);
  expect_stop(r.stops[0], AUDIT_ARCH_X86_64, abi::kSyscallNr, abi::kSeccompCall);
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 7) << "the skipped call did not return the tracer's rax";
}

TEST(SpaceFilter, OrdinaryLinuxCallIsRefusedAndSkippable) {
  TraceResult r = trace_space(body_getpid);
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(r.stops.size(), 1u);
  expect_stop(r.stops[0], AUDIT_ARCH_X86_64, SYS_getpid, abi::kSeccompRefused);
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 7) << "getpid was not skipped";
}

TEST(SpaceFilter, X32NumberIsBadArch) {
  TraceResult r = trace_space(body_x32_getpid);
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(r.stops.size(), 1u);
  expect_stop(r.stops[0], AUDIT_ARCH_X86_64, kX32Bit | SYS_getpid, abi::kSeccompBadArch);
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 7);
}

TEST(SpaceFilter, Int80CallIsBadArch) {
  TraceResult r = trace_space(body_int80_getpid);
  ASSERT_EQ(r.error, "");
  if (int80_unavailable(r)) GTEST_SKIP() << "kernel has IA32 emulation disabled";
  ASSERT_EQ(r.stops.size(), 1u);
  expect_stop(r.stops[0], AUDIT_ARCH_I386, 20, abi::kSeccompBadArch);
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 7);
}

TEST(SpaceFilter, ExitGroupPassesThroughWithItsStatus) {
  // body_detux_call ends with exit_group(7); only the detux call stops.
  TraceResult r = trace_space(body_detux_call);
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.stops.size(), 1u);
  EXPECT_TRUE(r.signals.empty());
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 7);
}

TEST(SpaceFilter, ExitPassesThroughWithoutAStop) {
  TraceResult r = trace_space(body_exit_only);
  ASSERT_EQ(r.error, "");
  EXPECT_TRUE(r.stops.empty());
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 9);
}

TEST(SpaceFilter, EachKindOfCallInOneSpaceThenExitGroup7) {
  TraceResult r = trace_space(body_all_in_order);
  ASSERT_EQ(r.error, "");
  if (r.stops.size() == 3 && !r.signals.empty() && r.signals[0] == SIGSEGV) {
    GTEST_SKIP() << "kernel has IA32 emulation disabled";
  }
  ASSERT_EQ(r.stops.size(), 4u);
  expect_stop(r.stops[0], AUDIT_ARCH_X86_64, abi::kSyscallNr, abi::kSeccompCall);
  expect_stop(r.stops[1], AUDIT_ARCH_X86_64, SYS_getpid, abi::kSeccompRefused);
  expect_stop(r.stops[2], AUDIT_ARCH_X86_64, kX32Bit | SYS_getpid, abi::kSeccompBadArch);
  expect_stop(r.stops[3], AUDIT_ARCH_I386, 20, abi::kSeccompBadArch);
  EXPECT_TRUE(r.signals.empty());
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 7);
}

TEST(SpaceFilter, InstallRejectsAnEmptyProgram) {
  EXPECT_EQ(install_filter({}), -EINVAL);
}

// ---------------------------------------------------------------------------
// The policy over whole ranges, through the reference interpreter.

uint32_t run(uint32_t arch, uint32_t nr, uint64_t ip = 0x401000, uint64_t arg = 0) {
  seccomp_data d{};
  d.arch = arch;
  d.nr = static_cast<int>(nr);
  d.instruction_pointer = ip;
  for (auto& a : d.args) a = arg;
  return evaluate_filter(space_filter(), d);
}

TEST(SpaceFilterPolicy, ExportedProgramIsAValidSizedBpfProgram) {
  const auto& prog = space_filter();
  EXPECT_GT(prog.size(), 0u);
  EXPECT_LE(prog.size(), static_cast<size_t>(BPF_MAXINSNS));
  EXPECT_EQ(BPF_CLASS(prog.back().code), BPF_RET);
}

// Linux emulates a new filter for every call number until its first load of
// a field other than nr and arch; the space filter's first instruction is
// such a load, so installing it in every birth skips ~900 emulations.
TEST(SpaceFilterPolicy, FirstInstructionLoadsTheInstructionPointer) {
  const std::vector<sock_filter> load = detux::confine::build_load_filter();
  for (const auto* prog : {&space_filter(), &load}) {
    ASSERT_FALSE(prog->empty());
    EXPECT_EQ((*prog)[0].code, BPF_LD | BPF_W | BPF_ABS);
    EXPECT_EQ((*prog)[0].k, offsetof(seccomp_data, instruction_pointer));
  }
}

TEST(SpaceFilterPolicy, EveryX86_64NumberIsSortedIntoItsBin) {
  for (uint32_t nr = 0; nr < 0x10000; ++nr) {
    uint32_t want = kRefused;
    if (nr == abi::kSyscallNr) want = kCall;
    if (nr == SYS_exit || nr == SYS_exit_group || nr == SYS_rt_sigreturn) want = SECCOMP_RET_ALLOW;
    if (confine::is_emulated_call(nr)) want = SECCOMP_RET_TRAP;
    ASSERT_EQ(run(AUDIT_ARCH_X86_64, nr), want) << "nr " << nr;
  }
}

TEST(SpaceFilterPolicy, X32NumbersAreBadArchIncludingExitAndDetux) {
  for (uint32_t nr = 0; nr < 0x1000; ++nr) {
    ASSERT_EQ(run(AUDIT_ARCH_X86_64, kX32Bit | nr), kBadArch) << "x32 nr " << nr;
  }
  EXPECT_EQ(run(AUDIT_ARCH_X86_64, kX32Bit | SYS_exit), kBadArch);
  EXPECT_EQ(run(AUDIT_ARCH_X86_64, kX32Bit | SYS_exit_group), kBadArch);
  EXPECT_EQ(run(AUDIT_ARCH_X86_64, kX32Bit | abi::kSyscallNr), kBadArch);
  EXPECT_EQ(run(AUDIT_ARCH_X86_64, 0x7fffffff), kBadArch);
}

TEST(SpaceFilterPolicy, OtherArchesAreBadArchEvenForTheirExit) {
  for (uint32_t arch : {uint32_t{AUDIT_ARCH_I386}, uint32_t{AUDIT_ARCH_AARCH64}, 0u}) {
    for (uint32_t nr = 0; nr < 0x1000; ++nr) {
      ASSERT_EQ(run(arch, nr), kBadArch) << "arch " << arch << " nr " << nr;
    }
  }
  EXPECT_EQ(run(AUDIT_ARCH_I386, 1), kBadArch);    // i386 exit
  EXPECT_EQ(run(AUDIT_ARCH_I386, 252), kBadArch);  // i386 exit_group
}

TEST(SpaceFilterPolicy, MinusOneIsNeverAllowed) {
  const uint32_t got = run(AUDIT_ARCH_X86_64, 0xffffffffu);
  EXPECT_TRUE(got == kRefused || got == kBadArch) << got;
}

TEST(SpaceFilterPolicy, ArgumentsAndInstructionPointerDoNotMatter) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, ~uint64_t{0}, uint64_t{0x8000000000000000}}) {
    EXPECT_EQ(run(AUDIT_ARCH_X86_64, abi::kSyscallNr, v, v), kCall);
    EXPECT_EQ(run(AUDIT_ARCH_X86_64, SYS_exit_group, v, v), SECCOMP_RET_ALLOW);
    EXPECT_EQ(run(AUDIT_ARCH_X86_64, SYS_getpid, v, v), kRefused);
    EXPECT_EQ(run(AUDIT_ARCH_X86_64, SYS_read, v, v), SECCOMP_RET_TRAP);
  }
}

TEST(EvaluateFilter, RunsAHandWrittenProgram) {
  // if (nr == 5) return 0x1234 else return A (= nr) + 1
  std::vector<sock_filter> prog = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 5, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0x1234),
      BPF_STMT(BPF_ALU | BPF_ADD | BPF_K, 1),
      BPF_STMT(BPF_RET | BPF_A, 0),
  };
  seccomp_data d{};
  d.nr = 5;
  EXPECT_EQ(evaluate_filter(prog, d), 0x1234u);
  d.nr = 41;
  EXPECT_EQ(evaluate_filter(prog, d), 42u);
}

TEST(EvaluateFilter, MalformedProgramsKill) {
  seccomp_data d{};
  EXPECT_EQ(evaluate_filter({}, d), SECCOMP_RET_KILL_PROCESS);
  // Falls off the end.
  EXPECT_EQ(evaluate_filter({BPF_STMT(BPF_LD | BPF_W | BPF_IMM, 1)}, d), SECCOMP_RET_KILL_PROCESS);
  // Load beyond seccomp_data.
  EXPECT_EQ(evaluate_filter({BPF_STMT(BPF_LD | BPF_W | BPF_ABS, sizeof(seccomp_data)),
                             BPF_STMT(BPF_RET | BPF_K, 0)},
                            d),
            SECCOMP_RET_KILL_PROCESS);
  // Jump past the end.
  EXPECT_EQ(evaluate_filter({BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0), BPF_STMT(BPF_RET | BPF_K, 0)}, d),
            SECCOMP_RET_KILL_PROCESS);
}

// ---------------------------------------------------------------------------
// CPUID table.

std::string regs_string(std::initializer_list<uint32_t> words) {
  std::string s;
  for (uint32_t w : words) {
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((w >> (8 * i)) & 0xff));
  }
  return s;
}

bool has(uint32_t reg, unsigned bit) { return (reg >> bit) & 1; }

TEST(Cpuid, VendorIsGenuineIntelWithMaxBasicLeaf7) {
  const CpuidRegs r = cpuid_answer(0, 0);
  EXPECT_EQ(r.eax, 7u);
  EXPECT_EQ(regs_string({r.ebx, r.edx, r.ecx}), "GenuineIntel");
}

TEST(Cpuid, FamilyIs6) {
  const uint32_t eax = cpuid_answer(1, 0).eax;
  const uint32_t family = (eax >> 8) & 0xf;
  const uint32_t ext_family = (eax >> 20) & 0xff;
  EXPECT_EQ(family, 6u);
  EXPECT_EQ(ext_family, 0u);
}

TEST(Cpuid, RdrandAndRdseedAreAbsent) {
  EXPECT_FALSE(has(cpuid_answer(1, 0).ecx, 30)) << "RDRAND";
  EXPECT_FALSE(has(cpuid_answer(7, 0).ebx, 18)) << "RDSEED";
}

TEST(Cpuid, NoAvxXsaveHypervisorOrTscDeadline) {
  const CpuidRegs l1 = cpuid_answer(1, 0);
  EXPECT_FALSE(has(l1.ecx, 28)) << "AVX";
  EXPECT_FALSE(has(l1.ecx, 27)) << "OSXSAVE";
  EXPECT_FALSE(has(l1.ecx, 26)) << "XSAVE";
  EXPECT_FALSE(has(l1.ecx, 31)) << "hypervisor";
  EXPECT_FALSE(has(l1.ecx, 24)) << "TSC-deadline";
  EXPECT_FALSE(has(l1.ecx, 12)) << "FMA";
  EXPECT_FALSE(has(l1.edx, 28)) << "HTT";
  const CpuidRegs l7 = cpuid_answer(7, 0);
  EXPECT_FALSE(has(l7.ebx, 5)) << "AVX2";
  EXPECT_FALSE(has(l7.ebx, 16)) << "AVX-512F";
  EXPECT_FALSE(has(l7.ebx, 0)) << "FSGSBASE";
  EXPECT_EQ(cpuid_answer(0xD, 0).eax, 0u) << "no XSAVE leaf";
  EXPECT_EQ(cpuid_answer(0x40000000, 0).eax, 0u) << "no hypervisor leaves";
}

TEST(Cpuid, AdvertisesX86_64V2Baseline) {
  const CpuidRegs l1 = cpuid_answer(1, 0);
  for (unsigned b : {0u, 9u, 13u, 19u, 20u, 23u}) {  // SSE3 SSSE3 CX16 SSE4.1 SSE4.2 POPCNT
    EXPECT_TRUE(has(l1.ecx, b)) << "leaf 1 ecx bit " << b;
  }
  for (unsigned b : {0u, 4u, 8u, 15u, 23u, 24u, 25u, 26u}) {  // FPU TSC CX8 CMOV MMX FXSR SSE SSE2
    EXPECT_TRUE(has(l1.edx, b)) << "leaf 1 edx bit " << b;
  }
  const CpuidRegs e1 = cpuid_answer(0x80000001, 0);
  EXPECT_TRUE(has(e1.ecx, 0)) << "LAHF/SAHF";
  EXPECT_TRUE(has(e1.edx, 29)) << "LM";
  EXPECT_TRUE(has(e1.edx, 27)) << "RDTSCP (emulated)";
}

TEST(Cpuid, ApicIdsAreZero) {
  EXPECT_EQ(cpuid_answer(1, 0).ebx >> 24, 0u);
  for (uint32_t sub = 0; sub < 8; ++sub) {
    EXPECT_EQ(cpuid_answer(4, sub).eax >> 14, 0u) << "leaf 4 sharing/core fields";
  }
  EXPECT_EQ(cpuid_answer(0xB, 0).edx, 0u) << "no x2APIC topology leaf";
}

TEST(Cpuid, ExtendedLeavesEndAt80000008WithFixedBrand) {
  EXPECT_EQ(cpuid_answer(0x80000000, 0).eax, 0x80000008u);
  std::string brand;
  for (uint32_t leaf = 0x80000002; leaf <= 0x80000004; ++leaf) {
    const CpuidRegs r = cpuid_answer(leaf, 0);
    brand += regs_string({r.eax, r.ebx, r.ecx, r.edx});
  }
  ASSERT_EQ(brand.size(), 48u);
  EXPECT_EQ(std::string(brand.c_str()), "detux deterministic CPU");
  EXPECT_EQ(brand.back(), '\0');
}

TEST(Cpuid, UnknownLeavesAndSubleavesAreZero) {
  for (uint32_t leaf : {0x3u, 0x5u, 0x6u, 0x8u, 0xBu, 0xDu, 0x14u, 0x1Fu, 0x40000000u,
                        0x40000001u, 0x80000005u, 0x80000007u, 0x80000009u, 0x8000001Fu,
                        0xC0000000u, 0xFFFFFFFFu}) {
    const CpuidRegs r = cpuid_answer(leaf, 0);
    EXPECT_EQ(r.eax | r.ebx | r.ecx | r.edx, 0u) << std::hex << "leaf 0x" << leaf;
  }
  const CpuidRegs l7s1 = cpuid_answer(7, 1);
  EXPECT_EQ(l7s1.eax | l7s1.ebx | l7s1.ecx | l7s1.edx, 0u);
  const CpuidRegs l4s4 = cpuid_answer(4, 4);
  EXPECT_EQ(l4s4.eax | l4s4.ebx | l4s4.ecx | l4s4.edx, 0u);
}

TEST(Cpuid, CacheLeafDescribesFourCachesThenEnds) {
  const uint64_t want_size[] = {32 << 10, 32 << 10, 256 << 10, 8 << 20};
  const uint32_t want_type[] = {1, 2, 3, 3}, want_level[] = {1, 1, 2, 3};
  for (uint32_t sub = 0; sub < 4; ++sub) {
    const CpuidRegs r = cpuid_answer(4, sub);
    EXPECT_EQ(r.eax & 0x1f, want_type[sub]);
    EXPECT_EQ((r.eax >> 5) & 7, want_level[sub]);
    const uint64_t ways = (r.ebx >> 22) + 1, parts = ((r.ebx >> 12) & 0x3ff) + 1,
                   line = (r.ebx & 0xfff) + 1, sets = uint64_t{r.ecx} + 1;
    EXPECT_EQ(line, 64u);
    EXPECT_EQ(ways * parts * line * sets, want_size[sub]) << "subleaf " << sub;
  }
  EXPECT_EQ(cpuid_answer(4, 4).eax & 0x1f, 0u);
  EXPECT_EQ(cpuid_answer(2, 0).eax, 0x0000FF01u) << "leaf 2 defers to leaf 4";
}

TEST(Cpuid, AnswersAreFixedConstants) {
  // Golden values: a change here changes what every program sees, on
  // purpose or not.
  struct Golden {
    uint32_t leaf, sub;
    CpuidRegs want;
  };
  const Golden golden[] = {
      {0x0, 0, {0x7, 0x756e6547, 0x6c65746e, 0x49656e69}},
      {0x1, 0, {0x000106A5, 0x00010800, 0x00982201, 0x078BFBFF}},
      {0x7, 0, {0, 0, 0, 0}},
      {0x80000000, 0, {0x80000008, 0, 0, 0}},
      {0x80000001, 0, {0, 0, 0x1, 0x28100800}},
      {0x80000008, 0, {0x3028, 0, 0, 0}},
  };
  for (const Golden& g : golden) {
    // Leaf 7 is subleaf-indexed; the others ignore the subleaf.
    const std::vector<uint32_t> subs =
        g.leaf == 7 ? std::vector<uint32_t>{g.sub} : std::vector<uint32_t>{g.sub, 5, 0xffffffff};
    for (uint32_t sub : subs) {
      const CpuidRegs r = cpuid_answer(g.leaf, sub);
      EXPECT_EQ(r.eax, g.want.eax) << std::hex << g.leaf;
      EXPECT_EQ(r.ebx, g.want.ebx) << std::hex << g.leaf;
      EXPECT_EQ(r.ecx, g.want.ecx) << std::hex << g.leaf;
      EXPECT_EQ(r.edx, g.want.edx) << std::hex << g.leaf;
    }
  }
}

TEST(Cpuid, RepeatedQueriesGiveIdenticalAnswers) {
  for (uint32_t leaf : {0u, 1u, 2u, 4u, 7u, 0x80000000u, 0x80000002u, 0x80000006u}) {
    const CpuidRegs a = cpuid_answer(leaf, 0), b = cpuid_answer(leaf, 0);
    EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << leaf;
  }
}

// ---------------------------------------------------------------------------
// Trapped-instruction decoder.

TrapInsn decode(std::initializer_list<uint8_t> bytes, size_t* len) {
  std::vector<uint8_t> v(bytes);
  return decode_trap_insn(v.data(), v.size(), len);
}

TEST(DecodeTrapInsn, RecognisesRdtscRdtscpAndCpuidWithLengths) {
  size_t len = 99;
  EXPECT_EQ(decode({0x0F, 0x31}, &len), TrapInsn::Rdtsc);
  EXPECT_EQ(len, 2u);
  EXPECT_EQ(decode({0x0F, 0x01, 0xF9}, &len), TrapInsn::Rdtscp);
  EXPECT_EQ(len, 3u);
  EXPECT_EQ(decode({0x0F, 0xA2}, &len), TrapInsn::Cpuid);
  EXPECT_EQ(len, 2u);
}

TEST(DecodeTrapInsn, IgnoresBytesAfterTheInstruction) {
  size_t len = 0;
  EXPECT_EQ(decode({0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20}, &len), TrapInsn::Rdtsc);
  EXPECT_EQ(len, 2u);
  EXPECT_EQ(decode({0x0F, 0x01, 0xF9, 0x90, 0x90}, &len), TrapInsn::Rdtscp);
  EXPECT_EQ(len, 3u);
}

TEST(DecodeTrapInsn, TruncatedInstructionIsNone) {
  size_t len = 99;
  EXPECT_EQ(decode({}, &len), TrapInsn::None);
  EXPECT_EQ(len, 0u);
  EXPECT_EQ(decode({0x0F}, &len), TrapInsn::None);
  EXPECT_EQ(decode({0x0F, 0x01}, &len), TrapInsn::None);
  EXPECT_EQ(len, 0u);
  EXPECT_EQ(decode_trap_insn(nullptr, 0, &len), TrapInsn::None);
}

TEST(DecodeTrapInsn, PrefixedFormsAreNone) {
  size_t len = 99;
  EXPECT_EQ(decode({0x66, 0x0F, 0xA2}, &len), TrapInsn::None);
  EXPECT_EQ(decode({0xF3, 0x0F, 0x31}, &len), TrapInsn::None);
  EXPECT_EQ(decode({0x48, 0x0F, 0x31}, &len), TrapInsn::None);  // REX.W
  EXPECT_EQ(decode({0x2E, 0x0F, 0x01, 0xF9}, &len), TrapInsn::None);
  EXPECT_EQ(len, 0u);
}

TEST(DecodeTrapInsn, NeighbouringOpcodesAreNone) {
  size_t len = 99;
  EXPECT_EQ(decode({0x0F, 0x05}, &len), TrapInsn::None);        // syscall
  EXPECT_EQ(decode({0x0F, 0x01, 0xF8}, &len), TrapInsn::None);  // swapgs
  EXPECT_EQ(decode({0x0F, 0x01, 0xD0}, &len), TrapInsn::None);  // xgetbv
  EXPECT_EQ(decode({0x0F, 0x33}, &len), TrapInsn::None);        // rdpmc
  EXPECT_EQ(decode({0x0F, 0xC7, 0xF0}, &len), TrapInsn::None);  // rdrand eax
  EXPECT_EQ(decode({0x31, 0x0F}, &len), TrapInsn::None);
  EXPECT_EQ(len, 0u);
}

TEST(DecodeTrapInsn, LengthPointerMayBeNull) {
  const uint8_t cpuid[] = {0x0F, 0xA2};
  EXPECT_EQ(decode_trap_insn(cpuid, sizeof cpuid, nullptr), TrapInsn::Cpuid);
}

}  // namespace
}  // namespace detux::confine
