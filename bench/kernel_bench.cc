// kernel_bench.cc: the cost of detux's calls, each against a baseline
// measured in the same run.
//
// What is measured (the numbers are the goals of the performance issue):
//   1. One dput/dget round trip made FROM A SPACE (goal <= 5 us).  A space
//      cannot read a clock, so the master starts a space that makes N calls
//      and then dret()s, and divides its own wall time by N.  Calls: dget
//      DET_STATUS on an absent child, and dput DET_COPY of 16 bytes to the
//      space's own stopped child.  Also a bare start+Ret cycle driven by the
//      master.  Baselines: getppid() in the master, a pipe round trip
//      between two plain processes, and the raw mechanism floor: a plain
//      seccomp RET_TRACE stop served with GETEVENTMSG + GETREGS + SETREGS +
//      CONT, what the supervisor does per call at the least.
//   2. One round trip FROM THE MASTER: dget DET_STATUS and dput DET_COPY of
//      64 bytes on a stopped child (goal <= 5 us).  Baselines: getppid(),
//      process_vm_writev of 64 bytes into a stopped plain process.
//   3. dfork + djoin of a child that writes one page, with 1 MB of touched
//      data, against pthread_create + pthread_join of a thread that writes
//      one page (goal: ratio <= 2), with the phases of dfork/djoin.
//   4. DET_MERGE of a child that dirtied all 16384 pages of a 64 MB region:
//      GB/s (goal >= 1 GB/s) and us per dirty page beyond one COW fault
//      (goal <= 2 us).  Baselines: memcpy of 64 MB, a COW write fault per
//      page after a plain fork(), one read of /proc/self/maps.
//   5. DET_MERGE over a 1 GB region of which the child wrote one page, the
//      region populated or not (goal <= 2 ms).  Baseline: one pread of the
//      region's /proc/self/pagemap entries.
//   6. (1) with the master and its spaces pinned to CPU 0, and unpinned.
//      "pinnedfork" is sched_setaffinity before dfork only; "pinned" also
//      re-pins the master and all its children once the spaces exist,
//      because the supervisor resets affinities as it works (see Place).
//   x. Experiments that explain the figures: the raw ptrace floor with
//      CPUID faulting in the tracee (as in every space) and in both; and (1)
//      with CPUID faulting turned on in the master thread too, so that a
//      master<->space switch no longer rewrites MSR_MISC_FEATURES_ENABLES.
//      Not what a program gets today; they show what a supervisor change
//      would buy.
// After the Google Benchmark output, main() prints a table of every figure
// beside its baseline, the ratio, the goal and whether it holds.
//
// Spaces make no Linux system call: code after `dfork(..) == 0` only writes
// memory and calls dput/dget/dret.  Iteration counts are fixed so that the
// whole run takes well under two minutes on two cores.
#include <asm/prctl.h>
#include <benchmark/benchmark.h>
#include <detux/detux.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

constexpr size_t kPage = 4096;

// ---- Figures collected for the summary ------------------------------------

std::map<std::string, std::vector<double>> g_fig;

void record(const std::string& key, double v) { g_fig[key].push_back(v); }

// Median over repetitions; NaN when the benchmark did not run.
double fig(const std::string& key) {
  auto it = g_fig.find(key);
  if (it == g_fig.end() || it->second.empty()) return NAN;
  std::vector<double> v = it->second;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// ---- CPU placement ----------------------------------------------------------
//
// kUnpinned:   the process's own affinity; the supervisor places spaces as it
//              likes.
// kPinnedFork: sched_setaffinity(CPU 0) in the master before dfork, as a
//              program would do it; children inherit it.  (The supervisor may
//              change the affinity of the master and of its spaces after
//              that: the summary shows whether it held.)
// kPinned:     as kPinnedFork, and once the spaces exist the master thread
//              and every child process of the master (all spaces and their
//              snapshots are its children: they are created with
//              CLONE_PARENT) are pinned to CPU 0 again, so that every
//              handoff really is a same-CPU one.

enum Place { kUnpinned, kPinnedFork, kPinned };

cpu_set_t g_all_cpus;  // the affinity the process started with

void set_pinned(bool pin) {
  if (pin) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(0, &s);
    sched_setaffinity(0, sizeof s, &s);
  } else {
    sched_setaffinity(0, sizeof g_all_cpus, &g_all_cpus);
  }
}

// Pins the master thread and all its child processes to CPU 0.  Returns the
// number of children pinned.
int pin_tree_to_cpu0() {
  set_pinned(true);
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%ld/children", syscall(SYS_gettid));
  FILE* f = std::fopen(path, "re");
  if (!f) return -1;
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(0, &s);
  int n = 0, pid;
  while (std::fscanf(f, "%d", &pid) == 1)
    if (sched_setaffinity(pid, sizeof s, &s) == 0) ++n;
  std::fclose(f);
  return n;
}

// True if the master thread is on CPU 0 only.
bool master_on_cpu0_only() {
  cpu_set_t s;
  CPU_ZERO(&s);
  sched_getaffinity(0, sizeof s, &s);
  return CPU_COUNT(&s) == 1 && CPU_ISSET(0, &s);
}

// Pins (or not) the master thread for one benchmark; spaces forked meanwhile
// inherit it.  Restores the original affinity at the end.
struct Placement {
  explicit Placement(Place p) { set_pinned(p != kUnpinned); }
  explicit Placement(bool pin) { set_pinned(pin); }
  ~Placement() { set_pinned(false); }
};

