// filter.cc: builds, checks and installs the space filter (see filter.h).
#include "confine/filter.h"

#include <dlfcn.h>
#include <errno.h>
#include <linux/audit.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>

#include "abi.h"
#include "util/fd.h"

#if !defined(__x86_64__) || defined(__ILP32__)
#error "detux spaces are x86_64 (LP64) only"
#endif

namespace detux::confine {

bool is_emulated_call(long nr) {
  for (int e : kEmulatedCalls)
    if (e == nr) return true;
  return false;
}

namespace {

constexpr uint32_t kX32Bit = 0x40000000U;  // __X32_SYSCALL_BIT

constexpr uint32_t trace(uint16_t data) { return SECCOMP_RET_TRACE | data; }

// The policy of filter.h written out directly, for the self-check.  Defined
// for every input the self-check feeds it (see check_policy).
uint32_t policy(const seccomp_data& d, bool load) {
  if (d.arch != AUDIT_ARCH_X86_64) return trace(abi::kSeccompBadArch);
  const uint32_t nr = static_cast<uint32_t>(d.nr);
  if (nr & kX32Bit) return trace(abi::kSeccompBadArch);
  if (nr == __NR_exit || nr == __NR_exit_group || nr == __NR_rt_sigreturn) return SECCOMP_RET_ALLOW;
  if (load) {
    for (int a : kLoadAllowedCalls)
      if (static_cast<uint32_t>(a) == nr) return SECCOMP_RET_ALLOW;
    return trace(abi::kSeccompLoad);
  }
  if (nr == static_cast<uint32_t>(abi::kSyscallNr)) return trace(abi::kSeccompCall);
  if (is_emulated_call(nr)) return SECCOMP_RET_TRAP;
  return trace(abi::kSeccompRefused);
}

// Runs `prog` against the policy on every x86_64 number below 0x1000, every
// x32 number below 0x40001000 plus a few high ones, and i386 and other
// arches with low numbers (i386 exit = 1 and exit_group = 252 included: they
// must NOT be allowed).  Numbers with bit 31 set are left out: the policy
// does not care how they are sorted as long as they are never allowed, and
// nr == -1 (libseccomp sends it to the default action) is checked for that.
void check_policy(const std::vector<sock_filter>& prog, bool load) {
  auto expect = [&](uint32_t arch, uint32_t nr) {
    seccomp_data d{};
    d.arch = arch;
    d.nr = static_cast<int>(nr);
    d.instruction_pointer = 0x401000;
    for (int i = 0; i < 6; ++i) d.args[i] = 0x1111111111111111ULL * (i + 1);
    const uint32_t want = policy(d, load), got = evaluate_filter(prog, d);
    if (got != want) {
      throw std::runtime_error(
          "detux: exported seccomp filter breaks the space policy: arch " +
          std::to_string(arch) + " nr " + std::to_string(nr) + " gives " +
          std::to_string(got) + ", want " + std::to_string(want));
    }
  };
  for (uint32_t nr = 0; nr < 0x1000; ++nr) {
    expect(AUDIT_ARCH_X86_64, nr);
    expect(AUDIT_ARCH_X86_64, nr | kX32Bit);
  }
  for (uint32_t nr : {0x3fffffffU, 0x7fffffffU, 0x40000000U | 0xde7U}) {
    expect(AUDIT_ARCH_X86_64, nr);
  }
  for (uint32_t arch : {uint32_t{AUDIT_ARCH_I386}, 0U, uint32_t{AUDIT_ARCH_AARCH64},
                        AUDIT_ARCH_X86_64 ^ 1U}) {
    for (uint32_t nr = 0; nr < 0x200; ++nr) expect(arch, nr);
    expect(arch, static_cast<uint32_t>(abi::kSyscallNr));
  }
  seccomp_data minus_one{};
  minus_one.arch = AUDIT_ARCH_X86_64;
  minus_one.nr = -1;
  const uint32_t got = evaluate_filter(prog, minus_one);
  if (got != trace(load ? abi::kSeccompLoad : abi::kSeccompRefused) &&
      got != trace(abi::kSeccompBadArch)) {
    throw std::runtime_error("detux: exported seccomp filter mishandles nr -1");
  }
}

void check(int rc, const char* what) {
  if (rc < 0) throw std::system_error(-rc, std::generic_category(), what);
}

// libseccomp, opened for as long as a filter is being built.  It is needed
// once per process, and linked it would be five more mappings in the master
// for good, which every fork and every space's exit pays for (as elfutils
// would: rt/names_module.cc).
struct Libseccomp {
  void* handle = dlopen("libseccomp.so.2", RTLD_NOW | RTLD_LOCAL);
  template <typename F>
  F* get(const char* name) {
    void* f = handle ? dlsym(handle, name) : nullptr;
    if (!f) throw std::runtime_error(std::string("detux: cannot load libseccomp.so.2: ") + name);
    return reinterpret_cast<F*>(f);
  }
  decltype(&seccomp_arch_native) arch_native = get<decltype(seccomp_arch_native)>("seccomp_arch_native");
  decltype(&seccomp_init) init = get<decltype(seccomp_init)>("seccomp_init");
  decltype(&seccomp_release) release = get<decltype(seccomp_release)>("seccomp_release");
  decltype(&seccomp_attr_set) attr_set = get<decltype(seccomp_attr_set)>("seccomp_attr_set");
  decltype(&seccomp_rule_add_exact) rule_add_exact =
      get<decltype(seccomp_rule_add_exact)>("seccomp_rule_add_exact");
  decltype(&seccomp_export_bpf) export_bpf = get<decltype(seccomp_export_bpf)>("seccomp_export_bpf");
  Libseccomp() = default;
  Libseccomp(const Libseccomp&) = delete;
  Libseccomp& operator=(const Libseccomp&) = delete;
  ~Libseccomp() {
    if (handle) dlclose(handle);
  }
};

}  // namespace

namespace {

std::vector<sock_filter> build_filter(bool load) {
  Libseccomp lib;
  if (lib.arch_native() != SCMP_ARCH_X86_64) {
    throw std::runtime_error("detux: libseccomp native arch is not x86_64");
  }
  // Default: everything not named below is a refused Linux call (or, while
  // loading, a call the supervisor vets).
  auto release = [&lib](void* c) { lib.release(c); };
  std::unique_ptr<void, decltype(release)> ctx(
      lib.init(trace(load ? abi::kSeccompLoad : abi::kSeccompRefused)), release);
  if (!ctx) throw std::runtime_error("detux: seccomp_init failed");
  // Any arch other than the filter's single arch (x86_64): i386 via int 0x80.
  check(lib.attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, trace(abi::kSeccompBadArch)),
        "seccomp_attr_set(ACT_BADARCH)");
  // _exact: the number is taken as-is on the native arch, no translation.
  if (!load)
    check(lib.rule_add_exact(ctx.get(), trace(abi::kSeccompCall),
                                 static_cast<int>(abi::kSyscallNr), 0),
          "seccomp_rule_add(detux call)");
  check(lib.rule_add_exact(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(exit), 0),
        "seccomp_rule_add(exit)");
  check(lib.rule_add_exact(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(exit_group), 0),
        "seccomp_rule_add(exit_group)");
  check(lib.rule_add_exact(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(rt_sigreturn), 0),
        "seccomp_rule_add(rt_sigreturn)");
  if (load)
    for (int nr : kLoadAllowedCalls)
      check(lib.rule_add_exact(ctx.get(), SCMP_ACT_ALLOW, nr, 0), "seccomp_rule_add(load)");
  for (int nr : kEmulatedCalls)
    if (!load)
      check(lib.rule_add_exact(ctx.get(), SCMP_ACT_TRAP, nr, 0), "seccomp_rule_add(emulated)");
  // x32 numbers: no rule needed, libseccomp routes nr >= 0x40000000 (except
  // -1) to the bad-arch action when x32 is not in the filter; check_policy
  // below verifies it.

