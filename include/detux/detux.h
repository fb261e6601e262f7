/*
 * detux.h: the deterministic kernel interface of detux.
 *
 * A deterministic program runs as a tree of *spaces*.  A space is a Linux
 * process that sees only its own private memory and can make exactly three
 * calls: Put (dput), Get (dget) and Ret (dret).  Every other Linux system
 * call faults the space.  The root of the tree is the *master*: an ordinary
 * Linux process with full access, the only place where real I/O happens.
 * This is the model of Determinator (Aviram et al., OSDI 2010) with the
 * names of Cotter's deterministic Linux (dput/dget/dret).
 *
 * Children are named by their parent with small integers (det_child_t) that
 * the parent chooses; the system names nothing.  A space can talk only to its
 * parent (by Ret) and to its own children (by Put and Get).
 *
 *   Put  (dput)  parent -> child: registers, memory copies, snapshots, start.
 *   Get  (dget)  child -> parent: registers, memory copies, merges, status.
 *   Ret  (dret)  a child stops and hands control back to its parent.
 *
 * Put and Get on a running child block until that child stops: by Ret, by
 * exiting, or by a fault (a fault is an implicit Ret; see DET_S_FAULTED).
 *
 * The same calls work in the master and in spaces.  An ordinary process
 * becomes master on its first detux call (or explicitly, det_become_master).
 *
 * ERRORS.  Every call returns a negative number on failure: either -errno
 * (EINVAL, EFAULT, ESRCH, EEXIST, EPERM, ENOMEM, ETIMEDOUT, EINTR) or one of
 * the -DET_E* codes below.  Errors that depend only on the caller's own
 * arguments and the tree's state are deterministic.  A call whose op or flag
 * bits are undefined is not an error but a fault of the calling space
 * (DET_FAULT_BADCALL); in the master it returns -EINVAL.
 *
 * Thread safety: the master's detux calls must come from one thread (the one
 * that became master).  A call from any other thread, or from a copy of the
 * master made by fork(), returns -DET_ETHREAD and changes nothing (ptrace
 * ties every space to the master thread).  A space is always
 * single-threaded.
 */
#ifndef DETUX_DETUX_H
#define DETUX_DETUX_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* DET_OWN's repeated range (see there). */
struct det_stride {
  size_t count;  /* pieces, at least 1 */
  size_t stride; /* bytes from the start of one piece to the next */
};

/* A child's name, chosen by its parent: 0 .. DET_CHILD_MAX. */
typedef unsigned long det_child_t;
#define DET_CHILD_MAX 0xffffUL

/* ---- Flags for dput and dget ------------------------------------------- */

/* Registers: addr points to a struct det_regs, size = sizeof(struct
 * det_regs).  Put sets the child's registers, Get reads them.  May be
 * combined with DET_SNAP, DET_START (Put) only: addr/size are the regs. */
#define DET_REGS 0x0001UL
/* Copy size bytes: Put copies the caller's [addr, addr+size) to the child's
 * [child_addr, ...), Get copies the child's [child_addr, ...) to the caller's
 * [addr, ...).  Any offsets and sizes.  Destination pages that are not mapped
 * are mapped read-write first (counted against the memory limit).  A source
 * byte that cannot be read, or a destination page that is mapped but not
 * writable, is -EFAULT; the destination may then hold part of the copy. */
#define DET_COPY 0x0002UL
/* Zero a range.  Put: the child's [child_addr, +size).  Get: the caller's own
 * [addr, +size) (Determinator: memory allocation is Get/Zero on oneself).
 * Whole pages become fresh zero pages (read-write, or the DET_PROT_* bits if
 * DET_PERM is also given); partial end pages must be mapped and writable. */
#define DET_ZERO 0x0004UL
/* Snapshot (Put only): after any copy, the child's whole memory is frozen
 * as its reference image for a later Get with DET_MERGE. */