const char* placement_name(bool pin) { return pin ? "pinned" : "unpinned"; }
const char* place_name(Place p) {
  return p == kUnpinned ? "unpinned" : p == kPinnedFork ? "pinnedfork" : "pinned";
}

// CPUID faulting (ARCH_SET_CPUID) for the calling thread.  Every space runs
// with it on; Linux rewrites MSR_MISC_FEATURES_ENABLES on each context
// switch between a thread with it and one without, which is expensive in a
// VM.  Used only for the experiments marked "cpuidfault" below.
bool set_cpuid_faulting(bool on) {
  return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1) == 0;
}

// ---- Helpers for the master -------------------------------------------------

bool wait_stopped(det_child_t c, det_status* st) {
  *st = det_status{};
  return dget(c, DET_STATUS, st, sizeof *st, nullptr) == 0 && st->state == DET_S_STOPPED;
}

void kill_child(det_child_t c) { dput(c, DET_KILL, nullptr, 0, nullptr); }

std::string describe(const det_status& st) {
  char b[160];
  std::snprintf(b, sizeof b, "child state=%d fault=%d sig=%d addr=%#llx sys=%lld", st.state,
                st.fault, st.signal, static_cast<unsigned long long>(st.addr),
                static_cast<long long>(st.syscall));
  return b;
}

// A region mapped in the master by Get/Perm on itself (as a program would),
// unmapped with munmap when done.
struct PermRegion {
  uint8_t* p = nullptr;
  size_t len = 0;
  long err = 0;
  PermRegion(uint64_t at, size_t n) : p(reinterpret_cast<uint8_t*>(at)), len(n) {
    err = dget(0, DET_PERM | DET_PROT_READ | DET_PROT_WRITE, p, len, nullptr);
  }
  ~PermRegion() { munmap(p, len); }
  void touch(uint8_t v) {
    for (size_t off = 0; off < len; off += kPage) p[off] = v;
  }
};

constexpr uint64_t kRegion64M = 0x320000000000ULL;
constexpr uint64_t kRegion64Mb = 0x328000000000ULL;  // memcpy destination
constexpr uint64_t kRegion1G = 0x340000000000ULL;
constexpr size_t k64M = 64UL << 20;
constexpr size_t k1G = 1UL << 30;

// ============================================================================
// 1 and 6. Round trips from a space, timed from the master.
// ============================================================================

enum SpaceOp { kRetOnly, kStatusAbsent, kPutCopy };

volatile long g_batch;          // calls per batch, read by the space
volatile long g_space_errors;   // calls that did not return 0, in the space
alignas(64) char g_copy_src[64] = "sixty-four bytes of payload for DET_COPY, padded to 64 b";
alignas(64) volatile char g_copy_dst[64];

// The space: stops, then on every start makes g_batch calls and stops again.
[[noreturn]] void space_loop(SpaceOp op) {
  if (op == kPutCopy) {
    // Its own child 1, created stopped and never started.
    if (dput(1, 0, nullptr, 0, nullptr) == DET_CHILD) {
      for (;;) dret();
    }
  }
  for (;;) {
    dret();
    long n = g_batch;
    for (long i = 0; i < n; ++i) {
      long r;
      if (op == kStatusAbsent) {
        det_status st{};
        r = dget(7, DET_STATUS, &st, sizeof st, nullptr);
        if (st.state != DET_S_ABSENT) r = -1;
      } else {
        r = dput(1, DET_COPY, g_copy_src, 16, const_cast<char*>(g_copy_dst));
      }
      if (r != 0) g_space_errors = g_space_errors + 1;
    }
  }
}

const char* op_key(SpaceOp op) {
  return op == kRetOnly ? "space_ret" : op == kStatusAbsent ? "space_status" : "space_copy";
}

void BM_Space(benchmark::State& state, SpaceOp op, Place place, bool cpuid_master = false) {
  Placement placement(place);
  const bool pinned = place != kUnpinned;
  long n = op == kRetOnly ? 0 : (pinned ? 2000 : 250);
  g_batch = n;
  g_space_errors = 0;
  int r = dfork(0);
  if (r == 0) space_loop(op);
  det_status st{};
  if (r != 1 || !wait_stopped(0, &st)) {
    state.SkipWithError(("dfork/first stop failed: " + describe(st)).c_str());
    kill_child(0);
    return;
  }
  // Did the pinning asked for before dfork survive the supervisor's work?
  bool held = master_on_cpu0_only();
  if (place == kPinned) pin_tree_to_cpu0();
  // Experiment: the master thread runs with CPUID faulting on too, so that
  // a switch between it and a space leaves the MSR alone.
  if (cpuid_master && !set_cpuid_faulting(true)) {
    state.SkipWithError("ARCH_SET_CPUID");
    kill_child(0);
    return;
  }
  double total = 0;
  long batches = 0;
  for (auto _ : state) {
    double t0 = now_s();
    long a = dput(0, DET_START, nullptr, 0, nullptr);
    long b = dget(0, DET_STATUS, &st, sizeof st, nullptr);
    double dt = now_s() - t0;
    state.SetIterationTime(dt);
    if (a != 0 || b != 0 || st.state != DET_S_STOPPED) {
      state.SkipWithError(("space did not stop cleanly: " + describe(st)).c_str());
      break;
    }
    total += dt;
    ++batches;
  }
  if (cpuid_master) set_cpuid_faulting(false);
  long errs = -1;
  dget(0, DET_COPY, &errs, sizeof errs, const_cast<long*>(&g_space_errors));
  kill_child(0);
  if (errs != 0) {
    state.SkipWithError(("calls failed in the space: " + std::to_string(errs)).c_str());
    return;
  }
  if (batches == 0) return;
  double us = total / static_cast<double>(batches * std::max(n, 1L)) * 1e6;
  state.counters["us_per_call"] = us;
  state.counters["calls"] = static_cast<double>(batches * std::max(n, 1L));
  if (place != kUnpinned) state.counters["master_pin_held"] = held ? 1 : 0;
  record(std::string(op_key(op)) + "_" + place_name(place) + (cpuid_master ? "_cpuidmaster" : ""),
         us);
  if (place == kPinnedFork) record("pin_held", held ? 1 : 0);
}

