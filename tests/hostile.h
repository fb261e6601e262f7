// hostile.h: what the hostile suite shares.  A space is hostile code.
// Whatever it tries -- any Linux system call by any entry path, the vsyscall
// page, signals, fork bombs, rewriting its own code, scribbling over memory
// -- it must end up faulted (or confined), the master must keep running and
// keep making spaces, and nothing on the host may change.  The suite is one
// test binary in three files: hostile_syscall_test.cc (every system call and
// entry path, abuse of the detux call), hostile_escape_test.cc (the vsyscall
// page, trapped instructions, file mappings, /proc, the master, fork bombs)
// and hostile_code_test.cc (scribbling, rewriting the gadget, signals from
// outside).  This header holds the raw entry paths, the host state an escape
// would change, and the signals the master must never receive.
//
// Code inside a space makes no Linux system call, and never uses CHECK,
// printf, malloc or exceptions: only the master checks.
#pragma once

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/uio.h>
#include <sys/rseq.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "abi.h"
#include "confine/filter.h"
#include "harness.h"

using detux::test::in_master;
using detux::test::kill_pending;
using detux::test::children_of;
using detux::test::ret_forever;
using detux::test::status_of;
using detux::test::status_str;
using detux::test::twice;

#define CHECK_MSG(cond, msg)                                                                     \
  do {                                                                                           \
    if (!(cond)) ::detux::test::fail_now(__FILE__, __LINE__, std::string(#cond) + ": " + (msg)); \
  } while (0)

namespace detux::hostile {

constexpr long kDetuxNr = detux::abi::kSyscallNr;  // the one number a space may use
constexpr long kX32 = 0x40000000;
constexpr uint64_t kPage = 4096;

// What a scenario saw, printed with DETUX_TEST_VERBOSE=1.
inline void note(const std::string& out) {
  if (getenv("DETUX_TEST_VERBOSE")) std::printf("  saw: %s\n", out.c_str());
}

using detux::test::kill_child;

// The master can still make a space that runs, merges and is joined.
inline void master_still_works(std::string& out) {
  static volatile long alive = 0;
  alive = 0;
  int r = dfork(DET_CHILD_MAX);
  if (r == 0) {
    alive = 77;
    ret_forever();
  }
  CHECK_EQ(r, 1);
  CHECK_EQ(djoin(DET_CHILD_MAX), 0);
  CHECK_EQ(static_cast<long>(alive), 77L);
  out += " master-ok";
}

// Neither a zombie nor a process with SIGKILL already pending.
inline bool is_live(pid_t pid, char state) { return state != 'Z' && state != 'X' && !kill_pending(pid); }

// ---- Raw entry paths -------------------------------------------------------

inline long raw_syscall(long nr, long a, long b, long c, long d, long e, long f) {
  long ret;
  register long r10 asm("r10") = d;
  register long r8 asm("r8") = e;
  register long r9 asm("r9") = f;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
               : "rcx", "r11", "memory");
  return ret;
}

// An i386 system call from 64-bit code (ebx, ecx, edx are the arguments).
inline long raw_int80(long nr, long b, long c, long d) {
  long ret;
  asm volatile("int $0x80"
               : "=a"(ret)
               : "a"(nr), "b"(b), "c"(c), "d"(d)
               : "memory", "r8", "r9", "r10", "r11");
  return ret;
}

// Whether this kernel has the i386 entry (CONFIG_IA32_EMULATION, and not
// turned off with ia32_emulation=false).  Without it `int 0x80` is a general
// protection fault: the space dies of SIGSEGV before seccomp sees a call.
// Probed once in a forked child (i386 call 20 is getpid).
inline bool host_has_int80() {
  static const bool has = [] {
    pid_t pid = fork();
    if (pid == 0) {
      signal(SIGSEGV, SIG_DFL);
      raw_int80(20, 0, 0, 0);
      _exit(0);
    }
    int st = 0;
    return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st);
  }();
  return has;
}

// What a space's `int 0x80` with i386 call number nr must leave: a refused
// call with bit 32 set, or, on a kernel without the i386 entry, a SIGSEGV.
// Either way the space faulted and nothing ran.
inline void check_int80_refused(const det_status& st, long nr) {
  CHECK_EQ(st.state, DET_S_FAULTED);
  if (host_has_int80()) {
    CHECK_EQ(st.fault, DET_FAULT_SYSCALL);
    CHECK_EQ(st.syscall, static_cast<int64_t>((1LL << 32) | nr));
  } else {
    CHECK_EQ(st.fault, DET_FAULT_SIGNAL);
    CHECK_EQ(st.signal, SIGSEGV);
  }
}

// A detux call made by hand, with rbx chosen by the caller (rbx is not an
// argument of the call, so the supervisor leaves it as the space set it).
inline long raw_detux(long op, long child, long flags, long addr, long size, long caddr, long rbx) {
  long ret;
  register long r10 asm("r10") = addr;
  register long r8 asm("r8") = size;
  register long r9 asm("r9") = caddr;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(kDetuxNr), "D"(op), "S"(child), "d"(flags), "r"(r10), "r"(r8), "r"(r9),
                 "b"(rbx)
               : "rcx", "r11", "memory");
  return ret;
}

