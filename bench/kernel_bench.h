// kernel_bench.h: what the parts of kernel_bench share: the figures kept
// for the summary, CPU placement, helpers for the master, the fixed regions,
// and the benchmarks each part defines (kernel_bench.cc says what is
// measured and registers them; kernel_bench_calls.cc has the round trips,
// sections 1, 2 and 6; kernel_bench_memory.cc has dfork + djoin and the
// merges, sections 3 to 5).
#pragma once

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
#include <sys/resource.h>
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

namespace kbench {

constexpr size_t kPage = 4096;

// ---- Figures collected for the summary ------------------------------------

inline std::map<std::string, std::vector<double>> g_fig;

inline void record(const std::string& key, double v) { g_fig[key].push_back(v); }

// Median over repetitions; NaN when the benchmark did not run.
inline double fig(const std::string& key) {
  auto it = g_fig.find(key);
  if (it == g_fig.end() || it->second.empty()) return NAN;
  std::vector<double> v = it->second;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

inline double now_s() {
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

inline cpu_set_t g_all_cpus;  // the affinity the process started with

inline void set_pinned(bool pin) {
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
inline int pin_tree_to_cpu0() {
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
inline bool master_on_cpu0_only() {
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

inline const char* placement_name(bool pin) { return pin ? "pinned" : "unpinned"; }
inline const char* place_name(Place p) {
  return p == kUnpinned ? "unpinned" : p == kPinnedFork ? "pinnedfork" : "pinned";
}

// CPUID faulting (ARCH_SET_CPUID) for the calling thread.  Every space runs
// with it on; Linux rewrites MSR_MISC_FEATURES_ENABLES on each context
// switch between a thread with it and one without, which is expensive in a
// VM.  Used only for the experiments marked "cpuidfault" below.
inline bool set_cpuid_faulting(bool on) {
  return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1) == 0;
}

// ---- Helpers for the master -------------------------------------------------

inline bool wait_stopped(det_child_t c, det_status* st) {
  *st = det_status{};
  return dget(c, DET_STATUS, st, sizeof *st, nullptr) == 0 && st->state == DET_S_STOPPED;
}

inline void kill_child(det_child_t c) { dput(c, DET_KILL, nullptr, 0, nullptr); }

inline std::string describe(const det_status& st) {
  char b[160];
  std::snprintf(b, sizeof b, "child state=%d fault=%d sig=%d addr=%#llx sys=%lld", st.state,
                st.fault, st.signal, static_cast<unsigned long long>(st.addr),
                static_cast<long long>(st.syscall));
  return b;
}

// Writes v into the first byte of every page of [p, p + len).
inline void touch_pages(uint8_t* p, size_t len, uint8_t v) {
  for (size_t off = 0; off < len; off += kPage) p[off] = v;
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
  void touch(uint8_t v) { touch_pages(p, len, v); }
};

constexpr uint64_t kRegion64M = 0x320000000000ULL;
constexpr uint64_t kRegion64Mb = 0x328000000000ULL;  // memcpy destination
constexpr uint64_t kRegion1G = 0x340000000000ULL;
constexpr size_t k64M = 64UL << 20;
constexpr size_t k1G = 1UL << 30;

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

enum SpaceOp { kRetOnly, kStatusAbsent, kPutCopy };

// kernel_bench_calls.cc
void BM_Space(benchmark::State& state, SpaceOp op, Place place, bool cpuid_master = false);
void BM_Getppid(benchmark::State& state);
void BM_PipeRoundTrip(benchmark::State& state, bool pinned);
void BM_RawPtraceRoundTrip(benchmark::State& state, bool pinned, int cpuid = 0);
void BM_MasterStatus(benchmark::State& state);
void BM_MasterCopy64(benchmark::State& state);
void BM_ProcessVmWritev64(benchmark::State& state);
void BM_ReadProcMaps(benchmark::State& state);
// kernel_bench_memory.cc
void BM_DforkDjoin(benchmark::State& state, bool pinned);
void BM_PthreadCreateJoin(benchmark::State& state, bool pinned);
void BM_ForkWaitpid(benchmark::State& state, bool pinned);
void BM_DforkPhases(benchmark::State& state);
void BM_NestedDforkDjoin(benchmark::State& state);
void BM_BlockWriter(benchmark::State& state, bool own);
void BM_Merge64M(benchmark::State& state);
void BM_Memcpy64M(benchmark::State& state);
void BM_CowFault64M(benchmark::State& state);
enum class Mem1G { kUnpopulated, kPopulated, kHeap };
inline std::string merge1g_key(Mem1G kind) {
  return kind == Mem1G::kUnpopulated ? "merge1g_unpop"
         : kind == Mem1G::kPopulated ? "merge1g_pop"
                                     : "merge1g_heap";
}
void BM_Merge1G(benchmark::State& state, Mem1G kind);

}  // namespace kbench
