// merge.h: the three-way byte merge that folds a child space's memory back
// into its parent.
//
// When a parent forks a child space, the child's memory starts as a copy of
// the parent's.  The supervisor keeps that copy as a reference snapshot
// (`ref`).  Both sides then run on their own: the child changes its memory
// (`src`), the parent may change its own (`dst`).  When the parent collects
// the child, every byte the child changed relative to the snapshot is copied
// into the parent; bytes the child left alone keep the parent's value.  A
// byte changed on both sides is a conflict -- even when both sides wrote the
// same value, as in Determinator: the outcome of a race must not depend on
// what the racing writers happened to store, only on the fact that they
// raced.
//
// Merging is byte-granular because that is what makes it deterministic: the
// result is a function of the three images alone, not of scheduling, page
// granularity or write order.  For the same reason a conflict is all or
// nothing.  When any byte of the range conflicts, `out` is left exactly as it
// was (not one byte stored), and the report names the lowest conflicting
// offset, so that the caller's reaction to the conflict cannot depend on how
// far a merge got or on which implementation ran.
//
// This runs once per page a child touched, so it is on the hot path of every
// join.  There are two implementations with identical results: an AVX2 one,
// picked at run time when the CPU has AVX2, and a portable one working on
// 64-bit words.  Both make two passes over the range: the first only
// compares (it finds conflicts and where the changes are, skipping blocks
// the child did not touch), the second stores, and only into the 128-byte
// groups (AVX2) or 8-byte words (portable) the child changed.  So when
// out == dst, a parent page the child did not change is never written, and
// never taken out of copy-on-write sharing.
#pragma once

#include <cstddef>
#include <cstdint>

namespace detux::merge {

struct Outcome {
  bool conflict;          // some byte differs from ref in both dst and src
  size_t first_conflict;  // lowest conflicting offset when conflict, else len
  size_t changed;         // bytes taken from src (0 when conflict)
};

// Three-way merge of `len` bytes.  Per byte i:
//   src[i] == ref[i]                 -> out[i] = dst[i]
//   src[i] != ref[i], dst[i] == ref  -> out[i] = src[i]
//   src[i] != ref[i], dst[i] != ref  -> conflict (even if dst[i] == src[i])
// On conflict nothing is written to `out`.  `out` may be `dst` itself (the
// usual case: merge in place) or a buffer disjoint from all three inputs;
// any other overlap is an error.  Any length, any alignment; with len == 0
// the pointers are not touched and may be null.
Outcome merge3(uint8_t* out, const uint8_t* dst, const uint8_t* src, const uint8_t* ref,
               size_t len);

// The first pass of merge3 alone: the same Outcome (conflict, lowest
// conflicting offset, bytes the child changed), and nothing is stored.  A
// caller merging many ranges checks them all first, so that a conflict in
// the last leaves the first unwritten too.
Outcome check3(const uint8_t* dst, const uint8_t* src, const uint8_t* ref, size_t len);

// True when the two ranges hold the same bytes (memcmp underneath: libc
// already dispatches it to the CPU's widest vectors).
bool equal(const uint8_t* a, const uint8_t* b, size_t len);

// "avx2" or "word": the implementation merge3 dispatches to.
const char* implementation_name();

// The individual implementations, exposed for tests and benchmarks.  Same
// contract as merge3.  merge3_avx2 may only be called when avx2_available().
bool avx2_available();
Outcome merge3_word(uint8_t* out, const uint8_t* dst, const uint8_t* src, const uint8_t* ref,
                    size_t len);
Outcome merge3_avx2(uint8_t* out, const uint8_t* dst, const uint8_t* src, const uint8_t* ref,
                    size_t len);

}  // namespace detux::merge