// Baseline: getppid() in the master (no seccomp there).
void BM_Getppid(benchmark::State& state) {
  double t0 = now_s();
  for (auto _ : state) benchmark::DoNotOptimize(syscall(SYS_getppid));
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  state.counters["us_per_call"] = us;
  record("getppid", us);
}

// Baseline: one byte there and back through two pipes between two plain
// processes.
void BM_PipeRoundTrip(benchmark::State& state, bool pinned) {
  Placement place(pinned);
  int to[2], from[2];
  if (pipe(to) != 0 || pipe(from) != 0) {
    state.SkipWithError("pipe");
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    close(to[1]);
    close(from[0]);
    char c;
    while (read(to[0], &c, 1) == 1)
      if (write(from[1], &c, 1) != 1) break;
    _exit(0);
  }
  close(to[0]);
  close(from[1]);
  const long n = pinned ? 2000 : 250;
  double total = 0;
  for (auto _ : state) {
    double t0 = now_s();
    char c = 'x';
    for (long i = 0; i < n; ++i) {
      if (write(to[1], &c, 1) != 1 || read(from[0], &c, 1) != 1) {
        state.SkipWithError("pipe i/o");
        break;
      }
    }
    double dt = now_s() - t0;
    state.SetIterationTime(dt);
    total += dt;
  }
  close(to[1]);
  close(from[0]);
  waitpid(pid, nullptr, 0);
  double us = total / static_cast<double>(state.iterations() * n) * 1e6;
  state.counters["us_per_call"] = us;
  record(std::string("pipe_") + placement_name(pinned), us);
}

// Baseline: the mechanism floor of one call from a space.  A plain process
// under a seccomp filter that traces getppid; per call the tracer does what
// the supervisor must do at least: waitpid, GETEVENTMSG, GETREGS, set the
// result, SETREGS, CONT.
// cpuid: 0 = no CPUID faulting, 1 = in the tracee (as in a space), 2 = in
// the tracee and in the tracer thread.
void BM_RawPtraceRoundTrip(benchmark::State& state, bool pinned, int cpuid = 0) {
  Placement place(pinned);
  pid_t pid = fork();
  if (pid == 0) {
    ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
    raise(SIGSTOP);
    sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE | 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof f / sizeof f[0]), f};
    if (cpuid >= 1 && !set_cpuid_faulting(true)) _exit(4);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(2);
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) _exit(3);
    for (;;) syscall(SYS_getppid);
  }
  int st = 0;
  waitpid(pid, &st, __WALL);
  if (!WIFSTOPPED(st) ||
      ptrace(PTRACE_SETOPTIONS, pid, nullptr, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL) != 0 ||
      ptrace(PTRACE_CONT, pid, nullptr, nullptr) != 0) {
    state.SkipWithError("tracee setup");
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, __WALL);
    return;
  }
  const long n = pinned ? 2000 : 250;
  double total = 0;
  if (cpuid == 2) set_cpuid_faulting(true);
  for (auto _ : state) {
    double t0 = now_s();
    for (long i = 0; i < n; ++i) {
      if (waitpid(pid, &st, __WALL) != pid || (st >> 8) != (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
        state.SkipWithError("unexpected stop");
        break;
      }
      unsigned long msg = 0;
      user_regs_struct regs;
      ptrace(PTRACE_GETEVENTMSG, pid, nullptr, &msg);
      ptrace(PTRACE_GETREGS, pid, nullptr, &regs);
      regs.orig_rax = static_cast<unsigned long long>(-1);
      regs.rax = 0;
      ptrace(PTRACE_SETREGS, pid, nullptr, &regs);
      ptrace(PTRACE_CONT, pid, nullptr, nullptr);
    }
    double dt = now_s() - t0;
    state.SetIterationTime(dt);
    total += dt;
  }
  if (cpuid == 2) set_cpuid_faulting(false);
  kill(pid, SIGKILL);
  while (waitpid(pid, &st, __WALL) == pid && !WIFEXITED(st) && !WIFSIGNALED(st))
    ptrace(PTRACE_CONT, pid, nullptr, nullptr);
  double us = total / static_cast<double>(state.iterations() * n) * 1e6;
  state.counters["us_per_call"] = us;
  const char* sfx[] = {"", "_cpuidtracee", "_cpuidboth"};
  record(std::string("rawptrace_") + placement_name(pinned) + sfx[cpuid], us);
}

// ============================================================================
// 2. Round trips from the master on a stopped child.
// ============================================================================

