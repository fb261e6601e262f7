// runtime_bench.cc: the runtime library's costs, each against a baseline
// measured in the same run.
//
//   1. Barrier: N threads (N = 2, the CPUs here) each dirty K pages of a
//      shared array (K = 1, 16, 256) and meet at a barrier, 20 rounds; detux
//      threads with det_barrier (each round: merge every thread in id order,
//      refresh each one's changed pages, new snapshot, restart) against
//      pthreads with pthread_barrier_wait doing the same writes.  The
//      figure is time per round.
//   3. Files: 256 MiB written, then read, sequentially through write/read
//      in 1 MiB calls, in a space on the detux file system against the master
//      on tmpfs (/dev/shm); the ratio is throughput, goal >= 0.5.
//   2. malloc/free: a fixed, seeded mix of 1M malloc and free calls (sizes 8
//      B to 4 KiB, up to 1024 blocks live) run inside a space with detux's
//      heap, against glibc's malloc (__libc_malloc) in the plain master
//      process, and detux's heap in the master.  A space cannot read a
//      clock: the master times a child that runs the mix and subtracts a
//      child that runs nothing.
//   4. exec: a space forks a process that execs a small detux program and
//      waits for it (the image registered with det_exec_register), against
//      a plain process doing fork + execve + waitpid of the same program.
// After the Google Benchmark output, main() prints each ratio.
#include <benchmark/benchmark.h>
#include <detux/detux.h>
#include <pthread.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

extern "C" void* __libc_malloc(size_t);
extern "C" void __libc_free(void*);

namespace {

double now_s() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

std::map<std::string, double> g_us;  // figure name -> microseconds

// Times `run` (which returns the seconds it took) on every iteration and
// records the mean, divided by `per`, under `name` in microseconds.
template <typename F>
void timed(benchmark::State& state, const std::string& name, double per, F run) {
  double total = 0;
  for (auto _ : state) {
    double dt = run();
    total += dt;
    state.SetIterationTime(dt > 0 ? dt : 1e-9);
  }
  g_us[name] = total / static_cast<double>(state.iterations()) / per * 1e6;
}

template <typename F>
double wall(F f) {
  double t0 = now_s();
  f();
  return now_s() - t0;
}

// ---- 1. Barrier -------------------------------------------------------------

constexpr int kThreads = 2, kRounds = 20;
constexpr size_t kPage = 4096;
char* g_shared;  // kThreads * 256 pages
int g_pages;

void dirty(int me, int round) {
  char* mine = g_shared + static_cast<size_t>(me) * 256 * kPage;
  for (int p = 0; p < g_pages; ++p) mine[p * kPage + round % 64] = static_cast<char>(round);
}

void detux_body(void* arg) {
  int me = static_cast<int>(reinterpret_cast<long>(arg));
  for (int r = 0; r < kRounds; ++r) {
    dirty(me, r);
    det_barrier();
  }
}

void BM_Barrier_Detux(benchmark::State& state) {
  g_pages = static_cast<int>(state.range(0));
  g_shared = static_cast<char*>(calloc(kThreads * 256, kPage));
  timed(state, "barrier detux K=" + std::to_string(g_pages), kRounds, [&] {
    return wall([&] {
      for (long t = 0; t < kThreads; ++t)
        det_thread_start(t, detux_body, reinterpret_cast<void*>(t));
      if (det_group_join(0, kThreads, nullptr, nullptr) != 0)
        state.SkipWithError("group join failed");
    });
  });
  free(g_shared);
}

pthread_barrier_t g_pbar;
void* pthread_body(void* arg) {
  int me = static_cast<int>(reinterpret_cast<long>(arg));
  for (int r = 0; r < kRounds; ++r) {
    dirty(me, r);
    pthread_barrier_wait(&g_pbar);
  }
  return nullptr;
}

void BM_Barrier_Pthreads(benchmark::State& state) {
  g_pages = static_cast<int>(state.range(0));
  g_shared = static_cast<char*>(calloc(kThreads * 256, kPage));
  timed(state, "barrier pthreads K=" + std::to_string(g_pages), kRounds, [] {
    return wall([] {
      pthread_barrier_init(&g_pbar, nullptr, kThreads);
      pthread_t t[kThreads];
      for (long i = 0; i < kThreads; ++i)
        pthread_create(&t[i], nullptr, pthread_body, reinterpret_cast<void*>(i));
      for (pthread_t& x : t) pthread_join(x, nullptr);
      pthread_barrier_destroy(&g_pbar);
    });
  });
  free(g_shared);
}

// ---- 2. malloc/free ----------------------------------------------------------

constexpr long kOps = 1000000;
void* g_live[1024];
volatile long g_sink;

template <typename Alloc, typename Free>
void mix(long ops, Alloc alloc, Free release) {
  uint64_t s = 42;
  long checksum = 0;
  for (long i = 0; i < ops; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    size_t slot = (s >> 40) % 1024;
    if (g_live[slot]) {
      release(g_live[slot]);
      g_live[slot] = nullptr;
    } else {
      size_t n = 8 + (s >> 20) % 4089;
      g_live[slot] = alloc(n);
      static_cast<char*>(g_live[slot])[0] = 1;
      checksum += static_cast<long>(n);
    }
  }
  for (void*& p : g_live)
    if (p) release(p), p = nullptr;
  g_sink = checksum;
}

void BM_Malloc_Glibc(benchmark::State& state) {
  timed(state, "malloc glibc, plain process", kOps,
        [] { return wall([] { mix(kOps, __libc_malloc, __libc_free); }); });
}

void BM_Malloc_DetuxMaster(benchmark::State& state) {
  timed(state, "malloc detux, master", kOps, [] { return wall([] { mix(kOps, malloc, free); }); });
}

double time_child(long ops) {
  double t0 = now_s();
  if (dfork(0) == 0) {
    mix(ops, malloc, free);
    for (;;) dret();
  }
  dget(0, DET_STATUS, nullptr, 0, nullptr);
  double dt = now_s() - t0;
  dput(0, DET_KILL, nullptr, 0, nullptr);
  return dt;
}

void BM_Malloc_DetuxSpace(benchmark::State& state) {
  timed(state, "malloc detux, in a space", kOps, [] { return time_child(kOps) - time_child(0); });
}

// ---- 3. Files: 256 MiB written then read sequentially, 1 MiB per call -------

constexpr size_t kFileBytes = 256 << 20, kChunk = 1 << 20;
char* g_chunk;

// Writes (or reads) the file through plain write/read: in a space these
// reach the detux file system; in the master, Linux (tmpfs at /dev/shm).
void file_pass(const char* path, bool write_it) {
  int fd = write_it ? open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644) : open(path, O_RDONLY);
  for (size_t at = 0; at < kFileBytes; at += kChunk)
    if ((write_it ? write(fd, g_chunk, kChunk) : read(fd, g_chunk, kChunk)) != kChunk) abort();
  close(fd);
}

