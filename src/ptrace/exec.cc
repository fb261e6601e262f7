// exec.cc: a space that runs a new program image, on stock Linux.
//
// The kernel (kernel/exec.cc) decides what exec means; this file makes the
// process.  Linux can only start an ELF program with execve, and execve
// starts with the dynamic loader, the libraries' initialisers, and whatever
// code the image runs before detux's runtime gets control (its IFUNC
// resolvers, its preinit array).  An image may come from a space's file
// system, so all of that is untrusted, and none of it may run unsupervised:
//
//   * The master forks a helper that asks to be traced, stops, joins the
//     spaces' group, closes everything but the image and the space filter,
//     turns address randomisation off, makes rdtsc fault, installs the load
//     filter (every call but exit goes to the tracer) and execs the image
//     from a memfd (birth.cc, exec_birth_helper).
//   * At the exec stop, before the image's first instruction, the master
//     writes fixed AT_RANDOM bytes, hides the vDSO from the auxiliary vector
//     and unmaps it (its clocks need no system call), and turns cpuid
//     faulting back on (Linux turns it off at execve): two system calls
//     injected through a `syscall; int3` written over the loader's entry
//     point and taken back at once.
//   * While the program loads, every system call but those on its own memory
//     and open descriptors (confine::kLoadAllowedCalls) stops here, and
//     load_call lets through only what a dynamic loader needs, on files it
//     may read:
//     the libraries the master itself has loaded, the loader cache and the
//     program's own /proc/self/maps.  Every other path does not exist, every
//     other call faults the space.  So whatever the image does before it is
//     confined, it can read only what the master also reads.
//   * The runtime in the new program (rt/exec.cc) stacks the space filter
//     from fd 3 on the load filter and reports with kOpBirth.  That report
//     proves nothing (any code can make it), so the master then checks the
//     program has no shared mapping and no open descriptor, and stacks the
//     space filter, rdtsc and cpuid faulting itself (confine_born); from
//     then on the process is an ordinary space.  A program without detux's
//     runtime never gets that far: it runs, supervised, until it faults or
//     exits, or is refused at its kOpBirth.
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <asm/prctl.h>
#include <fcntl.h>
#include <link.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <algorithm>
#include <climits>
#include <optional>
#include <set>
#include <sstream>

#include "abi.h"
#include "confine/cpuid.h"
#include "confine/filter.h"
#include "ptrace/birth.h"
#include "ptrace/ptrace_machine.h"
#include "ptrace/vma.h"
#include "util/fd.h"
#include "util/fixed.h"

namespace detux {

namespace {

const std::vector<sock_filter>& load_filter() {
  static const std::vector<sock_filter> f = confine::build_load_filter();
  return f;
}

bool write_all(int fd, const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  while (len) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// The files a loading program may open: what the master has loaded.
const std::set<std::string>& readable_files() {
  static const std::set<std::string> files = [] {
    std::set<std::string> s = {"/etc/ld.so.cache", "/proc/self/maps"};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) {
          if (info->dlpi_name && info->dlpi_name[0] == '/')
            static_cast<std::set<std::string>*>(out)->insert(info->dlpi_name);
          return 0;
        },
        &s);
    return s;
  }();
  return files;
}

// The environment a new program gets: the space's, without what would
// steer the dynamic loader (LD_PRELOAD, LD_LIBRARY_PATH, GLIBC_TUNABLES ...)
// or pose as detux's own marker, plus that marker.
std::vector<std::string> loader_safe(const std::vector<std::string>& envp) {
  std::vector<std::string> out;
  for (const auto& e : envp) {
    bool loader = e.starts_with("LD_") && !e.starts_with("LD_BIND_NOW=");
    if (loader || e.starts_with("GLIBC_TUNABLES=") || e.starts_with("DETUX_")) continue;
    out.push_back(e);
  }
  out.push_back("DETUX_EXEC_SPACE=1");
  return out;
}

// Writes into a read-only mapping too (the loader's code), as a debugger's
// breakpoint does: through /proc/PID/mem, which may write past protection.
bool poke(pid_t pid, uint64_t addr, const void* data, size_t len) {
  OwnedFd mem{open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDWR | O_CLOEXEC)};
  return mem.fd >= 0 && pwrite(mem.fd, data, len, static_cast<off_t>(addr)) == static_cast<ssize_t>(len);
}

