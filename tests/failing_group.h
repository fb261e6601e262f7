// failing_group.h: a group of two threads whose join fails after one of them
// handed its parent a heap block at a barrier.  Thread 0 allocates a block,
// writes `text` into it and names it in g_group_node, allocates eight more
// (g_group_extra), then waits at two barriers; thread 1 faults after the
// first.  Returns det_group_join's
// result (-DET_EFAULTED).  Used by runtime_edges_test.cc and, one level
// down, by nested_group_heap.cc.
#pragma once

#include <detux/detux.h>

#include <cstdlib>
#include <cstring>

inline char* g_group_node;
inline const char* g_group_text;
inline char* g_group_extra[8];

inline int run_failing_group(const char* text) {
  g_group_text = text;
  det_thread_start(
      0,
      [](void*) {
        g_group_node = static_cast<char*>(malloc(64));
        std::strcpy(g_group_node, g_group_text);
        for (char*& e : g_group_extra) e = static_cast<char*>(malloc(64));
        det_barrier();
        det_barrier();
      },
      nullptr);
  det_thread_start(
      1,
      [](void*) {
        det_barrier();
        __builtin_trap();
      },
      nullptr);
  det_child_t failed = 99;
  det_status st{};
  return det_group_join(0, 2, &failed, &st);
}
