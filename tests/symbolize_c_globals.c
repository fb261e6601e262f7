/* symbolize_c_globals.c: C globals for symbolize_test.cc.
 *
 * C names variables differently from C++: nothing is mangled, so a static
 * inside a function carries no linkage name and symbolize must name it from
 * its enclosing function (`c_step_counter::calls`).  These live in their own
 * C translation unit so the test sees what a C program's DWARF looks like.
 */
#include "symbolize_test_globals.h"

struct CPair c_pairs[5];

int* c_step_counter(void) {
  static int calls;
  calls++;
  return &calls;
}
