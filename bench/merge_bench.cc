// Benchmark of the three-way byte merge (src/merge/merge.h) on 4 KiB pages,
// against a plain memcpy of one page measured in the same run.
//
// Merges run in place (out == dst), the way the supervisor uses them.  To
// keep an in-place merge repeatable, each iteration does two merges that
// undo each other: ref=A, src=B turns dst from A into B, then ref=B, src=A
// turns it back.  Times are reported per merge (items = merges).
//
// Cases:
//   unchanged    src == ref: nothing to take, nothing stored
//   16B          16 contiguous bytes changed by the child
//   16B-spread   16 single bytes, one every 256 bytes
//   all          every byte changed by the child
//   conflict     16 bytes changed, then a conflict in the last byte (a full
//                scan that must store nothing)
// Rows: merge3 (what the supervisor calls), then each implementation
// forced; equal() against memcmp on two equal pages.  After the run a table
// gives ns per page and the ratio to memcpy.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "merge/merge.h"

namespace {

using detux::merge::Outcome;
using MergeFn = Outcome (*)(uint8_t*, const uint8_t*, const uint8_t*, const uint8_t*, size_t);

constexpr size_t kPage = 4096;

struct alignas(64) Page {
  uint8_t b[kPage];
};

enum Case { kUnchanged, k16, k16Spread, kAll, kConflict };

struct Setup {
  Page a, b, dst;  // a: original contents, b: the child's version
};

void make(Setup& s, Case c) {
  std::mt19937 rng(42);
  for (auto& x : s.a.b) x = static_cast<uint8_t>(rng());
  s.b = s.a;
  switch (c) {
    case kUnchanged:
      break;
    case k16:
      for (size_t i = 1000; i < 1016; ++i) s.b.b[i] ^= 0x5a;
      break;
    case k16Spread:
      for (size_t i = 0; i < 16; ++i) s.b.b[i * 256 + 17] ^= 0x5a;
      break;
    case kAll:
      for (auto& x : s.b.b) x ^= 0xff;
      break;
    case kConflict:
      for (size_t i = 1000; i < 1016; ++i) s.b.b[i] ^= 0x5a;
      s.b.b[kPage - 1] ^= 1;
      break;
  }
  s.dst = s.a;
  if (c == kConflict) s.dst.b[kPage - 1] ^= 2;
}

void BM_Memcpy(benchmark::State& state) {
  static Setup s;
  make(s, kAll);
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.a.b);
    std::memcpy(s.dst.b, s.a.b, kPage);
    benchmark::ClobberMemory();
    std::memcpy(s.dst.b, s.b.b, kPage);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(2 * state.iterations());
  state.SetBytesProcessed(2 * state.iterations() * kPage);
}

void BM_Merge(benchmark::State& state, MergeFn fn, Case c) {
  static Setup s;
  make(s, c);
  const bool expect_conflict = c == kConflict;
  // A conflicting merge stores nothing, so it repeats without undoing.
  const uint8_t* back_src = expect_conflict ? s.b.b : s.a.b;
  const uint8_t* back_ref = expect_conflict ? s.a.b : s.b.b;
  for (auto _ : state) {
    Outcome o1 = fn(s.dst.b, s.dst.b, s.b.b, s.a.b, kPage);
    benchmark::DoNotOptimize(o1);
    Outcome o2 = fn(s.dst.b, s.dst.b, back_src, back_ref, kPage);
    benchmark::DoNotOptimize(o2);
    if (o1.conflict != expect_conflict || o2.conflict != expect_conflict) {
      state.SkipWithError("unexpected merge outcome");
      break;
    }
  }
  state.SetItemsProcessed(2 * state.iterations());
  state.SetBytesProcessed(2 * state.iterations() * kPage);
}

void BM_Equal(benchmark::State& state, bool use_memcmp) {
  static Setup s;
  make(s, kUnchanged);
  for (auto _ : state) {
    bool e = use_memcmp ? std::memcmp(s.a.b, s.b.b, kPage) == 0
                        : detux::merge::equal(s.a.b, s.b.b, kPage);
    benchmark::DoNotOptimize(e);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}

// Collects ns per item (per page) for the table printed after the run.
class Collect : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> ns_per_page;
  std::vector<std::string> order;
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred || r.run_type != Run::RT_Iteration) continue;
      auto it = r.counters.find("items_per_second");
      if (it == r.counters.end() || it->second.value <= 0) continue;
      // items_per_second is per CPU second; turn it back into ns per item.
      std::string name = r.benchmark_name();
      if (!ns_per_page.count(name)) order.push_back(name);
      ns_per_page[name] = 1e9 / it->second.value;
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  using namespace detux::merge;
  benchmark::RegisterBenchmark("memcpy/4KiB", BM_Memcpy);
  struct {
    const char* name;
    MergeFn fn;
  } impls[] = {{"merge3", merge3}, {"word", merge3_word}, {"avx2", merge3_avx2}};
  struct {
    const char* name;
    Case c;
  } cases[] = {{"unchanged", kUnchanged},
               {"16B", k16},
               {"16B-spread", k16Spread},
               {"all", kAll},
               {"conflict", kConflict}};
  for (const auto& im : impls) {
    if (im.fn == merge3_avx2 && !avx2_available()) continue;
    for (const auto& cs : cases) {
      std::string n = std::string(im.name) + "/" + cs.name;
      benchmark::RegisterBenchmark(n.c_str(), BM_Merge, im.fn, cs.c);
    }
  }
  benchmark::RegisterBenchmark("equal/4KiB", BM_Equal, false);
  benchmark::RegisterBenchmark("memcmp/4KiB", BM_Equal, true);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Collect rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  benchmark::Shutdown();

  std::printf("\nmerge3 dispatches to: %s\n", implementation_name());
  auto base = rep.ns_per_page.find("memcpy/4KiB");
  if (base == rep.ns_per_page.end()) return 0;
  std::printf("%-22s %12s %16s\n", "benchmark", "ns/page", "ratio to memcpy");
  for (const std::string& n : rep.order) {
    double ns = rep.ns_per_page[n];
    std::printf("%-22s %12.1f %16.2f\n", n.c_str(), ns, ns / base->second);
  }
  return 0;
}
