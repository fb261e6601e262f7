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
//      one page (goal: ratio <= 2), with the phases of dfork/djoin, and
//      against the machine's floor for a process: fork, the child writes
//      the page and exits, waitpid.  And a thread that writes a block (256
//      bytes in each of 128 pages) between sums over 2 MB, started with
//      det_thread_start_writing (DET_OWN) against det_thread_start.
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
#include "kernel_bench.h"

namespace kbench {
namespace {

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
BENCHMARK_CAPTURE(BM_ForkWaitpid, pinned, true)->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ForkWaitpid, unpinned, false)->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DforkPhases)->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_NestedDforkDjoin)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_BlockWriter, faulted, false)->Iterations(40)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_BlockWriter, owned, true)->Iterations(40)->Unit(benchmark::kMicrosecond);
// 4.
BENCHMARK(BM_Memcpy64M)->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CowFault64M)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Merge64M)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
// 5.
BENCHMARK_CAPTURE(BM_Merge1G, unpopulated, Mem1G::kUnpopulated)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Merge1G, populated, Mem1G::kPopulated)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Merge1G, heap, Mem1G::kHeap)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);

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
    rows.push_back({"3", "  same, against a plain fork [" + p + "]", dj, "us",
                    "fork+_exit+waitpid", fig("fork_" + p), "(info)", -1});
    rows.push_back({"3", "  minor faults per dfork+djoin: master", fig("faults_master_" + p), "",
                    "", NAN, "(info)", -1});
    rows.push_back({"3", "  minor faults per dfork+djoin: space + snapshot", fig("faults_spaces_" + p),
                    "", "", NAN, "(info)", -1});
  }
  rows.push_back({"3", "  phase: Put/Fork (create)", fig("phase_create"), "us", "", NAN, "", -1});
  rows.push_back({"3", "  phase: Put/Snap", fig("phase_snap"), "us", "", NAN, "", -1});
  rows.push_back({"3", "  phase: Put/Start .. dret .. Get/Status", fig("phase_start_ret"), "us", "",
                  NAN, "", -1});
  rows.push_back({"3", "  phase: djoin (status+merge+kill)", fig("phase_djoin"), "us", "", NAN, "",
                  -1});
  rows.push_back({"3", "  phase: Put/Kill alone", fig("phase_kill"), "us", "", NAN, "", -1});
  rows.push_back({"3", "thread writing 128 pages, DET_OWN [pinned]", fig("block_owned"), "us",
                  "the same, faulting", fig("block_faulted"), "(info)", -1});
  rows.push_back({"3", "dfork+djoin made by a space (nested)", fig("nested_dfork_djoin"), "us",
                  "dfork+djoin [unpinned]", fig("dfork_djoin_unpinned"), "(info)", -1});
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
  for (Mem1G kind : {Mem1G::kUnpopulated, Mem1G::kPopulated, Mem1G::kHeap}) {
    std::string k = merge1g_key(kind);
    double v = fig(k + "_ms");
    rows.push_back({"5", std::string("merge 1 GB, 1 page written, ") +
                             (kind == Mem1G::kUnpopulated ? "unpopulated"
                              : kind == Mem1G::kPopulated ? "populated"
                                                          : "heap (huge pages)"),
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
}  // namespace kbench

using namespace kbench;

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
