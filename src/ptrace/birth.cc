// birth.cc: the child side of a space made by the master (see birth.h).
#include "ptrace/birth.h"

#include <asm/prctl.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/single_threaded.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "abi.h"
#include "confine/cpuid.h"
#include "ptrace/vma.h"

namespace detux {

volatile int g_in_space = 0;

namespace {

[[noreturn]] void die(int code) { syscall(SYS_exit_group, code); __builtin_unreachable(); }

// /proc/self/maps, read without malloc.
char g_maps[1 << 18];

unsigned long parse_hex(const char*& s) {
  unsigned long v = 0;
  for (;; ++s) {
    char c = *s;
    if (c >= '0' && c <= '9') v = v * 16 + (c - '0');
    else if (c >= 'a' && c <= 'f') v = v * 16 + (c - 'a' + 10);
    else return v;
  }
}

int prot_of(const char* perms) {
  return (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
         (perms[2] == 'x' ? PROT_EXEC : 0);
}

// A plain word copy: whole mappings include the redzones AddressSanitizer
// puts between globals, which its memcpy would refuse to read.
__attribute__((no_sanitize("address"))) void copy_words(void* to, const void* from, size_t len) {
  auto* d = static_cast<volatile uint64_t*>(to);
  auto* s = static_cast<const volatile uint64_t*>(from);
  for (size_t i = 0; i < len / 8; ++i) d[i] = s[i];
}

// Replace [start, end) by a private anonymous copy with the same contents.
void privatize(unsigned long start, unsigned long end, int prot) {
  size_t len = end - start;
  void* tmp = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (tmp == MAP_FAILED) die(126);
  if (prot & PROT_READ) copy_words(tmp, reinterpret_cast<void*>(start), len);
  if (mprotect(tmp, len, prot) != 0) die(126);
  if (mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(start)) ==
      MAP_FAILED)
    die(126);
}

// One line: "start-end perms offset dev inode   path".
void sanitize_line(const char* s) {
  unsigned long start = parse_hex(s);
  ++s;
  unsigned long end = parse_hex(s);
  ++s;
  const char* perms = s;
  s += 5;
  parse_hex(s);  // offset
  ++s;
  while (*s != ' ') ++s;  // dev
  ++s;
  unsigned long inode = 0;
  while (*s >= '0' && *s <= '9') inode = inode * 10 + (*s++ - '0');
  while (*s == ' ') ++s;
  const char* path = s;
  if (std::strncmp(path, "[vdso]", 6) == 0 || std::strncmp(path, "[vvar", 5) == 0) {
    munmap(reinterpret_cast<void*>(start), end - start);
    return;
  }
  if (std::strncmp(path, "[vsyscall]", 10) == 0) return;
  bool shared = perms[3] == 's';
  bool writable_file = perms[1] == 'w' && inode != 0;
  if (shared || writable_file) privatize(start, end, prot_of(perms));
}

// The text walk, for kernels without PROCMAP_QUERY.
void sanitize_by_text(int fd) {
  size_t n = 0;
  for (;;) {
    ssize_t r = ::read(fd, g_maps + n, sizeof g_maps - 1 - n);
    if (r < 0) die(125);
    if (r == 0) break;
    n += r;
    if (n == sizeof g_maps - 1) die(125);
  }
  g_maps[n] = 0;
  // The maps were read before any change, so changes cannot confuse the walk.
  for (char* line = g_maps; *line;) {
    char* nl = std::strchr(line, '\n');
    if (nl) *nl = 0;
    sanitize_line(line);
    if (!nl) break;
    line = nl + 1;
  }
}

// Writable private file mappings keep reading the file for pages never
// written; making every page a private anonymous copy in place (one
// MADV_POPULATE_WRITE) cuts that tie without copying through user space.
void detach_from_file(const Vma& v) {
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, Linux 5.14
  if (madvise(reinterpret_cast<void*>(v.start), v.end - v.start, kPopulateWrite) != 0)
    privatize(v.start, v.end, PROT_READ | PROT_WRITE | (v.executable ? PROT_EXEC : 0));
}

// Asks PROCMAP_QUERY; false if the kernel lacks it.  A writable file
// mapping whose every page is already a private copy (the master made them
// so, see prepare_master_mappings) is left as it is: populating it again
// would only copy each page once more.
bool sanitize_by_query(int fd, int pagemap_fd, uint64_t vdso) {
  Vma v;
  // The vDSO and the vvar pages just below it.
  if (vdso) {
    for (uint64_t at = vdso;;) {
      VmaAnswer a = vma_at_or_after(fd, at, 0, &v, true);
      if (a == VmaAnswer::kUnsupported) return false;
      if (a != VmaAnswer::kFound || v.start > at || !v.special) break;
      munmap(reinterpret_cast<void*>(v.start), v.end - v.start);
      if (v.start == 0) break;
      at = v.start - 1;
    }
  }
  for (uint64_t at = 0;;) {  // shared mappings become private copies
    VmaAnswer a = vma_at_or_after(fd, at, kVmaShared, &v);
    if (a == VmaAnswer::kUnsupported) return false;
    if (a == VmaAnswer::kNone) break;
    privatize(v.start, v.end, (v.readable ? PROT_READ : 0) | (v.writable ? PROT_WRITE : 0) |
                                  (v.executable ? PROT_EXEC : 0));
    at = v.end;
  }
  for (uint64_t at = 0;;) {
    VmaAnswer a = vma_at_or_after(fd, at, kVmaWritable | kVmaFileBacked, &v);
    if (a == VmaAnswer::kUnsupported) return false;
    if (a == VmaAnswer::kNone) break;
    if (pagemap_fd < 0 || !all_pages_anonymous(pagemap_fd, v.start, v.end)) detach_from_file(v);
    at = v.end;
  }
  return true;
}

void sanitize_mappings(uint64_t vdso) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(125);
  int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (!sanitize_by_query(fd, pm, vdso)) sanitize_by_text(fd);
  if (pm >= 0) close(pm);
  close(fd);
}

// SIGSYS runs the runtime's emulation (never blocked, never deferred: the
// space cannot change either afterwards, rt_sigaction and rt_sigprocmask
// being refused; a SIGSYS the filter raises is delivered even if blocked).
void install_sigsys(void (*handler)(int, siginfo_t*, void*)) {
  if (!handler) return;
  struct sigaction sa {};
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO;
  sigfillset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) != 0) die(119);
  sigset_t sys;
  sigemptyset(&sys);
  sigaddset(&sys, SIGSYS);
  if (sigprocmask(SIG_UNBLOCK, &sys, nullptr) != 0) die(119);
}

