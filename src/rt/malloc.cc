// malloc.cc: the C allocation functions, served by the deterministic heap.
//
// libdetux exports malloc and its family, so every allocation in a detux
// program -- its own, the C library's (stdio buffers), the C++ library's
// (operator new calls malloc) -- comes from heap.h, in the master and in
// every space alike.  Spaces could not use the C library's allocator at all:
// it asks Linux for memory with brk and mmap, which a space may not call.
//
// Under AddressSanitizer the sanitizer's allocator takes these names first,
// so the sanitizer build does not export them (DETUX_NO_MALLOC): there,
// spaces cannot allocate, and the tests that need it say so and skip.
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "rt/heap.h"

#ifndef DETUX_NO_MALLOC

using detux::rt::heap_alloc;
using detux::rt::heap_alloc_aligned;
using detux::rt::heap_free;
using detux::rt::heap_realloc;
using detux::rt::heap_usable;

namespace {
bool power_of_two(size_t a) { return a && (a & (a - 1)) == 0; }
}  // namespace

extern "C" {

void* malloc(size_t n) { return heap_alloc(n); }
void free(void* p) { heap_free(p); }
void* realloc(void* p, size_t n) { return heap_realloc(p, n); }
size_t malloc_usable_size(void* p) { return heap_usable(p); }

void* calloc(size_t n, size_t m) {
  size_t total;
  if (__builtin_mul_overflow(n, m, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  void* p = heap_alloc(total);
  if (p) memset(p, 0, total);
  return p;
}

void* reallocarray(void* p, size_t n, size_t m) {
  size_t total;
  if (__builtin_mul_overflow(n, m, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return heap_realloc(p, total);
}

int posix_memalign(void** out, size_t align, size_t n) {
  if (!power_of_two(align) || align % sizeof(void*) != 0) return EINVAL;
  void* p = heap_alloc_aligned(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

void* aligned_alloc(size_t align, size_t n) {
  if (!power_of_two(align)) {
    errno = EINVAL;
    return nullptr;
  }
  return heap_alloc_aligned(align, n);
}

void* memalign(size_t align, size_t n) { return aligned_alloc(align, n); }
void* valloc(size_t n) { return heap_alloc_aligned(4096, n); }
void* pvalloc(size_t n) {
  if (n > SIZE_MAX - 4095) {  // rounding up would wrap to a small block
    errno = ENOMEM;
    return nullptr;
  }
  return heap_alloc_aligned(4096, (n + 4095) & ~size_t{4095});
}

}  // extern "C"

#endif  // DETUX_NO_MALLOC