std::vector<char*> c_array(const std::vector<std::string>& v) {
  std::vector<char*> out;
  for (const auto& s : v) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

// The dynamic loader an ELF image names (PT_INTERP), "" for none; nullopt if
// its program headers do not lie within it.
std::optional<std::string> interpreter_of(std::span<const uint8_t> b) {
  Elf64_Ehdr h;
  if (b.size() < sizeof h) return std::nullopt;
  std::memcpy(&h, b.data(), sizeof h);
  if (h.e_phentsize != sizeof(Elf64_Phdr) || h.e_phoff > b.size() ||
      uint64_t{h.e_phnum} * sizeof(Elf64_Phdr) > b.size() - h.e_phoff)
    return std::nullopt;
  for (uint64_t i = 0; i < h.e_phnum; ++i) {
    Elf64_Phdr ph;
    std::memcpy(&ph, b.data() + h.e_phoff + i * sizeof ph, sizeof ph);
    if (ph.p_type != PT_INTERP) continue;
    if (ph.p_offset > b.size() || ph.p_filesz > b.size() - ph.p_offset || ph.p_filesz > PATH_MAX)
      return std::nullopt;
    std::string path(reinterpret_cast<const char*>(b.data() + ph.p_offset), ph.p_filesz);
    return path.substr(0, path.find('\0'));
  }
  return std::string();
}

// The master's own dynamic loader, the only one an image may name: Linux
// maps the one it names from the host before the load filter sees a call.
const std::string& masters_interpreter() {
  static const std::string path = [] {
    std::ifstream self("/proc/self/exe", std::ios::binary);
    std::vector<uint8_t> head(64 << 10);
    self.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<size_t>(self.gcount()));
    return interpreter_of(head).value_or("");
  }();
  return path;
}

}  // namespace

Result<Proc*> PtraceMachine::exec_space(std::span<const uint8_t> image,
                                        const std::vector<std::string>& argv,
                                        const std::vector<std::string>& envp) {
  DETUX_ASSERT(pgid_ > 0);  // exec comes from a space
  auto interp = interpreter_of(image);
  if (!interp || (!interp->empty() && *interp != masters_interpreter())) return Err{-ENOEXEC};
  OwnedFd img{memfd_create("detux-image", MFD_CLOEXEC)};
  OwnedFd flt{memfd_create("detux-filter", MFD_CLOEXEC)};
  const auto& sf = space_filter();
  if (img.fd < 0 || flt.fd < 0 || !write_all(img.fd, image.data(), image.size()) ||
      !write_all(flt.fd, sf.data(), sf.size() * sizeof(sock_filter)))
    return Err{-ENOMEM};
  std::vector<std::string> env = loader_safe(envp);
  std::vector<char*> av = c_array(argv), ev = c_array(env);
  (void)readable_files();  // computed before any load asks
  const auto& lf = load_filter();
  sock_fprog fprog{static_cast<unsigned short>(lf.size()), const_cast<sock_filter*>(lf.data())};
  ExecPlan plan{&fprog, getpid(), pgid_, flt.fd, img.fd, av.data(), ev.data()};
  serve();
  // Born on this CPU and kept there while it loads: every one of its
  // loader's system calls is then a same-CPU handoff to the master, not a
  // cross-CPU wakeup; the first resume() after its birth lets it go.
  cpu_set_t mine;
  bool pinned = false;
  auto born = fork_traced(
      [](void* plan) { exec_birth_helper(*static_cast<const ExecPlan*>(plan)); }, &plan,
      kPtraceOptions | PTRACE_O_TRACEEXEC, &mine, &pinned);
  if (!born.ok()) return Err{born.err()};
  const pid_t pid = *born;
  int st;
  // Its execveat (under the load filter), then the exec stop.
  for (;;) {
    DETUX_TRY(wait_pid(pid, &st));
    if (WIFEXITED(st) || WIFSIGNALED(st)) return Err{-ENOEXEC};
    if (is_event(st, PTRACE_EVENT_EXEC)) break;
    if (is_event(st, PTRACE_EVENT_EXIT)) {  // the helper gave up: 128 + execveat's errno
      unsigned long code = 0;
      ptrace(PTRACE_GETEVENTMSG, pid, nullptr, &code);
      kill_and_reap(pid);
      const int c = static_cast<int>(code);
      return Err{WIFEXITED(c) && WEXITSTATUS(c) > 128 ? -(WEXITSTATUS(c) - 128) : -ENOEXEC};
    }
    bool its_exec = is_event(st, PTRACE_EVENT_SECCOMP);
    if (!its_exec && !(WIFSTOPPED(st) && (st >> 16) == 0)) {
      kill_and_reap(pid);
      return Err{-ECHILD};
    }
    ptrace(PTRACE_CONT, pid, nullptr, nullptr);  // the execveat, or a stray signal dropped
  }
  Proc* p = adopt(pid, master_);
  p->pinned = pinned;
  p->pinned_cpu = pinned ? sched_getcpu() : -1;
  p->affinity = mine;
  p->loading = true;
  p->stop = StopKind::kSignal;
  Status prep = prepare_image(p);
  if (!prep.ok()) {
    destroy(p);
    return Err{prep.err()};
  }
  // Not resume(), which would let it off this CPU.
  if (ptrace(PTRACE_CONT, pid, nullptr, nullptr) != 0) {
    destroy(p);
    return Err{-ECHILD};
  }
  p->stop = StopKind::kRunning;
  p->regs_valid = false;
  return p;
}