  // libseccomp 2.5.4 can only export to a file descriptor.
  OwnedFd mem{memfd_create("detux-space-filter", MFD_CLOEXEC)};
  if (mem.fd < 0) throw std::system_error(errno, std::generic_category(), "memfd_create");
  check(lib.export_bpf(ctx.get(), mem.fd), "seccomp_export_bpf");
  struct stat st;
  if (fstat(mem.fd, &st) != 0) throw std::system_error(errno, std::generic_category(), "fstat");
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0 || size % sizeof(sock_filter) != 0 ||
      size / sizeof(sock_filter) > BPF_MAXINSNS) {
    throw std::runtime_error("detux: seccomp_export_bpf wrote " + std::to_string(size) +
                             " bytes, not a BPF program");
  }
  std::vector<sock_filter> prog(size / sizeof(sock_filter));
  auto* out = reinterpret_cast<char*>(prog.data());
  for (size_t done = 0; done < size;) {
    ssize_t n = pread(mem.fd, out + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::system_error(n < 0 ? errno : EIO, std::generic_category(), "pread");
    done += static_cast<size_t>(n);
  }
  // Attaching a filter, Linux emulates it for every system call number of
  // every arch (about 900 runs) to find the calls it always allows, and
  // stops a run at the first load of anything but nr and arch.  Here that
  // would find exit, exit_group and rt_sigreturn at best, for half the cost
  // of the seccomp call in every birth (about 50 of 100 us measured here): a
  // first load of the instruction pointer, which the program overwrites at
  // once, ends each run there.
  prog.insert(prog.begin(), sock_filter BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                                 offsetof(seccomp_data, instruction_pointer)));
  if (prog.size() > BPF_MAXINSNS) throw std::runtime_error("detux: seccomp filter too long");
  check_policy(prog, load);
  return prog;
}

}  // namespace

