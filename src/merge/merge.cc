// merge.cc: see merge.h.
//
// Both implementations are split the same way:
//   detect  - compares only.  Finds the lowest conflicting byte, counts the
//             bytes the child changed and the span [lo, hi) of 32-byte
//             blocks holding them.  Never writes.
//   apply   - runs only when detect found no conflict.  Works in place on
//             `out`, which by then holds dst's bytes, and stores only into
//             blocks where src != ref.  With no conflict, every byte where
//             src != ref has dst == ref, so out = dst ^ src ^ ref there (and
//             a blend of src into out is the same thing).
// The block grid is anchored at offset 0 of the range; a tail shorter than
// one block is handled with words and then bytes by the word code, which
// therefore takes a base offset.
#include "merge/merge.h"

#include <bit>
#include <cassert>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DETUX_MERGE_X86 1
#else
#define DETUX_MERGE_X86 0
#endif

namespace detux::merge {
namespace {

constexpr size_t kBlock = 32;

struct Detect {
  bool conflict;
  size_t first_conflict;
  size_t changed;
  size_t lo;  // first changed block's start (valid when changed > 0)
  size_t hi;  // end of the last changed block, clipped to len
};

// ---- portable 64-bit word implementation ----------------------------------

constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7fULL;
constexpr uint64_t kHigh = 0x8080808080808080ULL;
constexpr uint64_t kOnes = 0x0101010101010101ULL;

inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, sizeof v); }

// Bit 7 of each byte set iff that byte of v is nonzero.  Exact: the sum
// (b & 0x7f) + 0x7f never carries out of its byte.
inline uint64_t nonzero_bytes(uint64_t v) {
  return (((v & kLow7) + kLow7) | v) & kHigh;
}

inline size_t count_marks(uint64_t marks) {  // marks from nonzero_bytes
  return static_cast<size_t>(((marks >> 7) * kOnes) >> 56);
}

// Memory index (0..7) of the lowest-addressed marked byte.
inline size_t lowest_mark(uint64_t marks) {
  if constexpr (std::endian::native == std::endian::little) {
    return static_cast<size_t>(std::countr_zero(marks)) >> 3;
  } else {
    return static_cast<size_t>(std::countl_zero(marks)) >> 3;
  }
}

// The word code is also the AVX2 code's tail, so it is always inlined: an
// AVX2 function that calls (or tail-calls) plain code can hand it a dirty
// upper YMM state, and GCC 12 omits the vzeroupper before such a tail call.
// Legacy-SSE instructions executed in that state cost ~100 ns per merge on
// the development machine.
#define DETUX_INLINE __attribute__((always_inline)) inline

// Checks [base, len) of the range.  `base` is a multiple of kBlock.
// Accumulates into d; returns false on the first conflict.
DETUX_INLINE bool detect_word_from(const uint8_t* dst, const uint8_t* src,
                      const uint8_t* ref, size_t base, size_t len, Detect& d) {
  size_t i = base;
  for (; i + kBlock <= len; i += kBlock) {
    uint64_t x0 = load64(src + i) ^ load64(ref + i);
    uint64_t x1 = load64(src + i + 8) ^ load64(ref + i + 8);
    uint64_t x2 = load64(src + i + 16) ^ load64(ref + i + 16);
    uint64_t x3 = load64(src + i + 24) ^ load64(ref + i + 24);
    if ((x0 | x1 | x2 | x3) == 0) continue;
    const uint64_t xs[4] = {x0, x1, x2, x3};
    for (size_t k = 0; k < 4; ++k) {
      if (xs[k] == 0) continue;
      size_t j = i + 8 * k;
      uint64_t ms = nonzero_bytes(xs[k]);
      uint64_t mc = ms & nonzero_bytes(load64(dst + j) ^ load64(ref + j));
      if (mc != 0) {
        d.conflict = true;
        d.first_conflict = j + lowest_mark(mc);
        return false;
      }
      d.changed += count_marks(ms);
    }
    if (d.hi == 0) d.lo = i;
    d.hi = i + kBlock;
  }
  if (i == len) return true;
  // Tail: fewer than kBlock bytes.
  const size_t tail = i;
  bool any = false;
  for (; i + 8 <= len; i += 8) {
    uint64_t x = load64(src + i) ^ load64(ref + i);
    if (x == 0) continue;
    uint64_t ms = nonzero_bytes(x);
    uint64_t mc = ms & nonzero_bytes(load64(dst + i) ^ load64(ref + i));
    if (mc != 0) {
      d.conflict = true;
      d.first_conflict = i + lowest_mark(mc);
      return false;
    }
    d.changed += count_marks(ms);
    any = true;
  }
  for (; i < len; ++i) {
    if (src[i] == ref[i]) continue;
    if (dst[i] != ref[i]) {
      d.conflict = true;
      d.first_conflict = i;
      return false;
    }
    ++d.changed;
    any = true;
  }
  if (any) {
    if (d.hi == 0) d.lo = tail;
    d.hi = len;
  }
  return true;
}

