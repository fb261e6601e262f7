/* symbolize_test_globals.h: what symbolize_test.cc reaches in its C
 * translation unit and in the three test libraries.
 *
 *   symbolize_dwarf_lib     built with debug info: names come from DWARF
 *   symbolize_plain_lib     built without debug info: names from .symtab
 *   symbolize_stripped_lib  no debug info, no .symtab: only exported
 *                           (.dynsym) names survive
 */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

struct CPair {
  short a;
  short b;
};
extern struct CPair c_pairs[5];
int* c_step_counter(void);

void* sensor_reading_addr(int sensor, int reading);

void* plain_table_addr(int i);
void* plain_hidden_addr(int i);
void* stripped_table_addr(int i);
void* stripped_hidden_addr(int i);

#ifdef __cplusplus
}
#endif
