// kernel_bench_memory.cc: dfork + djoin against pthreads (section 3), the
// merge of 64 MB (4), and finding one written page in 1 GB (5), with their
// baselines.  What each figure means is in kernel_bench.cc.
#include "kernel_bench.h"

#include <memory>
#include <optional>

namespace kbench {

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

// Minor faults so far of this process (self) or of its reaped children.
double minor_faults(int who) {
  rusage u{};
  getrusage(who, &u);
  return static_cast<double>(u.ru_minflt);
}

void BM_DforkDjoin(benchmark::State& state, bool pinned) {
  Placement place(pinned);
  touch_mb();
  const double self0 = minor_faults(RUSAGE_SELF), kids0 = minor_faults(RUSAGE_CHILDREN);
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
  // Every fault is a cost of its own on some VMs (18-21 us on a PVM guest).
  const double n = static_cast<double>(state.iterations());
  record(std::string("faults_master_") + placement_name(pinned), (minor_faults(RUSAGE_SELF) - self0) / n);
  record(std::string("faults_spaces_") + placement_name(pinned),
         (minor_faults(RUSAGE_CHILDREN) - kids0) / n);
}

// The same from inside a space (qsort's inner levels): the fork is a clone
// injected into the space plus its snapshot's, and the join merges into the
// space through process_vm_readv/writev.  A space cannot read a clock, so
// the master times the space's whole loop of kNested forks and joins (and
// its own one dfork, 1 % of it).
constexpr int kNested = 100;

[[noreturn]] void nested_fork_join_loop() {
  for (int i = 0; i < kNested; ++i) {
    g_val = static_cast<uint8_t>(g_val + 1);
    int r = dfork(1);
    if (r == 0) write_page_and_ret();
    if (r != 1 || djoin(1) != 0 || g_page[kPage - 1] != g_val) _exit(3);
  }
  for (;;) dret();
}

void BM_NestedDforkDjoin(benchmark::State& state) {
  touch_mb();
  for (auto _ : state) {
    double t0 = now_s();
    int r = dfork(0);
    if (r == 0) nested_fork_join_loop();
    det_status st{};
    long g = dget(0, DET_STATUS, &st, sizeof st, nullptr);
    double us = (now_s() - t0) / kNested * 1e6;
    int j = djoin_status(0, &st);
    if (r != 1 || g != 0 || j != 0 || st.state != DET_S_STOPPED) {
      state.SkipWithError(("nested dfork/djoin: " + describe(st)).c_str());
      break;
    }
    record("nested_dfork_djoin", us);
  }
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

// The operating system's own floor for a space made of a process: a plain
// fork whose child writes the same page and exits, and a waitpid.  A space
// costs this twice over (the space and its snapshot) plus the supervisor's
// work; the ratio to it says how much of dfork + djoin is the machine.
void BM_ForkWaitpid(benchmark::State& state, bool pinned) {
  Placement place(pinned);
  touch_mb();
  double t0 = now_s();
  for (auto _ : state) {
    g_val = static_cast<uint8_t>(g_val + 1);
    pid_t c = fork();
    if (c == 0) {
      thread_write_page(nullptr);
      _exit(g_tpage[kPage - 1] == g_val ? 0 : 1);
    }
    int ws = 0;
    if (c < 0 || waitpid(c, &ws, 0) != c || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
      state.SkipWithError("fork/waitpid");
      break;
    }
  }
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  state.counters["us_per_fork_wait"] = us;
  record(std::string("fork_") + placement_name(pinned), us);
}

// A worker that writes a block: 256 bytes in each of 128 pages (a column
// block of a row-major matrix), summing the 2 MB around it between rows as
// a computation would.  Started with det_thread_start (a copy-on-write
// fault per page, in the middle of the sums) or det_thread_start_writing
// (DET_OWN: the pages copied in one batch before it starts).  One CPU.
constexpr size_t kBlockPages = 128, kRowBytes = 256;
alignas(4096) volatile uint8_t g_block[kBlockPages * kPage];
alignas(4096) uint8_t g_around[2 << 20];

void write_block(void*) {
  uint8_t v = g_val;
  uint64_t sum = 0;
  for (size_t r = 0; r < kBlockPages; ++r) {
    for (size_t i = 0; i < sizeof g_around; i += 64) sum += g_around[i];
    for (size_t i = 0; i < kRowBytes; ++i)
      g_block[r * kPage + i] = static_cast<uint8_t>(v + sum % 2);
  }
}

void BM_BlockWriter(benchmark::State& state, bool own) {
  Placement place(true);
  std::memset(g_around, 0, sizeof g_around);
  for (size_t r = 0; r < kBlockPages; ++r) g_block[r * kPage] = 1;
  double t0 = now_s();
  for (auto _ : state) {
    g_val = static_cast<uint8_t>(g_val + 2);
    void* first = const_cast<uint8_t*>(g_block);
    int r = own ? det_thread_start_writing(0, write_block, nullptr, first, kRowBytes,
                                           kBlockPages, kPage)
                : det_thread_start(0, write_block, nullptr);
    if (r != 0 || djoin(0) != 0 || g_block[(kBlockPages - 1) * kPage] != g_val) {
      state.SkipWithError("block writer");
      break;
    }
  }
  double us = (now_s() - t0) / static_cast<double>(state.iterations()) * 1e6;
  state.counters["us_per_fork_join"] = us;
  record(own ? "block_owned" : "block_faulted", us);
  // The benchmarks after this one fork a master without these pages.
  madvise(g_around, sizeof g_around, MADV_DONTNEED);
  madvise(const_cast<uint8_t*>(g_block), sizeof g_block, MADV_DONTNEED);
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

// Three kinds of 1 GB: mapped by Perm and never touched; mapped by Perm and
// touched (4 KiB pages); a block of the program's heap, touched (huge pages
// where Linux has them, as for any large block of a master: rt/heap.cc).
void BM_Merge1G(benchmark::State& state, Mem1G kind) {
  std::optional<PermRegion> reg;
  std::unique_ptr<uint8_t, decltype(&free)> block(nullptr, &free);
  uint8_t* p = nullptr;
  if (kind == Mem1G::kHeap) {
    block.reset(static_cast<uint8_t*>(malloc(k1G)));
    p = block.get();
  } else {
    reg.emplace(kRegion1G, k1G);
    if (reg->err == 0) p = reg->p;
  }
  if (!p) {
    state.SkipWithError("no 1 GB region");
    return;
  }
  if (kind != Mem1G::kUnpopulated) touch_pages(p, k1G, 1);
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
                            static_cast<off_t>(reinterpret_cast<uint64_t>(p) / kPage * 8));
        double dt = now_s() - t0;
        if (got == static_cast<ssize_t>(ents.size() * 8)) best = std::min(best, dt);
      }
      close(fd);
      pm_ms = best * 1e3;
    }
  }
  auto* words = reinterpret_cast<volatile uint64_t*>(p);
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
    long m = stopped ? dget(0, DET_MERGE, p, k1G, p) : -1;
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
  std::string key = merge1g_key(kind);
  state.counters["merge_ms"] = merge_total / n * 1e3;
  state.counters["dfork_ms"] = fork_total / n * 1e3;
  state.counters["kill_ms"] = kill_total / n * 1e3;
  state.counters["pagemap_pread_ms"] = pm_ms;
  record(key + "_ms", merge_total / n * 1e3);
  record(key + "_dfork_ms", fork_total / n * 1e3);
  record(key + "_kill_ms", kill_total / n * 1e3);
  record(key + "_pagemap_ms", pm_ms);
}

}  // namespace kbench