// Stores src's changes into out[lo, hi), which holds dst's bytes and has no
// conflicts with src/ref.  `lo` is a multiple of kBlock.
DETUX_INLINE void apply_word_from(uint8_t* out, const uint8_t* src, const uint8_t* ref,
                     size_t lo, size_t hi) {
  size_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    uint64_t x = load64(src + i) ^ load64(ref + i);
    if (x != 0) store64(out + i, load64(out + i) ^ x);
  }
  for (; i < hi; ++i) {
    if (src[i] != ref[i]) out[i] = src[i];
  }
}

// ---- AVX2 implementation ---------------------------------------------------

#if DETUX_MERGE_X86

#define DETUX_AVX2 __attribute__((target("avx2,popcnt")))

DETUX_AVX2 DETUX_INLINE __m256i ld(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// One block at offset j known (or suspected) to hold a change.  Returns
// false on conflict.
DETUX_AVX2 DETUX_INLINE bool detect_block_avx2(const uint8_t* dst, const uint8_t* src,
                                         const uint8_t* ref, size_t j,
                                         Detect& d) {
  __m256i r = ld(ref + j);
  uint32_t same_s =
      static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(ld(src + j), r)));
  if (same_s == 0xffffffffu) return true;
  uint32_t same_d =
      static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(ld(dst + j), r)));
  uint32_t clash = ~(same_s | same_d);
  if (clash != 0) {
    d.conflict = true;
    d.first_conflict = j + static_cast<size_t>(__builtin_ctz(clash));
    return false;
  }
  d.changed += static_cast<size_t>(__builtin_popcount(~same_s));
  if (d.hi == 0) d.lo = j;
  d.hi = j + kBlock;
  return true;
}

DETUX_AVX2 bool detect_avx2(const uint8_t* dst, const uint8_t* src,
                            const uint8_t* ref, size_t len, Detect& d) {
  size_t i = 0;
  // 128 bytes at a time: one test skips four untouched blocks.
  for (; i + 4 * kBlock <= len; i += 4 * kBlock) {
    __m256i x0 = _mm256_xor_si256(ld(src + i), ld(ref + i));
    __m256i x1 = _mm256_xor_si256(ld(src + i + 32), ld(ref + i + 32));
    __m256i x2 = _mm256_xor_si256(ld(src + i + 64), ld(ref + i + 64));
    __m256i x3 = _mm256_xor_si256(ld(src + i + 96), ld(ref + i + 96));
    __m256i x = _mm256_or_si256(_mm256_or_si256(x0, x1), _mm256_or_si256(x2, x3));
    if (_mm256_testz_si256(x, x)) continue;
    if (!detect_block_avx2(dst, src, ref, i, d)) return false;
    if (!detect_block_avx2(dst, src, ref, i + 32, d)) return false;
    if (!detect_block_avx2(dst, src, ref, i + 64, d)) return false;
    if (!detect_block_avx2(dst, src, ref, i + 96, d)) return false;
  }
  for (; i + kBlock <= len; i += kBlock) {
    if (!detect_block_avx2(dst, src, ref, i, d)) return false;
  }
  return detect_word_from(dst, src, ref, i, len, d);
}

DETUX_AVX2 void apply_avx2(uint8_t* out, const uint8_t* src, const uint8_t* ref,
                           size_t lo, size_t hi) {
  size_t i = lo;
  for (; i + kBlock <= hi; i += kBlock) {
    __m256i s = ld(src + i);
    __m256i same = _mm256_cmpeq_epi8(s, ld(ref + i));
    if (static_cast<uint32_t>(_mm256_movemask_epi8(same)) == 0xffffffffu) continue;
    // Keep out where src == ref, take src elsewhere.
    __m256i v = _mm256_blendv_epi8(s, ld(out + i), same);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), v);
  }
  apply_word_from(out, src, ref, i, hi);
}

DETUX_AVX2 bool equal_avx2(const uint8_t* a, const uint8_t* b, size_t len) {
  size_t i = 0;
  for (; i + 4 * kBlock <= len; i += 4 * kBlock) {
    __m256i x0 = _mm256_xor_si256(ld(a + i), ld(b + i));
    __m256i x1 = _mm256_xor_si256(ld(a + i + 32), ld(b + i + 32));
    __m256i x2 = _mm256_xor_si256(ld(a + i + 64), ld(b + i + 64));
    __m256i x3 = _mm256_xor_si256(ld(a + i + 96), ld(b + i + 96));
    __m256i x = _mm256_or_si256(_mm256_or_si256(x0, x1), _mm256_or_si256(x2, x3));
    if (!_mm256_testz_si256(x, x)) return false;
  }
  for (; i + kBlock <= len; i += kBlock) {
    __m256i x = _mm256_xor_si256(ld(a + i), ld(b + i));
    if (!_mm256_testz_si256(x, x)) return false;
  }
  return i == len || std::memcmp(a + i, b + i, len - i) == 0;
}