// glibc registers every thread for restartable sequences, and the space
// inherits that registration from the master's thread: Linux would go on
// writing the number of the CPU it runs on into the thread's rseq area,
// where sched_getcpu() reads it without a system call.  Unregistered, with
// the CPU number marked "registration failed", sched_getcpu() makes the
// getcpu call, which is refused like any other.
void forget_rseq() {
  if (__rseq_size == 0) return;  // glibc did not register
  char* tp;
  asm("mov %%fs:0, %0" : "=r"(tp));
  auto* area = reinterpret_cast<struct rseq*>(tp + __rseq_offset);
  unsigned len = __rseq_size < 32 ? 32 : __rseq_size;
  if (syscall(SYS_rseq, area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) != 0) die(126);
  area->cpu_id_start = 0;
  area->cpu_id = static_cast<uint32_t>(RSEQ_CPU_ID_REGISTRATION_FAILED);
}

// The pids in the plan, the supervisor's heap, and the space's pid where
// glibc keeps it: see space_birth in birth.h.
void forget_the_supervisor(BirthPlan& plan) {
  // A master that ever ran a second thread has glibc's single-threaded flag
  // false, and a fork keeps it so; libstdc++ would then take pthread_once's
  // slow path, whose futex call a space may not make.  A space has one thread.
  __libc_single_threaded = 1;
  // The master forked this space with its heap marked MADV_WIPEONFORK, so
  // there is normally nothing left to drop; this is the backstop should that
  // madvise have failed.  MADV_DONTNEED covers the mapped parts and says
  // ENOMEM for the holes.
  if (plan.hidden_len) madvise(reinterpret_cast<void*>(plan.hidden_start), plan.hidden_len, MADV_DONTNEED);
  if (plan.tid_offset >= 0) {
    char* tp;
    asm("mov %%fs:0, %0" : "=r"(tp));
    auto* tid = reinterpret_cast<int*>(tp + plan.tid_offset);
    if (*tid == static_cast<int>(syscall(SYS_getpid))) *tid = kSpaceTid;
  }
}

}  // namespace

