// Tests for the three-way byte merge (src/merge/merge.h).
//
// Every check runs against each implementation this CPU can run (the word
// code, the AVX2 code when available, and the dispatching merge3), and the
// randomised ones compare with a byte-at-a-time oracle written straight
// from the rule in merge.h.
#include "merge/merge.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace detux::merge {
namespace {

using MergeFn = Outcome (*)(uint8_t*, const uint8_t*, const uint8_t*, const uint8_t*, size_t);

struct Impl {
  const char* name;
  MergeFn fn;
};

std::vector<Impl> impls() {
  std::vector<Impl> v{{"word", merge3_word}, {"merge3", merge3}};
  if (avx2_available()) v.push_back({"avx2", merge3_avx2});
  return v;
}

// The rule, one byte at a time, with the same no-write-on-conflict promise.
Outcome oracle(uint8_t* out, const uint8_t* dst, const uint8_t* src, const uint8_t* ref,
               size_t len) {
  size_t changed = 0;
  for (size_t i = 0; i < len; ++i) {
    if (src[i] == ref[i]) continue;
    if (dst[i] != ref[i]) return {true, i, 0};
    ++changed;
  }
  for (size_t i = 0; i < len; ++i) out[i] = src[i] != ref[i] ? src[i] : dst[i];
  return {false, len, changed};
}

using Bytes = std::vector<uint8_t>;

// A page-sized triple: ref random, src and dst copies of it.
struct Triple {
  Bytes dst, src, ref;
  explicit Triple(size_t n, uint32_t seed = 1) : ref(n) {
    std::mt19937 rng(seed);
    for (auto& b : ref) b = static_cast<uint8_t>(rng());
    dst = ref;
    src = ref;
  }
};

// mmap'ed pages that can be made read-only, so a stray store faults.
struct Pages {
  size_t size;
  uint8_t* p;
  explicit Pages(size_t n) : size(n) {
    void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(m, MAP_FAILED);
    p = static_cast<uint8_t*>(m);
  }
  ~Pages() { munmap(p, size); }
  void read_only() { ASSERT_EQ(mprotect(p, size, PROT_READ), 0); }
};

TEST(Merge, ReportsImplementationThisCpuCanRun) {
  std::string name = implementation_name();
  EXPECT_EQ(name, avx2_available() ? "avx2" : "word");
}

TEST(Merge, TakesBytesChangedOnlyInChild) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    Triple t(4096);
    t.src[0] ^= 1;
    t.src[100] ^= 0xff;
    t.src[4095] ^= 0x80;
    for (size_t i = 1000; i < 1100; ++i) t.src[i] = static_cast<uint8_t>(~t.src[i]);
    Bytes out = t.dst;
    Outcome o = m.fn(out.data(), t.dst.data(), t.src.data(), t.ref.data(), 4096);
    EXPECT_FALSE(o.conflict);
    EXPECT_EQ(o.changed, 103u);
    EXPECT_EQ(out, t.src);
  }
}

TEST(Merge, KeepsBytesChangedOnlyInParent) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    Triple t(4096);
    t.dst[5] ^= 1;
    t.dst[4000] ^= 2;
    t.src[6] ^= 4;  // adjacent, but a different byte: no conflict
    Bytes want = t.dst;
    want[6] = t.src[6];
    Bytes out = t.dst;
    Outcome o = m.fn(out.data(), t.dst.data(), t.src.data(), t.ref.data(), 4096);
    EXPECT_FALSE(o.conflict);
    EXPECT_EQ(o.changed, 1u);
    EXPECT_EQ(out, want);
  }
}

TEST(Merge, UnchangedChildNeverStoresIntoParent) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    Pages dst(3 * 4096);
    Triple t(dst.size);
    for (size_t i = 0; i < dst.size; i += 7) t.src[i] ^= 0x10;  // dst changes
    std::memcpy(dst.p, t.src.data(), dst.size);
    t.src = t.ref;
    dst.read_only();  // any store would fault
    Outcome o = m.fn(dst.p, dst.p, t.src.data(), t.ref.data(), dst.size);
    EXPECT_FALSE(o.conflict);
    EXPECT_EQ(o.changed, 0u);
  }
}

TEST(Merge, PagesTheChildDidNotTouchAreNeverStored) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    // Changes in the first and the last page; the middle one is read-only.
    Pages dst(3 * 4096);
    Triple t(dst.size);
    t.src[5] ^= 1;
    t.src[4095] ^= 1;
    t.src[2 * 4096] ^= 1;
    t.src[3 * 4096 - 1] ^= 1;
    std::memcpy(dst.p, t.dst.data(), dst.size);
    ASSERT_EQ(mprotect(dst.p + 4096, 4096, PROT_READ), 0);
    Outcome o = m.fn(dst.p, dst.p, t.src.data(), t.ref.data(), dst.size);
    EXPECT_FALSE(o.conflict);
    EXPECT_EQ(o.changed, 4u);
    EXPECT_EQ(std::memcmp(dst.p, t.src.data(), dst.size), 0);
  }
}