void BM_MasterStatus(benchmark::State& state) {
  int r = dfork(0);
  if (r == 0) {
    for (;;) dret();
  }
  det_status st{};
  if (r != 1 || !wait_stopped(0, &st)) {
    state.SkipWithError("dfork");
    kill_child(0);
    return;
  }
  double t0 = now_s();
  for (auto _ : state) {
    if (dget(0, DET_STATUS, &st, sizeof st, nullptr) != 0) {
      state.SkipWithError("dget");
      break;
    }
  }
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  kill_child(0);
  state.counters["us_per_call"] = us;
  record("master_status", us);
}

void BM_MasterCopy64(benchmark::State& state) {
  int r = dfork(0);
  if (r == 0) {
    for (;;) dret();
  }
  det_status st{};
  if (r != 1 || !wait_stopped(0, &st)) {
    state.SkipWithError("dfork");
    kill_child(0);
    return;
  }
  double t0 = now_s();
  for (auto _ : state) {
    if (dput(0, DET_COPY, g_copy_src, 64, const_cast<char*>(g_copy_dst)) != 0) {
      state.SkipWithError("dput");
      break;
    }
  }
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  char back[64] = {};
  dget(0, DET_COPY, back, 64, const_cast<char*>(g_copy_dst));
  kill_child(0);
  if (std::memcmp(back, g_copy_src, 64) != 0) state.SkipWithError("copy did not arrive");
  state.counters["us_per_call"] = us;
  record("master_copy64", us);
}

// A plain forked process (no detux) that waits, blocked on a pipe, until
// this object goes: then it exits and is reaped.
struct IdleChild {
  pid_t pid = -1;
  int wake = -1;  // closing it ends the child
  IdleChild() {
    int p[2];
    if (pipe(p) != 0) return;
    pid = fork();
    if (pid == 0) {
      close(p[1]);
      char c;
      (void)!read(p[0], &c, 1);
      _exit(0);
    }
    close(p[0]);
    wake = p[1];
  }
  ~IdleChild() {
    if (wake >= 0) close(wake);
    if (pid > 0) waitpid(pid, nullptr, 0);
  }
  IdleChild(const IdleChild&) = delete;
  IdleChild& operator=(const IdleChild&) = delete;
  bool ok() const { return pid > 0; }
};

// Baseline: process_vm_writev of 64 bytes into a plain, blocked process.
void BM_ProcessVmWritev64(benchmark::State& state) {
  IdleChild child;
  if (!child.ok()) {
    state.SkipWithError("fork");
    return;
  }
  double t0 = now_s();
  for (auto _ : state) {
    iovec l{g_copy_src, 64}, rem{const_cast<char*>(g_copy_dst), 64};
    if (process_vm_writev(child.pid, &l, 1, &rem, 1, 0) != 64) {
      state.SkipWithError("process_vm_writev");
      break;
    }
  }
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  state.counters["us_per_call"] = us;
  record("pvm_writev64", us);
}

// Baseline: one read of /proc/self/maps parsed the way the supervisor's
// read_maps() does it (fopen, fgets, sscanf).
void BM_ReadProcMaps(benchmark::State& state) {
  double t0 = now_s();
  size_t lines = 0;
  for (auto _ : state) {
    FILE* f = std::fopen("/proc/self/maps", "re");
    if (!f) {
      state.SkipWithError("fopen");
      break;
    }
    char line[512];
    lines = 0;
    while (std::fgets(line, sizeof line, f)) {
      unsigned long s, e;
      char perms[8];
      if (std::sscanf(line, "%lx-%lx %7s", &s, &e, perms) == 3) ++lines;
    }
    std::fclose(f);
  }
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  state.counters["us_per_call"] = us;
  state.counters["lines"] = static_cast<double>(lines);
  record("read_maps", us);
}

// ============================================================================
// 3. dfork + djoin against pthread_create + pthread_join.
// ============================================================================

alignas(4096) uint8_t g_mb[1 << 20];            // 1 MB of touched program data
alignas(4096) volatile uint8_t g_page[kPage];   // the page the child writes
alignas(4096) volatile uint8_t g_tpage[kPage];  // the page the thread writes
volatile uint8_t g_val;

void touch_mb() {
  for (size_t i = 0; i < sizeof g_mb; i += kPage) g_mb[i] = static_cast<uint8_t>(i / kPage + 1);
}

[[noreturn]] void write_page_and_ret() {
  uint8_t v = g_val;
  for (size_t i = 0; i < kPage; ++i) g_page[i] = v;
  for (;;) dret();
}

void BM_DforkDjoin(benchmark::State& state, bool pinned) {
  Placement place(pinned);
  touch_mb();
  double t0 = now_s();
  for (auto _ : state) {
    g_val = static_cast<uint8_t>(g_val + 1);
    int r = dfork(0);
    if (r == 0) write_page_and_ret();
    det_status st{};
    int j = djoin_status(0, &st);
    if (r != 1 || j != 0 || g_page[kPage - 1] != g_val) {
      state.SkipWithError(("dfork/djoin: " + std::to_string(r) + " " + std::to_string(j) + " " +
                           describe(st))
                              .c_str());
      break;
    }
  }
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  state.counters["us_per_fork_join"] = us;
  record(std::string("dfork_djoin_") + placement_name(pinned), us);
}

