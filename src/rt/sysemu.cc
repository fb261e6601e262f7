// sysemu.cc: the Linux calls a space may make, emulated inside the space.
//
// The seccomp filter raises SIGSYS in the space for a short list of calls
// (confine::kEmulatedCalls) instead of refusing them.  This handler answers
// them from the space's own memory, with no help from the supervisor:
// writes to fd 1 and 2 go to the space's console buffer, reads from fd 0
// come from its part of the input stream, and fstat on 0-2 describes a pipe
// (so stdio buffers output fully and never asks isatty); files on fds >= 3
// and paths go to the detux file system (fsemu.cc).  Anything else -- a
// call neither takes -- is refused with a kOpRefuse call, which faults
// the space exactly as if the filter had refused it: the parent sees
// DET_FAULT_SYSCALL with the call's number.
//
// Everything the handler does is a function of the space's memory, so it is
// as deterministic as the rest of the space.  A bad pointer passed to an
// emulated call faults the space (SIGSEGV in the handler), and its parent is
// told, as the issue asks.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <ucontext.h>

#include "abi.h"
#include "ptrace/birth.h"
#include "rt/console.h"
#include "rt/fault.h"
#include "rt/fsemu.h"

namespace detux::rt {

namespace {

[[noreturn]] void refuse(long nr) {
  detux_trap(abi::kOpRefuse, nr, 0, 0, 0, 0);
  for (;;) __builtin_trap();  // a faulted space is never resumed
}

long fake_stat(struct stat* st) {
  memset(st, 0, sizeof *st);
  st->st_mode = S_IFIFO | 0600;
  st->st_nlink = 1;
  st->st_blksize = 4096;
  return 0;
}

long write_vec(int fd, const iovec* iov, long n) {
  long total = 0;
  for (long i = 0; i < n; ++i) {
    long r = console_write(fd, iov[i].iov_base, iov[i].iov_len);
    if (r < 0) return total ? total : r;
    total += r;
    if (static_cast<size_t>(r) < iov[i].iov_len) break;  // the caller sends the rest again
  }
  return total;
}

long read_vec(const iovec* iov, long n) {
  long total = 0;
  for (long i = 0; i < n; ++i) {
    long r = console_read(iov[i].iov_base, iov[i].iov_len);
    if (r < 0) return total ? total : r;
    total += r;
    if (static_cast<size_t>(r) < iov[i].iov_len) break;
  }
  return total;
}

bool console_fd(long fd) { return fd >= 0 && fd <= 2; }

long emulate(long nr, const long a[6]) {
  switch (nr) {
    case SYS_write:
      if (a[0] == 1 || a[0] == 2)
        return console_write(static_cast<int>(a[0]), reinterpret_cast<void*>(a[1]), a[2]);
      break;
    case SYS_writev:
      if ((a[0] == 1 || a[0] == 2) && a[2] >= 0 && a[2] <= IOV_MAX)
        return write_vec(static_cast<int>(a[0]), reinterpret_cast<iovec*>(a[1]), a[2]);
      break;
    case SYS_read:
      if (a[0] == 0) return console_read(reinterpret_cast<void*>(a[1]), a[2]);
      break;
    case SYS_readv:
      if (a[0] == 0 && a[2] >= 0 && a[2] <= IOV_MAX)
        return read_vec(reinterpret_cast<iovec*>(a[1]), a[2]);
      break;
    case SYS_close:
      if (console_fd(a[0])) return 0;
      break;
    case SYS_fstat:
      if (console_fd(a[0])) return fake_stat(reinterpret_cast<struct stat*>(a[1]));
      break;
    case SYS_newfstatat:
      if (console_fd(a[0]) && (a[3] & AT_EMPTY_PATH) && a[1] &&
          *reinterpret_cast<const char*>(a[1]) == 0)
        return fake_stat(reinterpret_cast<struct stat*>(a[2]));
      break;
    case SYS_lseek:
      if (console_fd(a[0])) return -ESPIPE;
      break;
    case SYS_ioctl:
      if (console_fd(a[0])) return -ENOTTY;
      break;
    case SYS_fcntl:  // what fdopen and friends ask of the console
      if (!console_fd(a[0])) break;
      if (a[1] == F_GETFL) return a[0] == 0 ? O_RDONLY : O_WRONLY;
      return a[1] == F_GETFD || a[1] == F_SETFD || a[1] == F_SETFL ? 0 : -EINVAL;
    case SYS_pread64:
    case SYS_pwrite64:
      if (console_fd(a[0])) return -ESPIPE;
      break;
    default:
      break;
  }
  long r;
  if (fs_emulate(nr, a, &r)) return r;
  refuse(nr);
}

}  // namespace

void on_sigsys(int, siginfo_t* si, void* ctx) {
  auto* uc = static_cast<ucontext_t*>(ctx);
  greg_t* r = uc->uc_mcontext.gregs;
  const long a[6] = {r[REG_RDI], r[REG_RSI], r[REG_RDX], r[REG_R10], r[REG_R8], r[REG_R9]};
  int saved = errno;
  r[REG_RAX] = emulate(si->si_syscall, a);
  errno = saved;
}

void bad_pointer(const char* what, const void* p) {
  char msg[160];
  int n = snprintf(msg, sizeof msg, "detux: %s of a pointer the heap never gave out: %p\n", what, p);
  if (g_in_space) {
    console_write(2, msg, static_cast<size_t>(n));
    __builtin_trap();  // the space faults (SIGILL); its parent is told
  }
  fputs(msg, stderr);
  abort();
}

}  // namespace detux::rt
