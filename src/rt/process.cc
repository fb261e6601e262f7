// process.cc: fork, wait and waitpid inside spaces, as in Determinator.
//
// libdetux exports fork, vfork, wait, waitpid, wait4, waitid, posix_spawn
// and posix_spawnp, so a program's own calls reach these first.  In the
// master they are the C library's, untouched (but vfork, below):
// legacy code there keeps real Linux processes.  In a space, a process is a
// child space that never merges memory: fork() takes the lowest free id
// (from 1) as the child's pid and forks with Put/Fork (no snapshot: a
// process's memory is its own); waitpid(-1) waits for the lowest-numbered
// child, never "whichever finished first", and WNOHANG is ignored (a
// nonblocking poll would depend on timing).  Waiting prints the child's
// output and reports its end in the usual encoding: exit(n) as
// WIFEXITED/WEXITSTATUS n, a fault as WIFSIGNALED with the signal (SIGSYS
// for a refused system call, SIGILL for a bad detux call).  exit() itself
// needs nothing: exit_group is allowed in spaces.  vfork is fork (POSIX
// allows it; a space's memory is its own anyway), in the master too: a
// wrapper cannot share its caller's stack as vfork does.  waitid reports in
// a siginfo_t what waitpid reports in a status, as waitpid does: WNOHANG
// ignored, P_PGID taken as P_ALL, and WNOWAIT (which would leave the child
// to be waited for again) EINVAL.  posix_spawn is fork + exec
// with neither file actions nor attributes (else ENOSYS), and a child whose
// exec fails exits 127, as the shell reports a command it cannot run.
//
// A space also has no pid of its own to ask for: getpid() stays refused.
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "ptrace/birth.h"
#include "rt/interpose.h"
#include "rt/join.h"

namespace detux::rt {
namespace {

constexpr int kMaxProcs = 256;
bool g_used[kMaxProcs];  // libdetux data: private to each space

int encode(const det_status& st) {
  if (st.state == DET_S_EXITED) return (st.exit_code & 0xff) << 8;
  int sig = SIGKILL;
  if (st.fault == DET_FAULT_SIGNAL) sig = st.signal;
  else if (st.fault == DET_FAULT_SYSCALL) sig = SIGSYS;
  else if (st.fault == DET_FAULT_BADCALL) sig = SIGILL;
  return sig & 0x7f;
}

pid_t space_fork() {
  int id = 1;
  while (id < kMaxProcs && g_used[id]) ++id;
  if (id == kMaxProcs) {
    errno = EAGAIN;
    return -1;
  }
  long r = dput(static_cast<det_child_t>(id), DET_FORK | DET_START, nullptr, 0, nullptr);
  if (r == DET_CHILD) {
    for (bool& u : g_used) u = false;
    return 0;
  }
  if (r < 0) {
    errno = EAGAIN;
    return -1;
  }
  g_used[id] = true;
  return id;
}

pid_t space_wait(pid_t pid, int* status) {
  if (pid <= 0) {  // -1 and 0 (this space has only one process group)
    pid = 1;
    while (pid < kMaxProcs && !g_used[pid]) ++pid;
  }
  if (pid >= kMaxProcs || !g_used[pid]) {
    errno = ECHILD;
    return -1;
  }
  det_status st{};
  join_child(static_cast<det_child_t>(pid), false, &st);
  g_used[pid] = false;
  if (status) *status = encode(st);
  return pid;
}

// waitid's answer for a space's child, as Linux fills it for a real one.
void fill_siginfo(siginfo_t* info, pid_t pid, int status) {
  *info = siginfo_t{};
  info->si_signo = SIGCHLD;
  info->si_pid = pid;
  info->si_code = WIFEXITED(status) ? CLD_EXITED : CLD_KILLED;
  info->si_status = WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status);
}

int space_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* actions,
                const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  if (actions || attr) return ENOSYS;
  const pid_t child = space_fork();
  if (child < 0) return errno;
  if (child == 0) {
    execve(path, argv, envp);
    _exit(127);
  }
  if (pid) *pid = child;
  return 0;
}

}  // namespace
}  // namespace detux::rt

using namespace detux::rt;

extern "C" {

pid_t fork(void) {
  if (detux::g_in_space) return space_fork();
  static auto f = real<pid_t (*)()>("fork");
  return f();
}

pid_t vfork(void) {
  if (detux::g_in_space) return space_fork();
  static auto f = real<pid_t (*)()>("fork");
  return f();
}

int waitid(idtype_t type, id_t id, siginfo_t* info, int options) {
  if (!detux::g_in_space) {
    static auto f = real<int (*)(idtype_t, id_t, siginfo_t*, int)>("waitid");
    return f(type, id, info, options);
  }
  if ((options & WNOWAIT) || !(options & WEXITED) || !info || type == P_PIDFD) {
    errno = EINVAL;
    return -1;
  }
  int status = 0;
  const pid_t pid = space_wait(type == P_PID ? static_cast<pid_t>(id) : -1, &status);
  if (pid < 0) return -1;
  fill_siginfo(info, pid, status);
  return 0;
}

int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* actions,
                const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  if (detux::g_in_space) return space_spawn(pid, path, actions, attr, argv, envp);
  static auto f = real<decltype(&posix_spawn)>("posix_spawn");
  return f(pid, path, actions, attr, argv, envp);
}

int posix_spawnp(pid_t* pid, const char* file, const posix_spawn_file_actions_t* actions,
                 const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  if (detux::g_in_space) return space_spawn(pid, file, actions, attr, argv, envp);  // no PATH search
  static auto f = real<decltype(&posix_spawnp)>("posix_spawnp");
  return f(pid, file, actions, attr, argv, envp);
}

pid_t waitpid(pid_t pid, int* status, int options) {
  if (detux::g_in_space) return space_wait(pid, status);
  static auto f = real<pid_t (*)(pid_t, int*, int)>("waitpid");
  return f(pid, status, options);
}

pid_t wait(int* status) {
  if (detux::g_in_space) return space_wait(-1, status);
  static auto f = real<pid_t (*)(int*)>("wait");
  return f(status);
}

pid_t wait4(pid_t pid, int* status, int options, struct rusage* ru) {
  if (detux::g_in_space) {
    if (ru) *ru = rusage{};
    return space_wait(pid, status);
  }
  static auto f = real<pid_t (*)(pid_t, int*, int, struct rusage*)>("wait4");
  return f(pid, status, options, ru);
}

}  // extern "C"