void* thread_write_page(void*) {
  uint8_t v = g_val;
  for (size_t i = 0; i < kPage; ++i) g_tpage[i] = v;
  return nullptr;
}

void BM_PthreadCreateJoin(benchmark::State& state, bool pinned) {
  Placement place(pinned);
  touch_mb();
  double t0 = now_s();
  for (auto _ : state) {
    g_val = static_cast<uint8_t>(g_val + 1);
    pthread_t t;
    if (pthread_create(&t, nullptr, thread_write_page, nullptr) != 0 ||
        pthread_join(t, nullptr) != 0 || g_tpage[kPage - 1] != g_val) {
      state.SkipWithError("pthread");
      break;
    }
  }
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  state.counters["us_per_create_join"] = us;
  record(std::string("pthread_") + placement_name(pinned), us);
}

// Where the time of dfork + djoin goes: create (Put/Fork: fork + the new
// space's confinement), snapshot (Put/Snap: one injected clone), start + run
// + Ret + status, then either djoin (status, merge of the program's data,
// kill) or a bare Put/Kill, on alternate iterations.
void BM_DforkPhases(benchmark::State& state) {
  touch_mb();
  double create = 0, snap = 0, run = 0, join = 0, killt = 0;
  long it = 0, joins = 0, kills = 0;
  for (auto _ : state) {
    g_val = static_cast<uint8_t>(g_val + 1);
    double t0 = now_s();
    long r = dput(0, DET_FORK, nullptr, 0, nullptr);
    if (r == DET_CHILD) write_page_and_ret();
    double t1 = now_s();
    long s = dput(0, DET_SNAP, nullptr, 0, nullptr);
    double t2 = now_s();
    long a = dput(0, DET_START, nullptr, 0, nullptr);
    det_status st{};
    long b = dget(0, DET_STATUS, &st, sizeof st, nullptr);
    double t3 = now_s();
    long e;
    if (it % 2 == 0) {
      e = djoin(0);
      join += now_s() - t3;
      ++joins;
    } else {
      e = dput(0, DET_KILL, nullptr, 0, nullptr);
      killt += now_s() - t3;
      ++kills;
    }
    if (r != 0 || s != 0 || a != 0 || b != 0 || e != 0 || st.state != DET_S_STOPPED) {
      state.SkipWithError(("phases: " + describe(st)).c_str());
      kill_child(0);
      break;
    }
    create += t1 - t0, snap += t2 - t1, run += t3 - t2;
    ++it;
  }
  if (it == 0 || joins == 0 || kills == 0) return;
  double n = static_cast<double>(it);
  state.counters["create_us"] = create / n * 1e6;
  state.counters["snap_us"] = snap / n * 1e6;
  state.counters["start_ret_us"] = run / n * 1e6;
  state.counters["djoin_us"] = join / static_cast<double>(joins) * 1e6;
  state.counters["kill_us"] = killt / static_cast<double>(kills) * 1e6;
  record("phase_create", create / n * 1e6);
  record("phase_snap", snap / n * 1e6);
  record("phase_start_ret", run / n * 1e6);
  record("phase_djoin", join / static_cast<double>(joins) * 1e6);
  record("phase_kill", killt / static_cast<double>(kills) * 1e6);
}

// ============================================================================
// 4. Merge of a child that dirtied 64 MB.
// ============================================================================

volatile uint64_t g_val64;

void BM_Merge64M(benchmark::State& state) {
  PermRegion reg(kRegion64M, k64M);
  if (reg.err != 0) {
    state.SkipWithError("Perm 64 MB");
    return;
  }
  reg.touch(1);
  auto* words = reinterpret_cast<volatile uint64_t*>(reg.p);
  const size_t pages = k64M / kPage;
  double merge_total = 0, fork_total = 0, run_total = 0;
  for (auto _ : state) {
    g_val64 = g_val64 + 1;
    double t0 = now_s();
    int r = dfork(0);
    if (r == 0) {
      uint64_t v = g_val64;
      for (size_t k = 0; k < pages; ++k) words[k * (kPage / 8)] = v;
      for (;;) dret();
    }
    double t1 = now_s();
    det_status st{};
    bool stopped = r == 1 && wait_stopped(0, &st);
    double t2 = now_s();
    long m = stopped ? dget(0, DET_MERGE, reg.p, k64M, reg.p) : -1;
    double t3 = now_s();
    state.SetIterationTime(t3 - t2);
    kill_child(0);
    bool ok = m == 0 && words[0] == g_val64 && words[(pages - 1) * (kPage / 8)] == g_val64 &&
              words[(pages / 2) * (kPage / 8)] == g_val64;
    if (!ok) {
      state.SkipWithError(("merge 64 MB: " + std::to_string(m) + " " + describe(st)).c_str());
      break;
    }
    fork_total += t1 - t0, run_total += t2 - t1, merge_total += t3 - t2;
  }
  double n = static_cast<double>(state.iterations());
  double merge_s = merge_total / n;
  state.counters["GBps"] = static_cast<double>(k64M) / merge_s / 1e9;
  state.counters["us_per_page"] = merge_s / static_cast<double>(pages) * 1e6;
  state.counters["dfork_ms"] = fork_total / n * 1e3;
  state.counters["child_run_ms"] = run_total / n * 1e3;
  record("merge64_gbps", static_cast<double>(k64M) / merge_s / 1e9);
  record("merge64_us_page", merge_s / static_cast<double>(pages) * 1e6);
  record("merge64_child_us_page", run_total / n / static_cast<double>(pages) * 1e6);
  record("merge64_dfork_ms", fork_total / n * 1e3);
}