// At the exec stop: fixed AT_RANDOM, no vDSO, cpuid faulting (see above).
Status PtraceMachine::prepare_image(Proc* p) {
  DETUX_TRY(fetch_regs(p));
  // The stack: argc, argv..., NULL, envp..., NULL, then the auxiliary vector.
  uint64_t at = p->regs.rsp, argc = 0, word = 1;
  DETUX_TRY(read(p, at, &argc, 8));
  at += 8 * (argc + 2);
  for (int n = 0; word != 0 && n < 1 << 16; ++n, at += 8) DETUX_TRY(read(p, at, &word, 8));
  for (int n = 0; n < 64; ++n, at += 16) {
    Elf64_auxv_t aux;
    DETUX_TRY(read(p, at, &aux, sizeof aux));
    if (aux.a_type == AT_NULL) break;
    if (aux.a_type == AT_RANDOM)
      DETUX_TRY(write(p, aux.a_un.a_val, kFixedRandom, sizeof kFixedRandom));
    if (aux.a_type == AT_SYSINFO_EHDR) {
      uint64_t ignore = AT_IGNORE;
      DETUX_TRY(write(p, at, &ignore, 8));
    }
  }
  // The vDSO and its data pages, by name.
  std::vector<std::pair<uint64_t, uint64_t>> special;
  std::ifstream maps("/proc/" + std::to_string(p->pid) + "/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find("[vdso]") == std::string::npos && line.find("[vvar") == std::string::npos)
      continue;
    uint64_t lo = 0, hi = 0;
    char dash;
    std::istringstream(line) >> std::hex >> lo >> dash >> hi;
    special.emplace_back(lo, hi);
  }
  // The gadget, over the loader's first instruction for a moment.
  uint64_t entry = p->regs.rip;
  uint8_t saved[3];
  DETUX_TRY(read(p, entry, saved, sizeof saved));
  if (!poke(p->pid, entry, kGadget, sizeof kGadget)) return Err{-EFAULT};
  // Step out of execve first (its return would overwrite the first
  // injected call's number): run just the int3.
  user_regs_struct step = p->regs;
  step.rip = entry + 2;
  int st = 0;
  if (ptrace(PTRACE_SETREGS, p->pid, nullptr, &step) != 0 ||
      ptrace(PTRACE_CONT, p->pid, nullptr, nullptr) != 0 || !wait_pid(p->pid, &st).ok() ||
      !WIFSTOPPED(st) || WSTOPSIG(st) != SIGTRAP)
    return Err{-ECHILD};
  long r = 0;
  for (auto [lo, hi] : special) {
    const long args[6] = {static_cast<long>(lo), static_cast<long>(hi - lo), 0, 0, 0, 0};
    auto m = inject(p, SYS_munmap, args, nullptr, entry);
    if (!m.ok() || *m != 0) r = -EPERM;
  }
  if (confine::cpuid_faulting_supported()) {
    const long cpuid_args[6] = {ARCH_SET_CPUID, 0, 0, 0, 0, 0};
    auto c = inject(p, SYS_arch_prctl, cpuid_args, nullptr, entry);
    if (!c.ok() || *c != 0) r = -EPERM;
  }
  if (!poke(p->pid, entry, saved, sizeof saved)) return Err{-EFAULT};
  return r == 0 ? ok_status() : Status(Err{r});
}

// ---- The loading program's system calls -------------------------------------

namespace {

enum class Verdict { kAllow, kAnswer, kRefuse };

struct Decision {
  Verdict v = Verdict::kRefuse;
  long value = 0;
};

Decision allow() { return {Verdict::kAllow, 0}; }
Decision answer(long v) { return {Verdict::kAnswer, v}; }
Decision refuse() { return {Verdict::kRefuse, 0}; }

// The stat a loading program asked for, of host_path (a library, or
// /proc/PID/fd/N for a descriptor), written to `out` in its memory, without
// what varies from run to run: the times (a read may move a library's
// access time), and a memfd's inode and device numbers (a counter: fd 3,
// the space filter, is one).  Real inode numbers of files stay: the dynamic
// loader tells libraries apart by them.
Decision stat_for(Machine& m, Proc* p, const std::string& host_path, bool follow, uint64_t out) {
  struct stat st;
  if ((follow ? ::stat(host_path.c_str(), &st) : ::lstat(host_path.c_str(), &st)) != 0)
    return answer(-errno);
  st.st_atim = st.st_mtim = st.st_ctim = timespec{};
  char target[16] = {};
  if (readlink(host_path.c_str(), target, sizeof target - 1) > 0 && std::strncmp(target, "/memfd:", 7) == 0)
    st.st_ino = 1, st.st_dev = 0;
  return m.write(p, out, &st, sizeof st).ok() ? answer(0) : answer(-EFAULT);
}

// A program may narrow its own calls with more filters while it loads, but
// not cut itself off from detux: a filter that would not let the detux call
// through (as a default-deny sandbox answering ENOSYS would) is refused.
// Otherwise its errno would look, to the stub, like the supervisor's answer 0
// (abi.h).  Judged for the call with zero arguments from address 0.
Decision vet_filter(Machine& m, Proc* p, uint64_t fprog_at) {
  sock_fprog fp{};
  if (!m.read(p, fprog_at, &fp, sizeof fp).ok()) return answer(-EFAULT);
  if (fp.len == 0 || fp.len > BPF_MAXINSNS) return allow();  // Linux refuses it itself
  std::vector<sock_filter> prog(fp.len);
  if (!m.read(p, reinterpret_cast<uint64_t>(fp.filter), prog.data(), fp.len * sizeof(sock_filter)).ok())
    return answer(-EFAULT);
  seccomp_data call{};
  call.nr = static_cast<int>(abi::kSyscallNr);
  call.arch = AUDIT_ARCH_X86_64;
  const uint32_t act = confine::evaluate_filter(prog, call) & SECCOMP_RET_ACTION_FULL;
  const bool through = act == SECCOMP_RET_ALLOW || act == SECCOMP_RET_LOG || act == SECCOMP_RET_TRACE;
  return through ? allow() : answer(-EINVAL);
}

bool opens_read_only(long flags) {
  return (flags & (O_ACCMODE | O_CREAT | O_TRUNC | O_APPEND | __O_TMPFILE)) == 0;
}

// Whether p has a shared mapping (which a child space would share).
bool has_shared_mapping(Proc* p) {
  auto maps = vmas_in(p, MemRange{0, uint64_t{1} << 47});
  return !maps.ok() || std::any_of(maps->begin(), maps->end(), [](const Vma& v) { return v.shared; });
}

// How many seccomp filters pid has (/proc/PID/status), -1 if unknown.
long seccomp_filters(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.starts_with("Seccomp_filters:")) return std::strtol(line.c_str() + 16, nullptr, 10);
  return -1;
}

// Whether pid holds any open descriptor.
bool has_descriptor(pid_t pid) {
  DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (!d) return true;
  bool any = false;
  while (dirent* e = readdir(d)) any = any || e->d_name[0] != '.';
  closedir(d);
  return any;
}

}  // namespace