// ---- The host state an escape would change ---------------------------------

inline char g_marker[128];  // must never exist
inline char g_victim[128];  // must stay exactly as created
inline char g_vdir[128];    // must stay a directory
inline char g_hostname[256];
inline char g_domain[256];
inline long g_master_pid;
inline volatile uint64_t g_canary = 0x600dcafe600dcafeULL;  // the master's; nobody may write it
inline uint64_t g_evil = 0xbadbadbadbadbadULL;
inline iovec g_local_iov, g_remote_iov;
inline open_how g_how;
inline siginfo_t g_siginfo;
inline struct timex g_timex;  // modes 0: read only, even if it ran
constexpr time_t kVictimMtime = 1000000000;
constexpr char kVictimData[] = "victim data\n";

inline void set_paths() {
  g_master_pid = getpid();
  std::snprintf(g_marker, sizeof g_marker, "/tmp/detux-hostile-%ld-marker", g_master_pid);
  std::snprintf(g_victim, sizeof g_victim, "/tmp/detux-hostile-%ld-victim", g_master_pid);
  std::snprintf(g_vdir, sizeof g_vdir, "/tmp/detux-hostile-%ld-vdir", g_master_pid);
}

inline void make_victims() {
  set_paths();
  unlink(g_marker);
  rmdir(g_marker);
  unlink(g_victim);
  rmdir(g_vdir);
  int fd = open(g_victim, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  CHECK(fd >= 0);
  CHECK_EQ(write(fd, kVictimData, sizeof kVictimData - 1),
           static_cast<ssize_t>(sizeof kVictimData - 1));
  close(fd);
  CHECK_EQ(chmod(g_victim, 0600), 0);
  timespec ts[2] = {{kVictimMtime, 0}, {kVictimMtime, 0}};
  CHECK_EQ(utimensat(AT_FDCWD, g_victim, ts, 0), 0);
  CHECK_EQ(mkdir(g_vdir, 0700), 0);
  CHECK_EQ(gethostname(g_hostname, sizeof g_hostname - 1), 0);
  CHECK_EQ(getdomainname(g_domain, sizeof g_domain - 1), 0);
}

// Everything an escaped call could have changed; then cleans up.
inline void check_host_unchanged() {
  struct stat st;
  CHECK_MSG(lstat(g_marker, &st) != 0 && errno == ENOENT,
            std::string("marker exists: ") + g_marker);
  CHECK_MSG(lstat(g_victim, &st) == 0, "victim is gone");
  CHECK(S_ISREG(st.st_mode));
  CHECK_EQ(static_cast<int>(st.st_mode & 07777), 0600);
  CHECK_EQ(static_cast<long>(st.st_nlink), 1L);
  CHECK_EQ(static_cast<long>(st.st_uid), static_cast<long>(getuid()));
  CHECK_EQ(static_cast<long>(st.st_gid), static_cast<long>(getgid()));
  CHECK_EQ(static_cast<long>(st.st_size), static_cast<long>(sizeof kVictimData - 1));
  CHECK_EQ(static_cast<long>(st.st_mtim.tv_sec), static_cast<long>(kVictimMtime));
  char buf[64] = {};
  int fd = open(g_victim, O_RDONLY);
  CHECK(fd >= 0);
  CHECK_EQ(read(fd, buf, sizeof buf), static_cast<ssize_t>(sizeof kVictimData - 1));
  close(fd);
  CHECK(std::strcmp(buf, kVictimData) == 0);
  CHECK(getxattr(g_victim, "user.detux", buf, sizeof buf) < 0);
  CHECK_MSG(stat(g_vdir, &st) == 0 && S_ISDIR(st.st_mode), "victim directory is gone");
  char host[256] = {}, dom[256] = {};
  CHECK_EQ(gethostname(host, sizeof host - 1), 0);
  CHECK_EQ(getdomainname(dom, sizeof dom - 1), 0);
  CHECK(std::strcmp(host, g_hostname) == 0);
  CHECK(std::strcmp(dom, g_domain) == 0);
  CHECK_EQ(g_canary, 0x600dcafe600dcafeULL);
}

inline void remove_victims() {
  unlink(g_marker);
  rmdir(g_marker);
  unlink(g_victim);
  rmdir(g_vdir);
}

// The scenario's files: made on entry, removed on the way out (also when a
// CHECK fails).
struct HostFiles {
  HostFiles() { make_victims(); }
  ~HostFiles() { remove_victims(); }
};

// Files left by a master that died (the harness's alarm): removed once the
// test binary is done.
class SweepStaleFiles : public ::testing::Environment {
 public:
  void TearDown() override {
    DIR* d = opendir("/tmp");
    if (!d) return;
    std::vector<std::string> stale;
    while (dirent* e = readdir(d)) {
      long pid;
      char what[16];
      if (std::sscanf(e->d_name, "detux-hostile-%ld-%15s", &pid, what) != 2) continue;
      if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) stale.push_back(e->d_name);
    }
    closedir(d);
    for (const std::string& n : stale) {
      std::string path = "/tmp/" + n;
      if (unlink(path.c_str()) != 0) rmdir(path.c_str());
    }
  }
};
inline ::testing::Environment* const g_sweep =
    ::testing::AddGlobalTestEnvironment(new SweepStaleFiles);