// Baseline: memcpy of 64 MB between two populated regions of the master.
void BM_Memcpy64M(benchmark::State& state) {
  PermRegion a(kRegion64M, k64M), b(kRegion64Mb, k64M);
  if (a.err != 0 || b.err != 0) {
    state.SkipWithError("Perm");
    return;
  }
  a.touch(3);
  b.touch(4);
  double total = 0;
  for (auto _ : state) {
    double t0 = now_s();
    std::memcpy(b.p, a.p, k64M);
    benchmark::ClobberMemory();
    double dt = now_s() - t0;
    state.SetIterationTime(dt);
    total += dt;
  }
  double gbps = static_cast<double>(k64M) * static_cast<double>(state.iterations()) / total / 1e9;
  state.counters["GBps"] = gbps;
  record("memcpy64_gbps", gbps);
}

// Baseline: one COW write fault per page.  The master forks a plain process
// (which just waits) while the 64 MB are populated, then writes one word in
// each page.
void BM_CowFault64M(benchmark::State& state) {
  PermRegion reg(kRegion64M, k64M);
  if (reg.err != 0) {
    state.SkipWithError("Perm");
    return;
  }
  reg.touch(5);
  const size_t pages = k64M / kPage;
  double total = 0;
  for (auto _ : state) {
    IdleChild child;  // shares every page until it exits
    if (!child.ok()) {
      state.SkipWithError("fork");
      break;
    }
    double t0 = now_s();
    for (size_t k = 0; k < pages; ++k) reg.p[k * kPage + 8] = static_cast<uint8_t>(k);
    benchmark::ClobberMemory();
    double dt = now_s() - t0;
    state.SetIterationTime(dt);
    total += dt;
  }
  double us = total / static_cast<double>(state.iterations() * pages) * 1e6;
  state.counters["us_per_page"] = us;
  record("cow_us_page", us);
}

// ============================================================================
// 5. Finding one written page in a 1 GB region.
// ============================================================================

void BM_Merge1G(benchmark::State& state, bool populated) {
  PermRegion reg(kRegion1G, k1G);
  if (reg.err != 0) {
    state.SkipWithError("Perm 1 GB");
    return;
  }
  if (populated) reg.touch(1);
  // Baseline: one pread of the region's pagemap entries in the master.
  double pm_ms = NAN;
  {
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    std::vector<uint64_t> ents(k1G / kPage);
    if (fd >= 0) {
      double best = 1e9;
      for (int k = 0; k < 3; ++k) {
        double t0 = now_s();
        ssize_t got = pread(fd, ents.data(), ents.size() * 8,
                            static_cast<off_t>(kRegion1G / kPage * 8));
        double dt = now_s() - t0;
        if (got == static_cast<ssize_t>(ents.size() * 8)) best = std::min(best, dt);
      }
      close(fd);
      pm_ms = best * 1e3;
    }
  }
  auto* words = reinterpret_cast<volatile uint64_t*>(reg.p);
  const size_t at = 123457 * (kPage / 8);  // a word in page 123457
  double merge_total = 0, fork_total = 0, kill_total = 0;
  for (auto _ : state) {
    g_val64 = g_val64 + 1;
    double t0 = now_s();
    int r = dfork(0);
    if (r == 0) {
      words[at] = g_val64;
      for (;;) dret();
    }
    double t1 = now_s();
    det_status st{};
    bool stopped = r == 1 && wait_stopped(0, &st);
    double t2 = now_s();
    long m = stopped ? dget(0, DET_MERGE, reg.p, k1G, reg.p) : -1;
    double t3 = now_s();
    state.SetIterationTime(t3 - t2);
    kill_child(0);
    double t4 = now_s();
    if (m != 0 || words[at] != g_val64) {
      state.SkipWithError(("merge 1 GB: " + std::to_string(m) + " " + describe(st)).c_str());
      break;
    }
    fork_total += t1 - t0, merge_total += t3 - t2, kill_total += t4 - t3;
  }
  double n = static_cast<double>(state.iterations());
  std::string key = populated ? "merge1g_pop" : "merge1g_unpop";
  state.counters["merge_ms"] = merge_total / n * 1e3;
  state.counters["dfork_ms"] = fork_total / n * 1e3;
  state.counters["kill_ms"] = kill_total / n * 1e3;
  state.counters["pagemap_pread_ms"] = pm_ms;
  record(key + "_ms", merge_total / n * 1e3);
  record(key + "_dfork_ms", fork_total / n * 1e3);
  record(key + "_kill_ms", kill_total / n * 1e3);
  record(key + "_pagemap_ms", pm_ms);
}

// ---- Registration -------------------------------------------------------------

#define SPACE_BENCH(name, op, pin)                                                   \
  BENCHMARK_CAPTURE(BM_Space, name, op, pin)                                         \
      ->UseManualTime()                                                              \
      ->Iterations(10)                                                               \
      ->Unit(benchmark::kMillisecond)