TEST(Merge, CountsChangedBytesInLongSparseRuns) {
  // One changed byte every `step` bytes over 64 KiB: hundreds of partly
  // changed blocks in a row, with most byte positions unchanged in all.
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    for (size_t step : {32u, 128u, 129u, 4096u}) {
      const size_t n = 64 << 10;
      Triple t(n, static_cast<uint32_t>(step));
      size_t want = 0;
      for (size_t i = 0; i < n; i += step, ++want) t.src[i] ^= 0x11;
      Bytes out = t.dst;
      Outcome o = m.fn(out.data(), t.dst.data(), t.src.data(), t.ref.data(), n);
      EXPECT_FALSE(o.conflict);
      EXPECT_EQ(o.changed, want) << "step=" << step;
      EXPECT_EQ(out, t.src) << "step=" << step;
    }
  }
}

TEST(Merge, ConflictWritesNothing) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    // Many clean changes first, the single conflict in the very last byte:
    // a one-pass merge would already have stored the earlier ones.
    Pages dst(2 * 4096);
    Triple t(dst.size);
    for (size_t i = 0; i + 1 < dst.size; i += 3) t.src[i] ^= 0x55;
    t.src[dst.size - 1] ^= 1;
    t.dst[dst.size - 1] ^= 2;
    std::memcpy(dst.p, t.dst.data(), dst.size);
    dst.read_only();  // any store would fault
    Outcome o = m.fn(dst.p, dst.p, t.src.data(), t.ref.data(), dst.size);
    EXPECT_TRUE(o.conflict);
    EXPECT_EQ(o.first_conflict, dst.size - 1);
    EXPECT_EQ(o.changed, 0u);
    EXPECT_EQ(std::memcmp(dst.p, t.dst.data(), dst.size), 0);

    // Same with a separate out buffer: it keeps its previous contents.
    Bytes out(dst.size, 0xa5);
    o = m.fn(out.data(), t.dst.data(), t.src.data(), t.ref.data(), dst.size);
    EXPECT_TRUE(o.conflict);
    EXPECT_EQ(out, Bytes(dst.size, 0xa5));
  }
}

TEST(Merge, BothSidesWritingTheSameValueIsAConflict) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    Triple t(64);
    t.dst[17] = t.src[17] = static_cast<uint8_t>(t.ref[17] + 1);
    Bytes out = t.dst;
    Outcome o = m.fn(out.data(), t.dst.data(), t.src.data(), t.ref.data(), 64);
    EXPECT_TRUE(o.conflict);
    EXPECT_EQ(o.first_conflict, 17u);
    EXPECT_EQ(out, t.dst);
  }
}

TEST(Merge, FirstConflictIsLowestOffset) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    const size_t n = 4096 + 13;
    // Several conflicts; sweep the lowest one over every position class:
    // each byte of a word, each word of a block, blocks, and the tail.
    for (size_t first = 0; first < n; first += (first < 300 ? 1 : 37)) {
      Triple t(n, static_cast<uint32_t>(first));
      for (size_t c : {first, first + 1, first + 9, first + 40, n - 1}) {
        if (c >= n) continue;
        t.src[c] ^= 1;
        t.dst[c] ^= 2;
      }
      if (first > 0) t.src[first - 1] ^= 4;  // a clean change just before
      Bytes out = t.dst;
      Outcome o = m.fn(out.data(), t.dst.data(), t.src.data(), t.ref.data(), n);
      ASSERT_TRUE(o.conflict) << "first=" << first;
      ASSERT_EQ(o.first_conflict, first);
      ASSERT_EQ(out, t.dst) << "first=" << first;
    }
  }
}

TEST(Merge, OutAliasesDst) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    for (size_t n : {1u, 31u, 32u, 33u, 4096u, 5000u}) {
      Triple t(n, static_cast<uint32_t>(n));
      std::mt19937 rng(7);
      for (size_t i = 0; i < n; ++i) {
        switch (rng() % 4) {
          case 0:
            t.src[i] ^= 1 + rng() % 255;
            break;
          case 1:
            t.dst[i] ^= 1 + rng() % 255;
            break;
          default:
            break;
        }
      }
      Bytes want(n);
      Outcome w = oracle(want.data(), t.dst.data(), t.src.data(), t.ref.data(), n);
      Bytes inplace = t.dst;
      Outcome o = m.fn(inplace.data(), inplace.data(), t.src.data(), t.ref.data(), n);
      EXPECT_FALSE(o.conflict);
      EXPECT_EQ(o.changed, w.changed);
      EXPECT_EQ(inplace, want) << "n=" << n;
    }
  }
}