// ---- Signals the master must never receive ---------------------------------

inline volatile sig_atomic_t g_sig_count[NSIG];

inline void count_signal(int sig) { g_sig_count[sig] = g_sig_count[sig] + 1; }

// Every catchable signal a process can send, except SIGCHLD (the spaces'
// stops), SIGALRM (the harness's own timeout), the synchronous fault signals
// and what a terminal or job control may send the test (SIGWINCH, SIGCONT,
// SIGTSTP, SIGTTIN, SIGTTOU): a signal sent by a space would be counted.
inline std::vector<int> watched_signals() {
  static const int kSkip[] = {SIGKILL, SIGSTOP, SIGCHLD,  SIGALRM, SIGSEGV, SIGBUS,  SIGILL,
                              SIGFPE,  SIGABRT, SIGWINCH, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU};
  std::vector<int> v;
  for (int s = 1; s < NSIG; ++s) {
    if (std::find(std::begin(kSkip), std::end(kSkip), s) != std::end(kSkip)) continue;
    if (s >= 32 && s < SIGRTMIN) continue;  // glibc's own
    v.push_back(s);
  }
  return v;
}

inline void watch_signals() {
  for (int s : watched_signals()) {
    struct sigaction sa {};
    sa.sa_handler = count_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(s, &sa, nullptr);
    g_sig_count[s] = 0;
  }
}

inline void check_no_signal() {
  std::string got;
  for (int s : watched_signals())
    if (g_sig_count[s]) got += " " + std::to_string(s) + "x" + std::to_string(g_sig_count[s]);
  CHECK_MSG(got.empty(), "the master received signals:" + got);
}

}  // namespace detux::hostile
