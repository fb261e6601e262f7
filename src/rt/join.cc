// join.cc: creating and joining children, the runtime's half (see join.h).
#include "rt/join.h"

#include <errno.h>
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>

#include <memory>
#include <optional>
#include <vector>

#include "ptrace/birth.h"
#include "rt/console.h"
#include "rt/fsemu.h"
#include "rt/heap.h"

namespace detux::rt {

namespace {

std::vector<Span>* g_segments = nullptr;
std::string g_fs_report;  // the paths the last join marked conflicted

// Cut [cut, cut+len) out of every segment.
void subtract(std::vector<Span>* segs, uint64_t cut, uint64_t len) {
  std::vector<Span> out;
  for (const Span& s : *segs) {
    uint64_t e = s.start + s.len, ce = cut + len;
    if (ce <= s.start || cut >= e) {
      out.push_back(s);
      continue;
    }
    if (cut > s.start) out.push_back({s.start, cut - s.start});
    if (ce < e) out.push_back({ce, e - ce});
  }
  *segs = std::move(out);
}

// Library objects the executable holds by copy relocation (std::cout,
// stdout, environ ...) live in its .bss but belong to their libraries, whose
// own data is private to each space: they are not merged either (two
// children both initialising std::cout's fill character would conflict).
void subtract_copy_relocs(std::vector<Span>* segs, uint64_t bias, const ElfW(Dyn)* dyn) {
  uint64_t rela = 0, relasz = 0, symtab = 0;
  for (; dyn && dyn->d_tag != DT_NULL; ++dyn) {
    if (dyn->d_tag == DT_RELA) rela = dyn->d_un.d_ptr;
    if (dyn->d_tag == DT_RELASZ) relasz = dyn->d_un.d_val;
    if (dyn->d_tag == DT_SYMTAB) symtab = dyn->d_un.d_ptr;
  }
  if (!rela || !symtab) return;
  const auto* r = reinterpret_cast<const ElfW(Rela)*>(rela);
  const auto* syms = reinterpret_cast<const ElfW(Sym)*>(symtab);
  for (size_t i = 0; i < relasz / sizeof(ElfW(Rela)); ++i) {
    if (ELF64_R_TYPE(r[i].r_info) != R_X86_64_COPY) continue;
    uint64_t size = syms[ELF64_R_SYM(r[i].r_info)].st_size;
    subtract(segs, bias + r[i].r_offset, size);
  }
}

// The main executable's writable PT_LOAD segments, without the parts the
// dynamic linker writes: RELRO, and the lazily bound .got.plt (a child and
// its parent both resolving the same function would otherwise conflict),
// and without the copy-relocated library objects.
int find_segments(dl_phdr_info* info, size_t, void* out) {
  auto* segs = static_cast<std::vector<Span>*>(out);
  const ElfW(Dyn)* dyn = nullptr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_DYNAMIC) dyn = reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + ph.p_vaddr);
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_W)) continue;
    segs->push_back({info->dlpi_addr + ph.p_vaddr, ph.p_memsz});
  }
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_GNU_RELRO) subtract(segs, info->dlpi_addr + ph.p_vaddr, ph.p_memsz);
  }
  subtract_copy_relocs(segs, info->dlpi_addr, dyn);
  uint64_t pltgot = 0, pltrelsz = 0;
  for (; dyn && dyn->d_tag != DT_NULL; ++dyn) {
    if (dyn->d_tag == DT_PLTGOT) pltgot = dyn->d_un.d_ptr;  // relocated by ld.so
    if (dyn->d_tag == DT_PLTRELSZ) pltrelsz = dyn->d_un.d_val;
  }
  if (pltgot) subtract(segs, pltgot, (3 + pltrelsz / sizeof(ElfW(Rela))) * 8);
  return 1;  // the first object is the main executable
}

// The heap extents of this space's live children.  In libdetux's own data,
// never in the heap: a child starts with an empty table of its own and must
// not write into its parent's.
// A record counts only if it carries this space's generation: a new child
// bumps the generation instead of clearing the table, which would copy
// every page of it.
struct ChildRec {
  det_child_t id;
  Extent extent;
  uint64_t gen = 0;  // 0: never used
  bool merged = false;
};
constexpr size_t kMaxRecs = 4096;
ChildRec g_recs[kMaxRecs];
uint64_t g_gen = 1;
size_t g_nrecs = 0;  // live records; a fork that could not be remembered is refused