TEST(Merge, ZeroLengthTouchesNothing) {
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    Outcome o = m.fn(nullptr, nullptr, nullptr, nullptr, 0);
    EXPECT_FALSE(o.conflict);
    EXPECT_EQ(o.changed, 0u);
  }
  EXPECT_TRUE(equal(nullptr, nullptr, 0));
}

// Random pools: conflict-free ones, and ones with a few conflicts.  Changes
// come in 64-byte segments that are untouched, sparse or dense, so that
// whole blocks are skipped, partly changed and fully changed.
struct Pool {
  Bytes dst, src, ref;
  Pool(size_t n, uint32_t seed, bool conflicts) : dst(n), src(n), ref(n) {
    std::mt19937 rng(seed);
    for (auto& b : ref) b = static_cast<uint8_t>(rng());
    src = ref;
    dst = ref;
    auto segment_rate = [&] {
      switch (rng() % 4) {
        case 0:
          return 0u;  // untouched
        case 1:
          return 4u;  // sparse: 1 in 64
        case 2:
          return 128u;  // half
        default:
          return 256u;  // every byte
      }
    };
    for (size_t s = 0; s < n; s += 64) {
      unsigned rs = segment_rate(), rd = segment_rate();
      for (size_t i = s; i < s + 64 && i < n; ++i) {
        if (rng() % 256 < rs) src[i] = static_cast<uint8_t>(ref[i] + 1 + rng() % 255);
        if (rng() % 256 < rd && src[i] == ref[i]) {
          dst[i] = static_cast<uint8_t>(ref[i] + 1 + rng() % 255);
        }
      }
    }
    if (!conflicts) return;
    // About one conflict per 3000 bytes; half of them write the same value
    // on both sides.
    for (size_t k = 0; k < n / 3000 + 1; ++k) {
      size_t i = rng() % n;
      if (src[i] == ref[i]) src[i] = static_cast<uint8_t>(ref[i] + 1 + rng() % 255);
      dst[i] = rng() % 2 ? src[i] : static_cast<uint8_t>(ref[i] + 1 + rng() % 255);
    }
  }
};

void check_against_oracle(const Impl& m, const Pool& p, size_t off, size_t len, size_t mis_o,
                          size_t mis_d, size_t mis_s, size_t mis_r, bool aliased) {
  // Separate allocations with chosen misalignment inside 64-byte lines.
  Bytes bo(len + 64, 0xcc), bd(len + 64), bs(len + 64), br(len + 64);
  uint8_t* d = bd.data() + mis_d;
  uint8_t* s = bs.data() + mis_s;
  uint8_t* r = br.data() + mis_r;
  std::memcpy(d, p.dst.data() + off, len);
  std::memcpy(s, p.src.data() + off, len);
  std::memcpy(r, p.ref.data() + off, len);
  uint8_t* o = aliased ? d : bo.data() + mis_o;
  Bytes before(o, o + len);

  Bytes want(len);
  Outcome w = oracle(want.data(), d, s, r, len);
  Outcome got = m.fn(o, d, s, r, len);
  ASSERT_EQ(got.conflict, w.conflict) << "len=" << len << " off=" << off;
  if (w.conflict) {
    ASSERT_EQ(got.first_conflict, w.first_conflict) << "len=" << len;
    ASSERT_EQ(got.changed, 0u);
    ASSERT_TRUE(std::equal(o, o + len, before.begin())) << "len=" << len;
  } else {
    ASSERT_EQ(got.changed, w.changed) << "len=" << len;
    ASSERT_TRUE(std::equal(o, o + len, want.begin())) << "len=" << len;
  }
  if (!aliased) {
    // Nothing outside [o, o + len) was stored.
    for (size_t i = 0; i < mis_o; ++i) ASSERT_EQ(bo[i], 0xcc);
    for (size_t i = mis_o + len; i < bo.size(); ++i) ASSERT_EQ(bo[i], 0xcc);
  }
}

TEST(Merge, BothImplementationsAgreeWithScalarOracleOnRandomPages) {
  const size_t kPage = 4096, kPages = 16;
  Pool clean(kPage * kPages, 11, false), racy(kPage * kPages, 12, true);
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    for (size_t pg = 0; pg < kPages; ++pg) {
      check_against_oracle(m, clean, pg * kPage, kPage, 0, 0, 0, 0, true);
      check_against_oracle(m, clean, pg * kPage, kPage, 0, 0, 0, 0, false);
      check_against_oracle(m, racy, pg * kPage, kPage, 0, 0, 0, 0, true);
      check_against_oracle(m, racy, pg * kPage, kPage, 0, 0, 0, 0, false);
    }
  }
}

