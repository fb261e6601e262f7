// kernel_bench_calls.cc: round trips, from a space (sections 1 and 6, timed
// from the master) and from the master (section 2), with their baselines.
// What each figure means is in kernel_bench.cc.
#include "kernel_bench.h"

#include "confine/cpuid.h"

namespace kbench {

// ============================================================================
// 1 and 6. Round trips from a space, timed from the master.
// ============================================================================

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

void BM_Space(benchmark::State& state, SpaceOp op, Place place, bool cpuid_master) {
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
void BM_RawPtraceRoundTrip(benchmark::State& state, bool pinned, int cpuid) {
  if (cpuid >= 1 && !detux::confine::cpuid_faulting_supported()) {  // a PVM guest, say: n/a
    state.SkipWithError("no CPUID faulting on this machine");
    return;
  }
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

// Child 0, forked and stopped at its Ret: the target of the master's calls.
// False (and the benchmark skipped) if it could not be made.
bool stopped_child(benchmark::State& state) {
  int r = dfork(0);
  if (r == 0) {
    for (;;) dret();
  }
  det_status st{};
  if (r == 1 && wait_stopped(0, &st)) return true;
  state.SkipWithError("dfork");
  kill_child(0);
  return false;
}

void BM_MasterStatus(benchmark::State& state) {
  if (!stopped_child(state)) return;
  det_status st{};
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
  if (!stopped_child(state)) return;
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

}  // namespace kbench