std::vector<sock_filter> build_space_filter() { return build_filter(false); }
std::vector<sock_filter> build_load_filter() { return build_filter(true); }

long install_filter(const std::vector<sock_filter>& prog) {
  // No allocation, no locks, no libc state beyond errno: this runs between
  // fork and the space's first instruction.
  if (prog.empty() || prog.size() > BPF_MAXINSNS) return -EINVAL;
  sock_fprog fprog;
  fprog.len = static_cast<unsigned short>(prog.size());
  fprog.filter = const_cast<sock_filter*>(prog.data());
  if (prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL) != 0) return -errno;
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0UL, &fprog) != 0) return -errno;
  return 0;
}

uint32_t evaluate_filter(const std::vector<sock_filter>& prog, const seccomp_data& data) {
  constexpr uint32_t kReject = SECCOMP_RET_KILL_PROCESS;
  if (prog.empty() || prog.size() > BPF_MAXINSNS) return kReject;
  unsigned char bytes[sizeof(seccomp_data)];
  std::memcpy(bytes, &data, sizeof bytes);
  uint32_t a = 0, x = 0, mem[BPF_MEMWORDS] = {};
  const size_t n = prog.size();
  for (size_t pc = 0; pc < n; ++pc) {
    const sock_filter& f = prog[pc];
    const uint32_t k = f.k;
    switch (BPF_CLASS(f.code)) {
      case BPF_LD:
      case BPF_LDX: {
        uint32_t v;
        const bool ld = BPF_CLASS(f.code) == BPF_LD;
        switch (BPF_MODE(f.code)) {
          case BPF_ABS:  // seccomp: aligned 32-bit loads inside seccomp_data only
            if (!ld || BPF_SIZE(f.code) != BPF_W || k % 4 != 0 || k > sizeof bytes - 4) {
              return kReject;
            }
            std::memcpy(&v, bytes + k, 4);
            break;
          case BPF_IMM: v = k; break;
          case BPF_MEM:
            if (k >= BPF_MEMWORDS) return kReject;
            v = mem[k];
            break;
          case BPF_LEN: v = sizeof(seccomp_data); break;
          default: return kReject;
        }
        (ld ? a : x) = v;
        break;
      }
      case BPF_ST:
      case BPF_STX:
        if (k >= BPF_MEMWORDS) return kReject;
        mem[k] = BPF_CLASS(f.code) == BPF_ST ? a : x;
        break;
      case BPF_ALU: {
        const uint32_t src = BPF_SRC(f.code) == BPF_X ? x : k;
        switch (BPF_OP(f.code)) {
          case BPF_ADD: a += src; break;
          case BPF_SUB: a -= src; break;
          case BPF_MUL: a *= src; break;
          case BPF_DIV:
            if (src == 0) return 0;  // the kernel ends the program with 0
            a /= src;
            break;
          case BPF_MOD:
            if (src == 0) return 0;
            a %= src;
            break;
          case BPF_OR: a |= src; break;
          case BPF_AND: a &= src; break;
          case BPF_XOR: a ^= src; break;
          case BPF_LSH: a = src >= 32 ? 0 : a << src; break;
          case BPF_RSH: a = src >= 32 ? 0 : a >> src; break;
          case BPF_NEG: a = 0U - a; break;
          default: return kReject;
        }
        break;
      }
      case BPF_JMP: {
        size_t off;
        if (BPF_OP(f.code) == BPF_JA) {
          off = k;
        } else {
          const uint32_t src = BPF_SRC(f.code) == BPF_X ? x : k;
          bool cond;
          switch (BPF_OP(f.code)) {
            case BPF_JEQ: cond = a == src; break;
            case BPF_JGT: cond = a > src; break;
            case BPF_JGE: cond = a >= src; break;
            case BPF_JSET: cond = (a & src) != 0; break;
            default: return kReject;
          }
          off = cond ? f.jt : f.jf;
        }
        if (off >= n - pc - 1) return kReject;  // must land on an instruction
        pc += off;
        break;
      }
      case BPF_RET:
        switch (BPF_RVAL(f.code)) {
          case BPF_K: return k;
          case BPF_A: return a;
          default: return kReject;
        }
      case BPF_MISC:
        switch (BPF_MISCOP(f.code)) {
          case BPF_TAX: x = a; break;
          case BPF_TXA: a = x; break;
          default: return kReject;
        }
        break;
      default: return kReject;
    }
  }
  return kReject;  // fell off the end
}

}  // namespace detux::confine