double time_file_child(bool write_it, bool work) {
  double t0 = now_s();
  if (dfork(0) == 0) {
    if (!write_it) file_pass("/big", true);  // the file to read, made before the clock starts
    dret();
    if (work) file_pass("/big", write_it);
    for (;;) dret();
  }
  dget(0, DET_STATUS, nullptr, 0, nullptr);  // set up
  t0 = now_s();
  dput(0, DET_START, nullptr, 0, nullptr);
  dget(0, DET_STATUS, nullptr, 0, nullptr);
  double dt = now_s() - t0;
  dput(0, DET_KILL, nullptr, 0, nullptr);
  return dt;
}

void BM_File_Space(benchmark::State& state) {
  bool write_it = state.range(0) == 1;
  g_chunk = static_cast<char*>(malloc(kChunk));
  memset(g_chunk, 'x', kChunk);
  timed(state, write_it ? "file write, space" : "file read, space", 1, [write_it] {
    return time_file_child(write_it, true) - time_file_child(write_it, false);
  });
  free(g_chunk);
}

void BM_File_Tmpfs(benchmark::State& state) {
  bool write_it = state.range(0) == 1;
  g_chunk = static_cast<char*>(malloc(kChunk));
  memset(g_chunk, 'x', kChunk);
  const char* path = "/dev/shm/detux-runtime-bench";
  if (!write_it) file_pass(path, true);
  timed(state, write_it ? "file write, tmpfs" : "file read, tmpfs", 1, [&] {
    if (write_it) unlink(path);  // a new file each time, as the space's is
    return wall([&] { file_pass(path, write_it); });
  });
  unlink(path);
  free(g_chunk);
}

