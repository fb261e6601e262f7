/* symbolize_plain_lib.c: a shared library without debug info, built twice.
 *
 * As symbolize_plain_lib it keeps its .symtab, so both the exported table
 * and the file-static one have symbols.  As symbolize_stripped_lib
 * (SYMBOLIZE_STRIPPED, linked with --strip-all) only the exported table
 * keeps a name, in .dynsym; the static one has none anywhere.
 */
#include "symbolize_test_globals.h"

#ifdef SYMBOLIZE_STRIPPED
#define N(x) stripped_##x
#else
#define N(x) plain_##x
#endif

int N(table)[16];
static long N(hidden)[4];

void* N(table_addr)(int i) { return &N(table)[i]; }
void* N(hidden_addr)(int i) { return &N(hidden)[i]; }