#endif  // DETUX_MERGE_X86

// ---- shared driver ---------------------------------------------------------

inline bool overlaps(const void* a, const void* b, size_t len) {
  auto x = reinterpret_cast<uintptr_t>(a);
  auto y = reinterpret_cast<uintptr_t>(b);
  return x < y + len && y < x + len;
}

inline void check_args(const uint8_t* out, const uint8_t* dst,
                       const uint8_t* src, const uint8_t* ref, size_t len) {
  (void)out, (void)dst, (void)src, (void)ref, (void)len;
  assert(out != nullptr && dst != nullptr && src != nullptr && ref != nullptr);
  assert(out == dst || !overlaps(out, dst, len));
  assert(!overlaps(out, src, len));
  assert(!overlaps(out, ref, len));
}

// Inlined into each merge3_*, so that all of merge3_avx2 is AVX2 code.
template <bool (*DetectFn)(const uint8_t*, const uint8_t*, const uint8_t*,
                           size_t, Detect&),
          void (*ApplyFn)(uint8_t*, const uint8_t*, const uint8_t*, size_t,
                          size_t)>
DETUX_INLINE Outcome run(uint8_t* out, const uint8_t* dst, const uint8_t* src,
            const uint8_t* ref, size_t len) {
  if (len == 0) return {false, 0, 0};
  check_args(out, dst, src, ref, len);
  Detect d{false, len, 0, 0, 0};
  if (!DetectFn(dst, src, ref, len, d)) return {true, d.first_conflict, 0};
  if (out != dst) std::memcpy(out, dst, len);
  if (d.changed != 0) ApplyFn(out, src, ref, d.lo, d.hi);
  return {false, len, d.changed};
}

bool detect_word(const uint8_t* dst, const uint8_t* src, const uint8_t* ref,
                 size_t len, Detect& d) {
  return detect_word_from(dst, src, ref, 0, len, d);
}

bool equal_word(const uint8_t* a, const uint8_t* b, size_t len) {
  return len == 0 || std::memcmp(a, b, len) == 0;
}

bool detect_avx2_support() {
#if DETUX_MERGE_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

using MergeFn = Outcome (*)(uint8_t*, const uint8_t*, const uint8_t*,
                            const uint8_t*, size_t);
using EqualFn = bool (*)(const uint8_t*, const uint8_t*, size_t);

struct Dispatch {
  bool avx2;
  MergeFn merge;
  EqualFn equal;
  const char* name;
};

Dispatch pick() {
#if DETUX_MERGE_X86
  if (detect_avx2_support()) return {true, merge3_avx2, equal_avx2, "avx2"};
#endif
  return {false, merge3_word, equal_word, "word"};
}

// Resolved once, during static initialisation of this library (and on
// first use if that comes earlier).
const Dispatch& dispatch() {
  static const Dispatch d = pick();
  return d;
}

[[maybe_unused]] const Dispatch& force_init = dispatch();

}  // namespace

Outcome merge3_word(uint8_t* out, const uint8_t* dst, const uint8_t* src,
                    const uint8_t* ref, size_t len) {
  return run<detect_word, apply_word_from>(out, dst, src, ref, len);
}

#if DETUX_MERGE_X86
DETUX_AVX2
#endif
Outcome merge3_avx2(uint8_t* out, const uint8_t* dst, const uint8_t* src,
                    const uint8_t* ref, size_t len) {
#if DETUX_MERGE_X86
  assert(avx2_available());
  return run<detect_avx2, apply_avx2>(out, dst, src, ref, len);
#else
  (void)out, (void)dst, (void)src, (void)ref, (void)len;
  assert(!"merge3_avx2 called on a CPU without AVX2");
  return {false, 0, 0};
#endif
}

bool avx2_available() { return dispatch().avx2; }

Outcome merge3(uint8_t* out, const uint8_t* dst, const uint8_t* src,
               const uint8_t* ref, size_t len) {
  return dispatch().merge(out, dst, src, ref, len);
}

bool equal(const uint8_t* a, const uint8_t* b, size_t len) {
  return dispatch().equal(a, b, len);
}

const char* implementation_name() { return dispatch().name; }

}  // namespace detux::merge
