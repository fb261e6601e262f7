/* symbolize_dwarf_lib.c: a shared library with debug info, loaded at a
 * bias of its own, whose globals symbolize must name from DWARF.  The
 * address comes back through a function so that the executable never takes
 * it directly (that would make a copy-relocated duplicate in its own .bss).
 */
#include "symbolize_test_globals.h"

struct Sensor {
  int id;
  float readings[3];
};
struct Sensor sensors[4];

void* sensor_reading_addr(int sensor, int reading) { return &sensors[sensor].readings[reading]; }
