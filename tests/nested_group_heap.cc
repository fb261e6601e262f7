// nested_group_heap.cc: a heap extent handed out twice (a second review,
// December 8).  Thread 0 runs a group of its own in which thread 0.0 merges
// a block at a barrier before its sibling faults.  Thread 0 keeps that
// block's extent, but counted nothing for it, so the master, joining thread
// 0, found it holding no block and took its whole extent back, the merged
// block included.  Thread 5 then walks its own heap up to that block's
// address (a probe block shows where its extent starts, a gap block spans
// the rest) and its next block was the very same one.  Where extents fall
// depends on every allocation before: with the prints below, as in the
// review's reproduction, the old code gave the block out again (without
// them it happened not to); the check is that it never does.
//   detux run nested_group_heap  ->  ..., last "node intact, a different block"
#include <detux/detux.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "failing_group.h"

namespace {

char* g_node;
char* g_later;
void *g_probe, *g_gap;  // globals: the compiler drops a malloc that nothing uses

void inner(void*) {
  if (run_failing_group("a grandchild's node") != -DET_EFAULTED) std::abort();
  g_node = g_group_node;
  // Freeing two of the merged blocks lowered thread 0's count of live
  // blocks back to zero when the kept extent was counted as one of them.
  free(g_group_extra[0]);
  free(g_group_extra[1]);
}

void later(void*) {
  g_probe = malloc(2u << 20);
  const uintptr_t at = reinterpret_cast<uintptr_t>(g_probe), node = reinterpret_cast<uintptr_t>(g_node);
  free(g_probe);
  g_gap = node > at ? malloc(node - at - 16) : nullptr;
  g_later = static_cast<char*>(malloc(40));
  std::fprintf(stderr, "probe %p, gap %p, later %p\n", g_probe, g_gap, static_cast<void*>(g_later));
  std::strcpy(g_later, "a later thread's block");
}

}  // namespace

int main() {
  det_limits lim{8192, 1L << 40};  // room for a gap that spans what was given back
  if (det_set_limits(&lim) != 0) return 2;
  det_thread_start(0, inner, nullptr);
  if (djoin(0) != 0 || !g_node) return 3;
  std::printf("outer join done, the node at %p\n", static_cast<void*>(g_node));
  det_thread_start(5, later, nullptr);
  if (djoin(5) != 0) return 4;
  std::printf("node %s, %s\n", std::strcmp(g_node, "a grandchild's node") == 0 ? "intact" : "overwritten",
              g_node == g_later ? "the same block" : "a different block");
  return 0;
}