Status PtraceMachine::confine_born(Proc* p, uint64_t scratch, size_t len) {
  if (has_shared_mapping(p) || has_descriptor(p->pid)) return Err{-EPERM};
  // The filter and its sock_fprog in the program's own memory, where the
  // seccomp call injected through its gadget (which inject checks) reads it.
  const auto& sf = space_filter();
  const uint64_t prog = (scratch + 7) & ~uint64_t{7};
  const uint64_t bytes = sf.size() * sizeof(sock_filter);
  const uint64_t fprog_at = prog + bytes;
  if (prog < scratch || len < prog - scratch + bytes + sizeof(sock_fprog)) return Err{-EPERM};
  const sock_fprog fp{static_cast<unsigned short>(sf.size()), reinterpret_cast<sock_filter*>(prog)};
  DETUX_TRY(write(p, prog, sf.data(), bytes));
  DETUX_TRY(write(p, fprog_at, &fp, sizeof fp));
  auto call = [&](long nr, long a0, long a1, long a2) -> Status {
    const long args[6] = {a0, a1, a2, 0, 0, 0};
    auto r = inject(p, nr, args);
    return r.ok() && *r == 0 ? ok_status() : Status(Err{-EPERM});
  };
  // Both traps are on already: rdtsc's since the helper (Linux keeps it
  // across execve), cpuid's since the exec stop, and the load filter lets no
  // call turn either off.  These two say so again, and a filter of the
  // program's own could answer them itself (ERRNO 0) without harm.
  DETUX_TRY(call(SYS_prctl, PR_SET_TSC, PR_TSC_SIGSEGV, 0));
  if (confine::cpuid_faulting_supported()) DETUX_TRY(call(SYS_arch_prctl, ARCH_SET_CPUID, 0, 0));
  // A filter of the program's own may answer seccomp itself (ERRNO 0): the
  // injected call then "succeeds" with nothing installed.  The count says.
  const long before = seccomp_filters(p->pid);
  DETUX_TRY(call(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, static_cast<long>(fprog_at)));
  if (before < 0 || seccomp_filters(p->pid) != before + 1) return Err{-EPERM};
  return ok_status();
}