// check3 is merge3's first pass alone: a caller merging many pages checks
// them all before it stores into any.
TEST(Merge, Check3ReportsWhatMerge3WouldAndStoresNothing) {
  const size_t kPage = 4096, kPages = 16;
  Pool clean(kPage * kPages, 31, false), racy(kPage * kPages, 32, true);
  size_t conflicts = 0;
  for (const Pool* p : {&clean, &racy}) {
    for (size_t pg = 0; pg < kPages; ++pg) {
      const size_t off = pg * kPage, len = kPage - pg;  // odd lengths too
      Bytes before(p->dst.begin() + off, p->dst.begin() + off + len), out(len);
      const uint8_t *d = p->dst.data() + off, *s = p->src.data() + off, *r = p->ref.data() + off;
      Outcome want = merge3(out.data(), d, s, r, len);
      Outcome got = check3(d, s, r, len);
      ASSERT_EQ(got.conflict, want.conflict) << pg;
      ASSERT_EQ(got.first_conflict, want.first_conflict) << pg;
      ASSERT_EQ(got.changed, want.changed) << pg;
      ASSERT_TRUE(std::equal(before.begin(), before.end(), p->dst.begin() + off)) << pg;
      conflicts += got.conflict;
    }
  }
  EXPECT_GT(conflicts, 0u);  // the racy pool did conflict
}

TEST(Merge, UnalignedOddLengths) {
  const size_t kMax = 9000;
  Pool clean(2 * kMax, 21, false), racy(2 * kMax, 22, true);
  std::mt19937 rng(5);
  size_t conflicts_seen = 0;
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    for (size_t len = 0; len <= kMax; len += (len < 600 ? 1 : 1 + rng() % 23)) {
      size_t off = rng() % kMax;
      size_t mo = rng() % 64, md = rng() % 64, ms = rng() % 64, mr = rng() % 64;
      bool alias = rng() % 2;
      check_against_oracle(m, clean, off, len, mo, md, ms, mr, alias);
      check_against_oracle(m, racy, off, len, mo, md, ms, mr, alias);
      for (size_t i = off; i < off + len; ++i) {
        if (racy.src[i] != racy.ref[i] && racy.dst[i] != racy.ref[i]) {
          ++conflicts_seen;
          break;
        }
      }
    }
  }
  EXPECT_GT(conflicts_seen, 100u);  // the racy pool did exercise conflicts
}

// Past 512 KiB the AVX2 code stops recording changed 128-byte groups in its
// bitmap and finds them again by rescanning: cover both sides of that line.
TEST(Merge, LongRangesAgreeWithScalarOracle) {
  const size_t kMax = (1 << 20) + 4096;
  const Pool clean(kMax, 31, false);
  for (const Impl& m : impls()) {
    SCOPED_TRACE(m.name);
    for (size_t len : {size_t{512 << 10} - 1, size_t{512 << 10}, size_t{(512 << 10) + 128 + 96 + 7},
                       size_t{(1 << 20) + 33}}) {
      check_against_oracle(m, clean, 0, len, 0, 0, 0, 0, true);
      check_against_oracle(m, clean, 3, len, 5, 7, 9, 11, false);
      // One conflict, late in the range, after many clean changes.
      for (size_t at : {size_t{(512 << 10) + 200}, len - 1}) {
        if (at >= len) continue;
        Pool racy = clean;
        racy.src[at] ^= 0x40;
        racy.dst[at] = static_cast<uint8_t>(racy.ref[at] + 1);
        if (racy.src[at] == racy.ref[at]) racy.src[at] ^= 0x01;
        check_against_oracle(m, racy, 0, len, 0, 0, 0, 0, true);
        check_against_oracle(m, racy, 0, len, 1, 2, 3, 4, false);
      }
    }
  }
}

TEST(Merge, EqualMatchesMemcmp) {
  std::mt19937 rng(3);
  Bytes a(9100);
  for (auto& x : a) x = static_cast<uint8_t>(rng());
  for (size_t len = 0; len <= 9000; len += 1 + (len > 300 ? rng() % 50 : 0)) {
    size_t ma = rng() % 64, mb = rng() % 64;
    Bytes ya(len + 64), yb(len + 64);
    std::memcpy(ya.data() + ma, a.data(), len);
    std::memcpy(yb.data() + mb, a.data(), len);
    ASSERT_TRUE(equal(ya.data() + ma, yb.data() + mb, len)) << len;
    if (len == 0) continue;
    size_t flip = rng() % len;
    yb[mb + flip] ^= static_cast<uint8_t>(1 + rng() % 255);
    ASSERT_FALSE(equal(ya.data() + ma, yb.data() + mb, len)) << len << " " << flip;
  }
}

}  // namespace
}  // namespace detux::merge