long find_tid_offset() {
  char* tp;
  asm("mov %%fs:0, %0" : "=r"(tp));
  const int tid = static_cast<int>(syscall(SYS_gettid));
  long found = -1;
  for (long off = 0; off < 1024; off += 4) {
    int v;
    std::memcpy(&v, tp + off, sizeof v);
    if (v != tid) continue;
    if (found >= 0) return -1;  // twice: cannot tell which
    found = off;
  }
  return found;
}

namespace {

// Linux's fork copies no page-table entries of a mapping that has never had
// an anonymous page: the child faults its code in again, 16 pages around
// each fault.  A space made that way took 37 faults per dfork + djoin, 13 of
// them for code it ran.  One anonymous page in each code mapping of the
// master, the first page written through /proc/self/mem with the byte it
// already holds (a debugger's breakpoint, minus the breakpoint), makes
// every later fork copy the code entries the master has: 24 faults, and
// 2.21 -> 2.14 ms a dfork + djoin (medians of six runs of a loop of 300,
// alternating).  A library loaded later is not done; nothing else changes.
void copy_code_entries_at_fork(int maps_fd) {
  int mem = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  if (mem < 0) return;
  Vma v;
  for (uint64_t at = 0;
       vma_at_or_after(maps_fd, at, kVmaExecutable | kVmaFileBacked, &v) == VmaAnswer::kFound;
       at = v.end) {
    if (v.writable || v.shared) continue;
    unsigned char b;
    if (pread(mem, &b, 1, static_cast<off_t>(v.start)) == 1)
      (void)!pwrite(mem, &b, 1, static_cast<off_t>(v.start));
  }
  close(mem);
}

}  // namespace

void prepare_master_mappings() {
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, Linux 5.14
  constexpr uint64_t kMaxPrepared = 1 << 20;  // libraries' data, not a mapped data file
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  Vma v;
  for (uint64_t at = 0; vma_at_or_after(fd, at, kVmaWritable | kVmaFileBacked, &v) == VmaAnswer::kFound;
       at = v.end) {
    if (!v.shared && v.end - v.start <= kMaxPrepared)
      madvise(reinterpret_cast<void*>(v.start), v.end - v.start, kPopulateWrite);
  }
  copy_code_entries_at_fork(fd);
  close(fd);
}

// No core file: a space that dies of a signal whose default dumps core (it
// can forge a sigreturn frame that blocks SIGSYS, so the next refused call
// kills it so) would write one into the master's directory, and spend
// minutes walking detux's terabyte reservations to do it.
void no_core_files() {
  const rlimit none{0, 0};
  if (setrlimit(RLIMIT_CORE, &none) != 0) die(120);
}

