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
 *                        10 if installed, 9 if refused
 * and two that report for duty (kOpBirth) without the runtime, having left
 * out part of what the runtime does first (a review found both accepted, on
 * December 8; the master now checks and confines a new program itself):
 *   exec_hostile birth-shared  keeps a MAP_SHARED page (a child space would
 *                        share it): its birth must fault the space
 *   exec_hostile cwd-stat      fstat of AT_FDCWD ("" with AT_EMPTY_PATH): the
 *                        master's directory, changing as files come and go:
 *                        23 if refused (ENOENT), 22 if it saw it
 *   exec_hostile fstat-memfd   fstat of fd 3 (the memfd holding the space
 *                        filter): its times are its creation time and its
 *                        inode a counter: 24 if both read as fixed, 25 if not
 *   exec_hostile birth-deaf    the same, with its filter also answering
 *                        seccomp itself (ERRNO 0), so that the master's
 *                        own filter would not go on: its birth must fault
 *   exec_hostile birth-loose   stacks, instead of the space filter, one that
 *                        marks the detux call and allows everything else,
 *                        then maps a shared page: that call must fault */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/auxv.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

/* The detux call as the runtime makes it (gadget.S), and a gadget for the
 * master to inject through. */
long dcall(long op, long child, long flags, long addr, long size, long child_addr);
extern char hostile_gadget[];
__asm__(".text\n.globl dcall\ndcall:\n push $0\n mov %rcx, %r10\n mov $0xde7, %eax\n syscall\n"
        " pop %rcx\n cmp $-38, %rax\n cmove %rcx, %rax\n ret\n"
        ".globl hostile_gadget\nhostile_gadget:\n syscall\n int3\n");
static char carry[1 << 16];

static int birth(const struct sock_fprog* own) {
  static struct sock_filter prog[4096];
  struct sock_fprog fp = {0, prog};
  if (own) {
    fp = *own;
  } else {
    long got = pread(3, prog, sizeof prog, 0); /* the space filter the master gave */
    if (got <= 0) return 30;
    fp.len = (unsigned short)(got / sizeof(struct sock_filter));
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 31;
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp) != 0) return 32;
  dcall(4 /* kOpBirth */, 0, 0, (long)carry, sizeof carry, (long)hostile_gadget);
  return 0;
}

static const char* what_of(int argc, char** argv) { return argc > 1 ? argv[1] : ""; }

int main(int argc, char** argv) {
  if (argc < 2) return 100;
  if (!strcmp(what_of(argc, argv), "birth-shared")) {
    void* shared = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) return 33;
    int r = birth(NULL);
    return r ? r : 20;
  }
  if (!strcmp(what_of(argc, argv), "birth-loose") || !strcmp(what_of(argc, argv), "birth-deaf")) {
    const int deaf = !strcmp(what_of(argc, argv), "birth-deaf");
    struct sock_filter loose[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xde7, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE | 1 /* kSeccompCall */),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, deaf ? __NR_seccomp : 0xde8, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog fp = {6, loose};
    close(3); /* as the runtime does: no descriptor may stay open */
    int r = birth(&fp);
    if (r) return r;
    void* shared = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return shared == MAP_FAILED ? 34 : 21;
  }
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
  if (!strcmp(what, "cwd-stat")) {
    struct stat st;
    return syscall(SYS_newfstatat, AT_FDCWD, "", &st, AT_EMPTY_PATH) == 0 ? 22 : 23;
  }
  if (!strcmp(what, "fstat-memfd")) {
    struct stat st;
    if (fstat(3, &st) != 0) return 26;
    return st.st_mtime == 0 && st.st_ctime == 0 && st.st_ino == 1 ? 24 : 25;
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