// ---- 4. exec: fork + exec + wait of a program that returns at once --------

constexpr int kExecs = 10;

void spawn_nop(bool in_space) {
  pid_t p = fork();
  if (p == 0) {
    execl(in_space ? "nop" : EXEC_NOP, "nop", static_cast<char*>(nullptr));
    _exit(127);
  }
  int st = 0;
  waitpid(p, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) abort();
}

double time_exec_child(int n) {
  if (dfork(0) == 0) {
    dret();
    for (int i = 0; i < n; ++i) spawn_nop(true);
    for (;;) dret();
  }
  dget(0, DET_STATUS, nullptr, 0, nullptr);
  double t0 = now_s();
  dput(0, DET_START, nullptr, 0, nullptr);
  det_status st{};
  dget(0, DET_STATUS, &st, sizeof st, nullptr);
  double dt = now_s() - t0;
  if (st.state != DET_S_STOPPED) abort();
  dput(0, DET_KILL, nullptr, 0, nullptr);
  return dt;
}

void BM_Exec_Space(benchmark::State& state) {
  if (det_exec_register("nop", EXEC_NOP) != 0) abort();
  timed(state, "exec, space", kExecs, [] { return time_exec_child(kExecs) - time_exec_child(0); });
}

void BM_Exec_Linux(benchmark::State& state) {
  timed(state, "exec, linux", kExecs, [] {
    return wall([] {
      for (int i = 0; i < kExecs; ++i) spawn_nop(false);
    });
  });
}

BENCHMARK(BM_Exec_Space)->UseManualTime()->Iterations(3);
BENCHMARK(BM_Exec_Linux)->UseManualTime()->Iterations(3);
BENCHMARK(BM_File_Space)->Arg(1)->Arg(0)->UseManualTime()->Iterations(3);
BENCHMARK(BM_File_Tmpfs)->Arg(1)->Arg(0)->UseManualTime()->Iterations(3);
BENCHMARK(BM_Barrier_Detux)->Arg(1)->Arg(16)->Arg(256)->UseManualTime()->Iterations(5);
BENCHMARK(BM_Barrier_Pthreads)->Arg(1)->Arg(16)->Arg(256)->UseManualTime()->Iterations(20);
BENCHMARK(BM_Malloc_Glibc)->UseManualTime()->Iterations(5);
BENCHMARK(BM_Malloc_DetuxMaster)->UseManualTime()->Iterations(5);
BENCHMARK(BM_Malloc_DetuxSpace)->UseManualTime()->Iterations(5);

void ratio(const char* what, const std::string& a, const std::string& b) {
  if (!g_us.count(a) || !g_us.count(b)) return;
  std::printf("%-34s %10.3f us  vs %10.3f us  ratio %6.2f\n", what, g_us[a], g_us[b],
              g_us[a] / g_us[b]);
}

}  // namespace

int main(int argc, char** argv) {
  det_become_master();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  std::printf("\n%-34s %13s  %14s  %s\n", "figure (detux vs baseline)", "detux", "baseline",
              "ratio");
  for (int k : {1, 16, 256}) {
    std::string K = std::to_string(k);
    ratio(("barrier round, 2 threads, K=" + K).c_str(), "barrier detux K=" + K,
          "barrier pthreads K=" + K);
  }
  ratio("fork+exec+wait, small program", "exec, space", "exec, linux");
  ratio("malloc+free op, in a space", "malloc detux, in a space", "malloc glibc, plain process");
  ratio("malloc+free op, in the master", "malloc detux, master", "malloc glibc, plain process");
  // Throughput ratio: tmpfs time over the space's time (goal >= 0.5).
  for (const char* what : {"write", "read"}) {
    std::string s = std::string("file ") + what + ", space", t = std::string("file ") + what + ", tmpfs";
    if (g_us.count(s) && g_us.count(t))
      std::printf("256 MiB %-5s in a space: %7.0f MB/s, tmpfs %7.0f MB/s, ratio %.2f (goal >= 0.5)\n",
                  what, 256 * 1.048576 / g_us[s] * 1e6, 256 * 1.048576 / g_us[t] * 1e6,
                  g_us[t] / g_us[s]);
  }
  return 0;
}