bool live(const ChildRec& r) { return r.gen == g_gen; }

ChildRec* find_rec(det_child_t id, bool make) {
  size_t h = (id * 0x9E3779B97F4A7C15ULL) >> 52;  // 12 bits
  for (size_t i = 0; i < kMaxRecs; ++i) {
    ChildRec& r = g_recs[(h + i) % kMaxRecs];
    if (live(r) && r.id == id) return &r;
    if (!live(r) && make) {
      r = ChildRec{id, {}, g_gen, false};
      ++g_nrecs;
      return &r;
    }
    if (!live(r)) return nullptr;
  }
  return nullptr;
}

// Removes the record (backward-shift deletion keeps probing correct).
void drop_rec(ChildRec* r) {
  size_t i = static_cast<size_t>(r - g_recs);
  g_recs[i].gen = 0;
  --g_nrecs;
  for (size_t j = (i + 1) % kMaxRecs; live(g_recs[j]); j = (j + 1) % kMaxRecs) {
    ChildRec moved = g_recs[j];
    g_recs[j].gen = 0;
    --g_nrecs;  // counted again as find_rec places it
    *find_rec(moved.id, true) = moved;
  }
}

long merge_range(det_child_t child, uint64_t start, uint64_t len) {
  void* a = reinterpret_cast<void*>(start);
  return dget(child, DET_MERGE, a, len, a);
}

}  // namespace

const std::string& last_fs_conflicts() { return g_fs_report; }

void rt_init(bool master) {
  if (g_segments) return;
  heap_reserve();
  rt_state_map();
  if (master) fs_master_init();
  else fs_exec_init();
  atexit(console_give_back_input);  // runs in every space that exits
  g_segments = new std::vector<Span>;
  dl_iterate_phdr(find_segments, g_segments);
}

void rt_master_init() { rt_init(true); }

ForkPlan fork_prepare(unsigned long flags) {
  ForkPlan plan;
  // A child whose extent could not be remembered would have it handed out
  // again while it lives: with every record in use, the fork is refused.
  if ((flags & DET_FORK) && g_nrecs == kMaxRecs) {
    plan.refused = -DET_ELIMIT;
    return plan;
  }
  if (flags & DET_FORK) plan.extent = heap_carve_child();
  if ((flags & DET_FORK) && !g_in_space) heap_rejoin_huge_pages();
  plan.parent_in_space = g_in_space;
  return plan;
}

void fork_child(const ForkPlan& plan, det_child_t self) {
  ++g_gen;  // the parent's records are not this space's
  g_nrecs = 0;
  rt_child_start(self, plan.extent, plan.parent_in_space);
}

void fork_done(const ForkPlan& plan, det_child_t child, long r) {
  if (plan.extent.size() == 0) return;
  ChildRec* rec = r >= 0 ? find_rec(child, true) : nullptr;
  if (rec) rec->extent = plan.extent;
  else heap_give_back(plan.extent);  // no child was made (fork_prepare kept a record free)
}

void child_merged(det_child_t child) {
  if (ChildRec* r = find_rec(child, false)) r->merged = true;
  if (!g_in_space) heap_merged_into_master();
}

void child_killed(det_child_t child) {
  ChildRec* r = find_rec(child, false);
  if (!r) return;
  if (!r->merged) heap_give_back(r->extent);
  else heap_keep(r->extent);
  drop_rec(r);
}

long wait_child(det_child_t child, det_status* st, RtState* crt) {
  for (;;) {
    long r = dget(child, DET_STATUS, st, sizeof *st, nullptr);
    if (r < 0) return r;
    if (st->state == DET_S_ABSENT) return -ESRCH;
    *crt = RtState{};
    if (dget(child, DET_COPY, crt, sizeof *crt, &rt_state()) < 0) return 0;
    if (st->state != DET_S_STOPPED || crt->why != RetWhy::kInput) return 0;
    if ((r = console_supply(child, *crt)) < 0) return r;
    if ((r = dput(child, DET_START, nullptr, 0, nullptr)) < 0) return r;
  }
}