#define DET_SNAP 0x0008UL
/* Merge.  Get: three-way merge of the child's [addr, +size) (same
 * address in both; child_addr must equal addr or be NULL) into the caller,
 * against the child's snapshot.  Bytes changed only in the child are copied
 * to the caller, bytes changed only in the caller stay, bytes changed on
 * both sides are a conflict.  On conflict NOTHING is written: the caller's
 * memory is exactly as before the call, dget returns -DET_ECONFLICT, and
 * the child's status reports the lowest conflicting address (the same on
 * every run).  The child needs a snapshot (else -EINVAL).
 * Put (a barrier's refresh): make the child's [addr, +size) equal to the
 * caller's, like DET_COPY at the same address, but moving only the pages
 * that can differ: those the child wrote since its snapshot and those in
 * which the caller differs from that snapshot.  The child needs a snapshot
 * taken from the caller's memory (a dfork, or an earlier Put MERGE|SNAP),
 * else -EINVAL.  Usually given with DET_SNAP|DET_START, as a barrier does:
 * cost proportional to what changed, not to the size of the range.  Pages
 * the caller mapped since the snapshot are mapped in the child too; pages
 * it dropped since (munmap, MADV_DONTNEED) are not seen as changed, and the
 * child keeps what it had there. */
#define DET_MERGE 0x0010UL
/* Permissions on page-aligned ranges (else -EINVAL).  Put: the child's
 * [child_addr, +size); Get: the caller's own [addr, +size).  Mapped pages
 * get the DET_PROT_* bits; unmapped pages, if any bit is given, become fresh
 * zero pages with those bits (counted against the memory limit). */
#define DET_PERM 0x0020UL
/* Start (Put only): after everything else, let the child run. */
#define DET_START 0x0040UL
/* Kill (Put only): kill the child and its whole subtree and forget it.  Not
 * combinable with anything else.  Killing an absent child is not an error. */
#define DET_KILL 0x0080UL
/* Status (Get only): addr points to a struct det_status (size = its size).
 * Waits until the child stops unless DET_DONT_WAIT. */
#define DET_STATUS 0x0100UL
/* Exclusive create (Put only): the child must not exist yet (else -EEXIST).
 * The runtime gives the child a heap extent of its own and remembers it until
 * the child is killed; a space with 4096 such children alive gets
 * -DET_ELIMIT. */
#define DET_FORK 0x0200UL
/* Master only (-EPERM in a space): do not block on a running child.  With
 * DET_STATUS it polls; with anything else a running child gives -EAGAIN. */
#define DET_DONT_WAIT 0x0400UL
/* Own (Put only): give the child its own copy, now, of every page of
 * [child_addr, +size), so that its first store to each takes no
 * copy-on-write fault: a performance hint for a child about to write there
 * (a fork/join worker's output block).  No byte, permission or merge result
 * changes.  With addr non-NULL, addr points to a struct det_stride and the
 * range repeats: count pieces of size bytes, stride bytes apart (the block
 * of a row-major matrix; stride >= size, count >= 1).  Every page from the
 * first piece to the end of the last must be mapped writable in the child
 * (for a new child: in the caller), checked before anything else is done,
 * else -EFAULT and nothing is made or started; a range that wraps is
 * -EINVAL.  Applied after DET_SNAP and before DET_START.  Not combinable
 * with DET_REGS, DET_COPY, DET_ZERO, DET_PERM, DET_MERGE (-EINVAL).  A page
 * copied and then not written costs the copy and a look at the next merge.
 * With size 0 it names no range but the pages the child had written, as
 * found by the refreshes (Put DET_MERGE) since its last snapshot: a thread
 * restarted after a barrier mostly writes the same pages again. */
#define DET_OWN 0x0800UL

#define DET_PROT_READ 0x1000UL
#define DET_PROT_WRITE 0x2000UL
#define DET_PROT_EXEC 0x4000UL

/* A Put on a child that does not exist creates it as a copy-on-write copy
 * of the caller, stopped at this very call (as in the thesis).  When it is
 * later started without DET_REGS, its dput returns DET_CHILD while the
 * caller's dput returned 0.  This is how dfork works. */
#define DET_CHILD 1