// 1 and 6.
BENCHMARK(BM_Getppid)->Iterations(200000);
BENCHMARK_CAPTURE(BM_PipeRoundTrip, pinned, true)->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PipeRoundTrip, unpinned, false)->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_RawPtraceRoundTrip, pinned, true)->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_RawPtraceRoundTrip, unpinned, false)->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_RawPtraceRoundTrip, pinned_cpuidfault_tracee, true, 1)->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_RawPtraceRoundTrip, pinned_cpuidfault_both, true, 2)->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
SPACE_BENCH(status_absent_pinned, kStatusAbsent, kPinned);
SPACE_BENCH(status_absent_pinnedfork, kStatusAbsent, kPinnedFork);
SPACE_BENCH(status_absent_unpinned, kStatusAbsent, kUnpinned);
SPACE_BENCH(copy16_to_own_child_pinned, kPutCopy, kPinned);
SPACE_BENCH(copy16_to_own_child_pinnedfork, kPutCopy, kPinnedFork);
SPACE_BENCH(copy16_to_own_child_unpinned, kPutCopy, kUnpinned);
BENCHMARK_CAPTURE(BM_Space, start_ret_pinned, kRetOnly, kPinned)
    ->UseManualTime()->Iterations(2000)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_Space, start_ret_unpinned, kRetOnly, kUnpinned)
    ->UseManualTime()->Iterations(500)->Unit(benchmark::kMicrosecond);
// Experiment (not what a program gets today): CPUID faulting on in the master.
BENCHMARK_CAPTURE(BM_Space, status_absent_pinned_cpuidfault_master, kStatusAbsent, kPinned, true)
    ->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Space, copy16_to_own_child_pinned_cpuidfault_master, kPutCopy, kPinned, true)
    ->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Space, status_absent_unpinned_cpuidfault_master, kStatusAbsent, kUnpinned, true)
    ->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
// 2.
BENCHMARK(BM_MasterStatus)->Iterations(20000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MasterCopy64)->Iterations(5000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ProcessVmWritev64)->Iterations(20000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ReadProcMaps)->Iterations(2000)->Unit(benchmark::kMicrosecond);
// 3.
BENCHMARK_CAPTURE(BM_DforkDjoin, pinned, true)->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_DforkDjoin, unpinned, false)->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PthreadCreateJoin, pinned, true)->Iterations(5000)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PthreadCreateJoin, unpinned, false)->Iterations(5000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DforkPhases)->Iterations(200)->Unit(benchmark::kMicrosecond);
// 4.
BENCHMARK(BM_Memcpy64M)->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CowFault64M)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Merge64M)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
// 5.
BENCHMARK_CAPTURE(BM_Merge1G, unpopulated, false)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Merge1G, populated, true)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);

// ---- Summary ------------------------------------------------------------------

struct Row {
  const char* id;
  std::string what;
  double value;
  const char* unit;
  std::string base_what;
  double base;
  const char* goal;       // text
  int holds;              // 1 yes, 0 no, -1 not applicable / unknown
};