std::vector<Span> shared_spans() {
  std::vector<Span> out;
  Extent heap = heap_region();
  if (heap.size()) out.push_back({heap.lo, heap.size()});
  if (g_segments) out.insert(out.end(), g_segments->begin(), g_segments->end());
  return out;
}

long merge_shared(det_child_t child, bool* heap_merged) {
  *heap_merged = false;
  for (const Span& s : shared_spans()) {
    if (long r = merge_range(child, s.start, s.len); r < 0) return r;
    if (s.start == heap_region().lo) *heap_merged = true;
  }
  return 0;
}

// In the master, a join's temporaries (the merge's list of ranges, the file
// system's report, the child's 9 KiB heap state) come from the supervisor's
// heap, which no space shares.  On the program heap or the stack, every
// page they touched after a fork was a copy-on-write fault (four a join).
// Only temporaries: what outlives the join (stdio's buffers, which the
// console may allocate, the report kept for last_fs_conflicts) must be in
// the program's memory, or the next space would find zeros there.  A space
// has no supervisor heap: there they come from its own.
class JoinTemporaries {
 public:
  JoinTemporaries() {
    if (!g_in_space) sys_.emplace();
  }

 private:
  std::optional<SystemHeap> sys_;
};

// The child's heap state back into this space's.  If it is unreadable, the
// child's extent stays used (never reused).
void join_heap_state(det_child_t child, HeapState* ch, Extent given) {
  if (dget(child, DET_COPY, ch, sizeof *ch, &heap_state()) == 0) heap_join(*ch, given);
}

// In a space, the 9 KiB go on the stack, in a frame of their own: a space
// may not allocate them where its allocator would have to ask Linux for
// memory (the sanitizer build's), and on the caller's frame they would put
// every call of the merge 9 KiB further down.
__attribute__((noinline)) void join_heap_in_space(det_child_t child, Extent given) {
  HeapState ch;
  join_heap_state(child, &ch, given);
}

// A child whose heap did not go in gives its extent back, unless an earlier
// merge (a barrier's) took some of its blocks: the caller may hold them, so
// the extent stays used.
void join_heap(det_child_t child, bool heap_merged, bool merged_before, Extent given) {
  if (!heap_merged) {
    if (!merged_before) heap_give_back(given);
    else heap_keep(given);
    return;
  }
  if (g_in_space) return join_heap_in_space(child, given);
  JoinTemporaries temporaries;
  auto ch = std::make_unique<HeapState>();
  join_heap_state(child, ch.get(), given);
}

int join_child(det_child_t child, bool merge_memory, det_status* out) {
  det_status st{};
  RtState crt;
  long r = wait_child(child, &st, &crt);
  if (r < 0) return static_cast<int>(r);
  if (st.state == DET_S_FAULTED) r = -DET_EFAULTED;
  else if (st.state == DET_S_EXITED && st.exit_code != 0) r = -DET_EEXITED;
  bool heap_merged = false;
  if (r == 0 && merge_memory) {
    JoinTemporaries temporaries;
    r = merge_shared(child, &heap_merged);
  }
  if (r == -DET_ECONFLICT) dget(child, DET_STATUS, &st, sizeof st, nullptr);
  console_collect(child, crt);
  console_adopt_position(crt);
  if (st.state != DET_S_FAULTED) {  // files, as Determinator reconciles them
    std::string report;
    long c;
    {
      JoinTemporaries temporaries;
      c = fs_join(child, &report);
    }
    st.fs_conflicts = static_cast<int32_t>(c > 0 ? c : 0);
    if (c > 0) g_fs_report = report;
    if (c < 0 && r == 0) r = c;
  }
  // The extent is the one this space handed out, never what the child's
  // memory claims (a child could name any range, or have exec'd).
  Extent given;
  bool merged_before = false;
  if (ChildRec* rec = find_rec(child, false)) {
    given = rec->extent;
    merged_before = rec->merged;
    drop_rec(rec);
  }
  join_heap(child, heap_merged, merged_before, given);
  if (out) *out = st;
  long k = dput(child, DET_KILL, nullptr, 0, nullptr);
  if (r == 0 && k < 0) r = k;
  return static_cast<int>(r);
}

}  // namespace detux::rt