// Let through what a dynamic loader and a C runtime's start-up need; answer
// the calls whose true results would differ between runs; refuse the rest.
bool PtraceMachine::load_call(Proc* p) {
  user_regs_struct& r = p->regs;
  const long nr = static_cast<long>(r.orig_rax);
  const long a0 = static_cast<long>(r.rdi), a1 = static_cast<long>(r.rsi),
             a2 = static_cast<long>(r.rdx), a3 = static_cast<long>(r.r10);
  auto path_at = [&](uint64_t addr) { return read_c_string(*this, p, addr, PATH_MAX - 1); };
  auto by_path = [&](uint64_t addr, bool writes) {
    auto path = path_at(addr);
    if (!path.ok()) return answer(-EFAULT);
    if (!readable_files().count(*path)) return answer(-ENOENT);
    return writes ? refuse() : allow();
  };
  auto stat_path = [&](uint64_t addr, bool follow, uint64_t out) {
    auto path = path_at(addr);
    if (!path.ok()) return answer(-EFAULT);
    if (!readable_files().count(*path)) return answer(-ENOENT);
    return stat_for(*this, p, *path, follow, out);
  };
  auto stat_fd = [&](long fd, uint64_t out) {
    if (fd < 0) return answer(-EBADF);
    return stat_for(*this, p, "/proc/" + std::to_string(p->pid) + "/fd/" + std::to_string(fd), true, out);
  };
  Decision d;
  switch (nr) {
    // (confine::kLoadAllowedCalls never get here: the filter lets them by.)
    case SYS_sigaltstack: d = allow(); break;
    case SYS_open: d = by_path(a0, !opens_read_only(a1)); break;
    case SYS_openat:
      d = static_cast<int>(a0) == AT_FDCWD ? by_path(a1, !opens_read_only(a2)) : refuse();
      break;
    case SYS_access: d = by_path(a0, false); break;
    case SYS_stat: case SYS_lstat: d = stat_path(a0, nr == SYS_stat, a1); break;
    case SYS_fstat: d = stat_fd(a0, a1); break;
    case SYS_faccessat: case SYS_faccessat2: d = static_cast<int>(a0) == AT_FDCWD ? by_path(a1, false) : refuse(); break;
    case SYS_newfstatat: {
      auto path = path_at(a1);
      if (!path.ok()) d = answer(-EFAULT);
      else if (path->empty() && (a3 & AT_EMPTY_PATH))  // fstat, never of the master's directory
        d = static_cast<int>(a0) == AT_FDCWD ? answer(-ENOENT) : stat_fd(a0, a2);
      else d = static_cast<int>(a0) == AT_FDCWD ? stat_path(a1, !(a3 & AT_SYMLINK_NOFOLLOW), a2) : refuse();
      break;
    }
    case SYS_readlink: d = answer(-ENOENT); break;  // no /proc/self/exe to follow
    case SYS_ioctl: d = static_cast<unsigned long>(a1) == procmap_query_cmd() ? allow() : answer(-ENOTTY); break;
    case SYS_arch_prctl:
      if (a0 == ARCH_SET_FS || a0 == ARCH_GET_FS || (a0 == ARCH_SET_CPUID && a1 == 0)) d = allow();
      else d = answer(-EINVAL);
      break;
    case SYS_prctl:
      if (a0 == PR_SET_NO_NEW_PRIVS || (a0 == PR_SET_TSC && a1 == PR_TSC_SIGSEGV)) d = allow();
      else d = answer(-EINVAL);
      break;
    case SYS_seccomp:  // more filters only narrow; no listener fds
      d = a0 == SECCOMP_SET_MODE_FILTER && a1 == 0 ? vet_filter(*this, p, a2) : answer(-EINVAL);
      break;
    case SYS_prlimit64: d = a0 == 0 && a2 == 0 ? allow() : answer(-EPERM); break;
    case SYS_set_tid_address: d = answer(kSpaceTid); break;  // a fixed thread id
    case SYS_set_robust_list: d = answer(0); break;
    case SYS_rseq: d = answer(-ENOSYS); break;       // its CPU number varies
    case SYS_getrandom: d = answer(-ENOSYS); break;
    default: d = refuse(); break;
  }
  if (d.v == Verdict::kRefuse) return false;
  if (d.v == Verdict::kAnswer) {
    r.orig_rax = static_cast<unsigned long long>(-1);
    r.rax = static_cast<unsigned long long>(d.value);
    if (ptrace(PTRACE_SETREGS, p->pid, nullptr, &r) != 0) return false;
  }
  p->stop = StopKind::kRunning;
  p->regs_valid = false;
  pin(p);  // follows the master if it moved: the next stop stays on one CPU
  ptrace(PTRACE_CONT, p->pid, nullptr, nullptr);
  return true;
}

}  // namespace detux