std::string num(double v) {
  if (std::isnan(v)) return "n/a";
  char b[32];
  if (std::fabs(v) >= 100) std::snprintf(b, sizeof b, "%.0f", v);
  else if (std::fabs(v) >= 10) std::snprintf(b, sizeof b, "%.1f", v);
  else std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

int check_le(double v, double goal) { return std::isnan(v) ? -1 : v <= goal ? 1 : 0; }
int check_ge(double v, double goal) { return std::isnan(v) ? -1 : v >= goal ? 1 : 0; }

void print_summary() {
  std::vector<Row> rows;
  const double ppid = fig("getppid");
  for (Place pl : {kPinned, kUnpinned, kPinnedFork}) {
    std::string p = place_name(pl);
    const char* id = pl == kPinned ? "1" : "6";
    // The baselines were run pinned (both processes on CPU 0) or unpinned.
    std::string bp = pl == kUnpinned ? "unpinned" : "pinned";
    double pipe = fig("pipe_" + bp), raw = fig("rawptrace_" + bp);
    double st = fig("space_status_" + p), cp = fig("space_copy_" + p);
    rows.push_back({id, "space dget(STATUS, absent) [" + p + "]", st, "us", "pipe RT " + bp, pipe,
                    "<= 5 us", check_le(st, 5)});
    rows.push_back({id, "  same, against the raw ptrace floor", st, "us", "ptrace stop " + bp, raw,
                    "", -1});
    if (pl == kPinned)
      rows.push_back({id, "  same, against getppid()", st, "us", "getppid()", ppid, "", -1});
    rows.push_back({id, "space dput(COPY 16 B, own child) [" + p + "]", cp, "us", "pipe RT " + bp,
                    pipe, "<= 5 us", check_le(cp, 5)});
    rows.push_back({id, "  same, against the raw ptrace floor", cp, "us", "ptrace stop " + bp, raw,
                    "", -1});
    if (pl != kPinnedFork)
      rows.push_back({id, "master START + space dret + STATUS [" + p + "]",
                      fig("space_ret_" + p), "us", "pipe RT " + bp, pipe, "(info)", -1});
  }
  rows.push_back({"6", "  master still on CPU 0 after dfork? (1=yes)", fig("pin_held"), "", "",
                  NAN, "(info)", -1});
  // Where the pinned round trip goes: CPUID faulting makes every switch
  // between master and space rewrite an MSR.
  double raw = fig("rawptrace_pinned");
  rows.push_back({"x", "raw ptrace stop, tracee with CPUID faulting", fig("rawptrace_pinned_cpuidtracee"),
                  "us", "ptrace stop pinned", raw, "(info)", -1});
  rows.push_back({"x", "  same, tracer thread with it too", fig("rawptrace_pinned_cpuidboth"), "us",
                  "ptrace stop pinned", raw, "(info)", -1});
  double sc = fig("space_status_pinned_cpuidmaster");
  rows.push_back({"x", "space dget(STATUS) pinned, master CPUID-fault", sc, "us",
                  "ptrace stop pinned", raw, "<= 5 us", check_le(sc, 5)});
  double cc = fig("space_copy_pinned_cpuidmaster");
  rows.push_back({"x", "space dput(COPY 16 B) pinned, master CPUID-fault", cc, "us",
                  "ptrace stop pinned", raw, "<= 5 us", check_le(cc, 5)});
  double uc = fig("space_status_unpinned_cpuidmaster");
  rows.push_back({"x", "space dget(STATUS) unpinned, master CPUID-fault", uc, "us",
                  "ptrace stop unpinned", fig("rawptrace_unpinned"), "<= 5 us", check_le(uc, 5)});
  double ms = fig("master_status"), mc = fig("master_copy64");
  rows.push_back({"2", "master dget(STATUS) on stopped child", ms, "us", "getppid()", ppid,
                  "<= 5 us", check_le(ms, 5)});
  rows.push_back({"2", "master dput(COPY 64 B) to stopped child", mc, "us",
                  "process_vm_writev 64 B", fig("pvm_writev64"), "<= 5 us", check_le(mc, 5)});
  rows.push_back({"2", "  /proc/PID/maps read (holes() per copy)", fig("read_maps"), "us",
                  "dput(COPY 64 B)", mc, "(info)", -1});
  for (bool pin : {false, true}) {
    std::string p = placement_name(pin);
    double dj = fig("dfork_djoin_" + p), pt = fig("pthread_" + p);
    double ratio = dj / pt;
    rows.push_back({"3", "dfork+djoin, 1 page, 1 MB touched [" + p + "]", dj, "us",
                    "pthread_create+join", pt, "ratio <= 2", check_le(ratio, 2)});
  }
  rows.push_back({"3", "  phase: Put/Fork (create)", fig("phase_create"), "us", "", NAN, "", -1});
  rows.push_back({"3", "  phase: Put/Snap", fig("phase_snap"), "us", "", NAN, "", -1});
  rows.push_back({"3", "  phase: Put/Start .. dret .. Get/Status", fig("phase_start_ret"), "us", "",
                  NAN, "", -1});
  rows.push_back({"3", "  phase: djoin (status+merge+kill)", fig("phase_djoin"), "us", "", NAN, "",
                  -1});
  rows.push_back({"3", "  phase: Put/Kill alone", fig("phase_kill"), "us", "", NAN, "", -1});
  double gbps = fig("merge64_gbps"), mcp = fig("memcpy64_gbps");
  rows.push_back({"4", "merge 64 MB all dirty: throughput", gbps, "GB/s", "memcpy 64 MB", mcp,
                  ">= 1 GB/s", check_ge(gbps, 1)});
  double upp = fig("merge64_us_page"), cow = fig("cow_us_page");
  rows.push_back({"4", "merge 64 MB: per dirty page", upp, "us", "COW fault/page", cow,
                  "(see next)", -1});
  rows.push_back({"4", "  per dirty page beyond one COW fault", upp - cow, "us", "COW fault/page",
                  cow, "<= 2 us", check_le(upp - cow, 2)});
  rows.push_back({"4", "  child run (writes 16384 pages), per page", fig("merge64_child_us_page"),
                  "us", "COW fault/page", cow, "(info)", -1});
  for (bool pop : {false, true}) {
    std::string k = pop ? "merge1g_pop" : "merge1g_unpop";
    double v = fig(k + "_ms");
    rows.push_back({"5", std::string("merge 1 GB, 1 page written, ") +
                             (pop ? "populated" : "unpopulated"),
                    v, "ms", "pagemap pread 1 GB", fig(k + "_pagemap_ms"), "<= 2 ms",
                    check_le(v, 2)});
    rows.push_back({"5", "  dfork of that master (fork + snapshot)", fig(k + "_dfork_ms"), "ms", "",
                    NAN, "(info)", -1});
    rows.push_back({"5", "  Put/Kill of that child", fig(k + "_kill_ms"), "ms", "", NAN, "(info)",
                    -1});
  }
  std::printf("\n=== detux kernel_bench summary (ratio = measured / baseline) ===\n");
  std::printf("%-2s %-50s %10s %-5s %-24s %10s %9s  %-11s %s\n", "#", "what", "measured", "",
              "baseline", "baseline", "ratio", "goal", "holds");
  for (const Row& r : rows) {
    double ratio = r.value / r.base;
    const char* h = r.holds == 1 ? "yes" : r.holds == 0 ? "NO" : "";
    std::printf("%-2s %-50s %10s %-5s %-24s %10s %9s  %-11s %s\n", r.id, r.what.c_str(),
                num(r.value).c_str(), r.unit, r.base_what.c_str(), num(r.base).c_str(),
                std::isnan(ratio) ? "" : (num(ratio) + "x").c_str(), r.goal, h);
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  sched_getaffinity(0, sizeof g_all_cpus, &g_all_cpus);
  if (det_become_master() != 0) {
    std::fprintf(stderr, "kernel_bench: cannot become master\n");
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  print_summary();
  benchmark::Shutdown();
  return 0;
}
