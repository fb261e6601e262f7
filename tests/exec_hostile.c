/* exec_hostile.c: a program without detux's runtime that a space execs
 * (exec_test.cc).  It runs supervised while "loading" and tries to reach
 * the host; its exit code says what it saw:
 *   exec_hostile read    opens /etc/hostname: 3 if refused (ENOENT), 4 if read
 *   exec_hostile vdso    0x80 | (AT_SYSINFO_EHDR != 0) | 2 * (AT_RANDOM bytes
 *                        are not detux's fixed ones)
 *   exec_hostile tsc     the low 7 bits of two rdtsc deltas (fixed steps)
 *   exec_hostile create  creates a host file: 5 if refused (ENOENT), 6 if made
 *   exec_hostile overwrite  opens the loader cache for writing (must fault)
 *   exec_hostile time    clock_gettime (must fault: no vDSO, no syscall)
 *   exec_hostile write   write(1, ...) (must fault)
 *   exec_hostile filter-deny   installs a filter that answers every call but
 *                        exit_group with ENOSYS, the detux call included:
 *                        9 if refused (EINVAL), 10 if installed
 *   exec_hostile filter-allow  installs a filter that allows every call:
 *                        10 if installed, 9 if refused */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/auxv.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

int main(int argc, char** argv) {
  if (argc < 2) return 100;
  const char* what = argv[1];
  if (!strcmp(what, "read")) {
    int fd = open("/etc/hostname", O_RDONLY);
    return fd < 0 ? 3 : 4;
  }
  if (!strcmp(what, "vdso")) {
    const unsigned char* r = (const unsigned char*)getauxval(AT_RANDOM);
    int random_differs = !r || r[1] != 0x12 || r[15] != 0xf0;
    return 0x80 | (getauxval(AT_SYSINFO_EHDR) != 0) | (random_differs << 1);
  }
  if (!strcmp(what, "tsc")) {
    uint64_t a = __rdtsc(), b = __rdtsc(), c = __rdtsc();
    return (int)(((b - a) + (c - b)) & 0x7f);
  }
  if (!strcmp(what, "create")) {
    int fd = open(argc > 2 ? argv[2] : "/tmp/detux-hostile-exec", O_WRONLY | O_CREAT, 0644);
    return fd < 0 ? 5 : 6;
  }
  if (!strcmp(what, "overwrite")) {
    int fd = open("/etc/ld.so.cache", O_WRONLY);
    return fd < 0 ? 5 : 6;
  }
  if (!strcmp(what, "time")) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int)(ts.tv_nsec & 0x7f);
  }
  if (!strcmp(what, "write")) {
    return write(1, "escaped\n", 8) == 8 ? 7 : 8;
  }
  if (!strcmp(what, "filter-deny") || !strcmp(what, "filter-allow")) {
    struct sock_filter deny[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit_group, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    };
    struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog fp = {4, deny};
    if (!strcmp(what, "filter-allow")) fp = (struct sock_fprog){1, allow};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 11;
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp);
    return r == 0 ? 10 : errno == EINVAL ? 9 : 12;
  }
  return 101;
}