void space_birth(BirthPlan& plan) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die(120);
  no_core_files();
  if (getppid() != plan.master_pid) die(120);
  if (ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) die(121);
  syscall(SYS_kill, syscall(SYS_getpid), SIGSTOP);
  if (plan.pgid == 0 || setpgid(0, plan.pgid) != 0) {
    if (setpgid(0, 0) != 0) die(122);
  }
  forget_the_supervisor(plan);
  sanitize_mappings(plan.vdso);
  syscall(SYS_close_range, 0, ~0U, 0);
  if (prctl(PR_SET_TSC, PR_TSC_SIGSEGV) != 0) die(123);
  if (plan.cpuid_faults && syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) die(123);
  install_sigsys(plan.sigsys);
  forget_rseq();
  g_in_space = 1;
  // The snapshot: a clone that stops (auto-attached, SIGSTOP) before it runs
  // one instruction, and is never resumed.  Taken here, it differs from the
  // space only in the stack bytes of this function and in the pids of the
  // plan, which nothing reads there: zeroed only now, they share a page with
  // the runtime's state that the space writes after the clone anyway, where
  // before it they cost the space one more copy of that page.
  if (plan.snapshot && syscall(SYS_clone, CLONE_PARENT, 0, 0, 0, 0) < 0) die(127);
  plan.master_pid = 0;
  plan.pgid = 0;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die(124);
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, plan.filter) != 0) die(124);
  // From here on only detux calls and exit work.
  detux_trap(abi::kOpBirth, 0, 0, 0, 0, 0);
  plan.entry();
  __builtin_unreachable();
}

void exec_birth_helper(const ExecPlan& plan) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die(120);
  no_core_files();
  if (getppid() != plan.master_pid) die(120);
  if (ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) die(121);
  syscall(SYS_kill, syscall(SYS_getpid), SIGSTOP);
  if (setpgid(0, plan.pgid) != 0) die(122);
  // The filter on fd 3 and the image on fd 4 (close-on-exec); nothing else.
  int f = fcntl(plan.filter_fd, F_DUPFD, 100), i = fcntl(plan.image_fd, F_DUPFD, 100);
  if (f < 0 || i < 0 || dup3(f, kExecFilterFd, 0) < 0 || dup3(i, 4, O_CLOEXEC) < 0) die(125);
  syscall(SYS_close_range, 5, ~0U, 0);
  syscall(SYS_close_range, 0, 2, 0);
  if (personality(ADDR_NO_RANDOMIZE) < 0) die(123);
  if (prctl(PR_SET_TSC, PR_TSC_SIGSEGV) != 0) die(123);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die(124);
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, plan.load_filter) != 0) die(124);
  syscall(SYS_execveat, 4, "", plan.argv, plan.envp, AT_EMPTY_PATH);
  die(errno > 0 && errno < 128 ? 128 + errno : 127);  // Linux refused it: why
}

long exec_birth(void (*sigsys)(int, siginfo_t*, void*), void* carry, size_t cap) {
  static sock_filter prog[BPF_MAXINSNS];
  size_t got = 0;
  for (;;) {
    ssize_t r = pread(kExecFilterFd, reinterpret_cast<char*>(prog) + got, sizeof prog - got,
                      static_cast<off_t>(got));
    if (r < 0) die(125);
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  if (got == 0 || got % sizeof(sock_filter) != 0) die(125);
  sock_fprog fprog{static_cast<unsigned short>(got / sizeof(sock_filter)), prog};
  sanitize_mappings(0);  // the supervisor took the vDSO away already
  syscall(SYS_close_range, 0, ~0U, 0);
  if (prctl(PR_SET_TSC, PR_TSC_SIGSEGV) != 0) die(123);
  if (confine::cpuid_faulting_supported() && syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0)
    die(123);
  install_sigsys(sigsys);
  g_in_space = 1;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die(124);
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) die(124);
  return detux_trap(abi::kOpBirth, 0, 0, reinterpret_cast<long>(carry), static_cast<long>(cap),
                    reinterpret_cast<long>(&detux_gadget));
}

}  // namespace detux