/* ---- Errors (returned negated) ----------------------------------------- */
#define DET_ECONFLICT 1001 /* merge conflict; see det_status.conflict_addr */
#define DET_EFAULTED 1002  /* djoin: the child faulted; nothing merged */
#define DET_EEXITED 1003   /* djoin: the child exited non-zero; none of its
                              memory merged (its files are reconciled, as a
                              process's writes outlive its failure) */
#define DET_ELIMIT 1004    /* space quota exhausted (deterministic) */
#define DET_ENOTSPACE 1005 /* det_* master-only call made in a space */
#define DET_ETHREAD 1006   /* master call from a thread other than the master
                              thread, or from a fork() of the master */

/* Human-readable text for any value returned by a detux call. */
const char *det_strerror(long err);

/* ---- Registers --------------------------------------------------------- */
struct det_regs {
  uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp;
  uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
  uint64_t rip, rflags; /* Put keeps only the user flags CF PF AF ZF SF DF OF */
  uint64_t fs_base, gs_base;
  uint8_t fxsave[512] __attribute__((aligned(16))); /* x87, MXCSR, XMM0-15 */
};

/* ---- Status ------------------------------------------------------------ */
enum det_state {
  DET_S_ABSENT = 0,  /* no such child */
  DET_S_RUNNING = 1, /* started and not stopped (only seen with DONT_WAIT) */
  DET_S_STOPPED = 2, /* created and never started, or stopped in dret() */
  DET_S_EXITED = 3,  /* called exit(code); memory still inspectable */
  DET_S_FAULTED = 4, /* fault: see fault, signal, addr, syscall */
};
enum det_fault {
  DET_FAULT_NONE = 0,
  DET_FAULT_SIGNAL = 1,  /* a processor fault or kill: signal, addr.  A
                            child killed from outside (SIGKILL) is gone:
                            every call on it but Get DET_STATUS and Put
                            DET_KILL returns -ESRCH */
  DET_FAULT_SYSCALL = 2, /* a refused Linux system call: syscall */
  DET_FAULT_BADCALL = 3, /* a detux call with undefined op or flag bits */
};
struct det_status {
  int32_t state;         /* enum det_state */
  int32_t exit_code;     /* DET_S_EXITED: the exit code */
  int32_t fault;         /* enum det_fault when DET_S_FAULTED */
  int32_t signal;        /* DET_FAULT_SIGNAL: the signal number */
  uint64_t addr;         /* DET_FAULT_SIGNAL: fault address (si_addr) */
  int64_t syscall;       /* DET_FAULT_SYSCALL: the refused number; bit 32
                            set if it came through the 32-bit int 0x80 ABI */
  int32_t conflict;      /* 1 if the last merge from this child conflicted */
  int32_t fs_conflicts;  /* djoin/wait: files its reconciliation marked
                            conflicted (det_fs_conflicts names them) */
  uint64_t conflict_addr; /* the lowest conflicting address */
};

/* ---- The three calls --------------------------------------------------- */
long dput(det_child_t child, unsigned long flags, void *addr, size_t size,
          void *child_addr);
long dget(det_child_t child, unsigned long flags, void *addr, size_t size,
          void *child_addr);
/* Stop and hand control to the parent.  Returns when the parent starts this
 * space again.  In the master it does nothing. */
void dret(void);

/* ---- Conveniences built on the three calls ----------------------------- */

/* Like fork(): creates `child` as a copy-on-write snapshot of the caller,
 * already started.  Returns 0 in the new child and 1 in the caller, or a
 * negative error (-EEXIST if `child` is in use).  In the master, the child
 * finishes setting itself up while the master goes on, and the master
 * completes that (and so lets the child run) at its next detux call: a
 * master that forks and then computes for long should make one call first
 * (dget(child, DET_STATUS | DET_DONT_WAIT, ...)).  If that set-up fails,
 * which only a broken system makes happen, the child is reported as
 * faulted by SIGKILL. */
int dfork(det_child_t child);

/* Wait until `child` stops, merge its changes to the program's shared memory
 * into the caller, print its console output, and kill and forget the child.
 * Shared memory is the heap (malloc, new) and the main executable's
 * writable data and bss, without what belongs to libraries (RELRO, the
 * lazily bound GOT, copy-relocated objects such as std::cout); never
 * stacks, the libraries' own data (stdio state) or detux's.  A child that
 * stopped in dret() or exited with code 0 is merged.  While waiting, the
 * caller serves the child's requests for standard input.  Returns 0,
 * -DET_ECONFLICT (the heap is merged first, then the executable's data; the
 * part with the conflict is left exactly as it was), -DET_EFAULTED or
 * -DET_EEXITED (nothing merged), or another -errno.  djoin_status also
 * reports the child's last status (may be NULL). */
int djoin(det_child_t child);
int djoin_status(det_child_t child, struct det_status *status);

/* ---- The runtime: threads that merge, barriers, parallel loops ---------
 * Determinator's threads: a thread is a child space forked from a snapshot
 * of the caller; its writes to shared memory reach the caller when it is
 * joined, children in id order.  Inside spaces, malloc/free/new/delete,
 * printf/puts/std::cout/std::cerr and reads of stdin work unchanged: the
 * heap is deterministic (same addresses on every run, no conflicts between
 * children allocating at the same time), and output appears at the join. */
typedef void (*det_thread_fn)(void *arg);
/* Start child `child` as a thread running fn(arg).  When fn returns, the
 * thread flushes its stdio and ends (exit code 0).  0 or a negative error
 * (-EEXIST if the id is in use, -DET_ELIMIT). */
int det_thread_start(det_child_t child, det_thread_fn fn, void *arg);
/* The same for a thread that will write `count` pieces of `size` bytes,
 * `stride` bytes apart from `first` (count 1: one range): their pages are
 * copied for it in one batch before it starts (DET_OWN), and it reads one
 * byte of each before fn runs, so that fn's stores take no fault.  The
 * pieces must be mapped writable (else -EFAULT, and no thread is made). */
int det_thread_start_writing(det_child_t child, det_thread_fn fn, void *arg, void *first,
                             size_t size, size_t count, size_t stride);
/* In a thread: wait at the barrier of its group (see det_group_join).  In
 * the master, or in a space whose parent is not in det_group_join, it is a
 * plain dret(). */
void det_barrier(void);
/* Join the threads [first, first+count), Determinator's barrier included:
 * wait for them in id order; when every thread still running has reached
 * det_barrier(), merge them all, in id order, print their output, and start
 * them again on the merged memory, so each sees the others' writes.
 * Threads that end are joined as by djoin.  Returns 0 when all have ended,
 * or the first error in id order; then every thread of the group is killed
 * and *failed (if not NULL) tells which child failed and its status. */
int det_group_join(det_child_t first, det_child_t count, det_child_t *failed,
                   struct det_status *status);
/* fn(i, arg) for every i in [begin, end).  The range is cut into chunks of
 * `grain` iterations (fixed by the caller, never by the number of CPUs),
 * chunk k running in child k; at most 64 chunks run at once, always the
 * same ones together, so the result is the same on 1 or N CPUs.  Returns 0
 * or the first error, as det_group_join. */
int det_parallel_for(long begin, long end, long grain, void (*fn)(long i, void *arg),
                     void *arg);
/* The same for a loop whose index i writes out[i], elements of `elem`
 * bytes: each chunk's slice of out is copied for its space before it starts
 * (as det_thread_start_writing).  A chunk whose slice is not mapped
 * writable is not started: -EFAULT, as for any chunk that cannot start
 * (the chunks already started are joined first). */
int det_parallel_for_writing(long begin, long end, long grain, void (*fn)(long i, void *arg),
                             void *arg, void *out, size_t elem);
/* After a det_parallel_for(_writing) that failed: which child (the chunk
 * k - 64 * wave, as det_group_join counts it) and its status, as
 * det_group_join reports them; conflict_addr says where a merge conflicted.
 * Either pointer may be NULL.  Returns 0, or -ENOENT if the last loop of
 * this space did not fail. */
int det_parallel_for_failure(det_child_t *failed, struct det_status *status);

/* Names an address of this process for a message: the variable it belongs
 * to, with its index and member path where debug information exists
 * ("actor[3].x"), else the nearest symbol plus offset, else the mapping.
 * Writes a NUL-terminated string into buf and returns buf. */
const char *det_describe_address(uint64_t addr, char *buf, size_t len);

/* ---- The file system of spaces ------------------------------------------
 * Every space holds a whole file system (modelled on BSD FFS: 4 KiB blocks,
 * inodes with direct, indirect and double-indirect blocks, hard links) in
 * its own memory, a copy-on-write copy of its parent's.  Inside spaces,
 * open/read/write/lseek/close/stat/unlink/rename/mkdir/rmdir/link/truncate
 * (and so fopen/fprintf and std::fstream) reach it; descriptors are the
 * lowest free from 3.  At a join or wait the parent reconciles per file:
 * appends on both sides are both kept (the parent's first), a file changed
 * on one side only takes that side, a file changed otherwise on both is
 * marked conflicted (opening it fails with -DET_ECONFLICT until it is
 * truncated by O_TRUNC or removed), and the same name created on both sides
 * is a conflict.  The master's own file calls stay Linux's. */
/* Master: write the file system to an image, atomically (temporary file,
 * fsync, rename).  0 or -errno. */
int det_fs_save(const char *image);
/* Master: replace the file system with an image.  A corrupt, truncated or
 * hostile image is refused (-EINVAL, -EIO ...) with the reason in *why
 * (may be NULL) and the file system unchanged.  `detux run --fs IMAGE`
 * loads IMAGE at start (if it exists) and saves it at exit. */
int det_fs_load(const char *image, char *why, size_t why_len);
/* The paths the last join or wait marked conflicted, one per line. */
const char *det_fs_conflicts(void);

/* ---- Processes ----------------------------------------------------------
 * In a space, fork(), wait(), waitpid() and exit() work as in Determinator:
 * a process is a child space that never merges memory, numbered by the
 * lowest free id from 1; waitpid(-1) waits for the lowest-numbered child;
 * WNOHANG is ignored.  execve() and its family (execv, execvp, execvpe,
 * execl, execlp, execle) replace the space's program with a detux program
 * image: the regular file at `path` in the space's file system if there is
 * one, else the image the master registered under the name `path`.  The
 * space keeps its id and parent; its children are killed; standard input
 * goes on where the old program stopped; its file system and open files
 * are kept; stdio is flushed first.  Errors: ENOENT (no such image),
 * ENOEXEC (not an x86-64 ELF executable), E2BIG, EFAULT.  An image that is
 * not linked with libdetux runs supervised until it faults (any system
 * call a dynamic loader would not make) or exits.  The master's own fork
 * and exec are Linux's. */
/* Master: let spaces exec the program at host path `path` by `name` (its
 * bytes are read now; later changes to the file do not matter).  `detux run
 * --image NAME=PATH` does this at start.  0, -ENOEXEC, or -errno. */
int det_exec_register(const char *name, const char *path);

/* ---- Master only -------------------------------------------------------- */
/* Become master explicitly (the first detux call does it implicitly).
 * Returns 0, or -DET_ENOTSPACE in a space. */
int det_become_master(void);
/* 1 in the master, 0 in a space. */
int det_is_master(void);
/* Signals in *set end a blocking wait in the master with -EINTR; the signal
 * is then delivered as usual.  Other signals never interrupt a wait.  NULL
 * clears the set. */
int det_allow_signals(const sigset_t *set);
/* A blocking wait in the master that lasts longer than ms milliseconds
 * returns -ETIMEDOUT and leaves the child running (0 = wait forever).  This
 * is the master's own, nondeterministic, defence against a child that never
 * stops: there is no instruction counter on these machines. */
int det_set_wait_timeout(long ms);

/* Deterministic limits, set before the first space is created. */
struct det_limits {
  /* Space quota: the number of spaces the master's whole tree may hold at
   * once (default 8192).  Every space has a quota.  Creating a child costs
   * the creator 1 + the quota it hands the child, which is the integer
   * square root of the creator's free quota; both come back when the child
   * is killed.  So a parent can fan out to about sqrt(q) children, each able
   * to fan out again, and the whole tree never exceeds max_spaces.  Running
   * out gives -DET_ELIMIT, deterministically: a space's quota depends only
   * on its own history. */
  long max_spaces;
  /* Bytes a space may gain through DET_PERM, DET_ZERO and DET_COPY mappings
   * over its life (inherited by its children; default 16 GiB).  Beyond
   * that the call returns -ENOMEM, deterministically.  The same bound
   * applies to the heap of each space (and of the master): malloc returns
   * NULL with errno ENOMEM once a space holds this many heap bytes. */
  long max_space_bytes;
};
int det_set_limits(const struct det_limits *limits);

#ifdef __cplusplus
}
#endif
#endif
