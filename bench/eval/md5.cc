// md5.cc: brute-force MD5 preimages (Determinator's bcrack), detux or pthreads.
//
// Eleven target strings of length S over the 26 lower-case letters are drawn
// by the PRNG (seed 1) and only their MD5 hashes (OpenSSL's) are kept.  The
// search enumerates every string of length S in order, cut into blocks of
// 26^4 candidates.  Each round the master starts N+1 workers on the next
// N+1 blocks and joins them; it stops after the round in which the last
// target was found.  A worker writes a string only into the slot of the
// target it matched; targets are distinct, so no two workers ever write the
// same bytes.  Which round finds a target depends on N, the strings found do
// not: the digest covers them in target order.  Check: all eleven found and
// equal to the drawn ones.
#define OPENSSL_SUPPRESS_DEPRECATED  // the low-level MD5_* calls: no lazy init, no locks
#include <openssl/md5.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

constexpr int kTargets = 11;
constexpr int kMaxLen = 12;
constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz";
constexpr long kRadix = 26;
constexpr long kBlock = kRadix * kRadix * kRadix * kRadix;

struct Search {
  int len;
  long space;                       // kRadix^len candidates
  unsigned char want[kTargets][MD5_DIGEST_LENGTH];
  char found[kTargets][kMaxLen + 1];  // written by the worker that finds it
};
Search g;  // shared: the executable's bss

void spell(long index, int len, char* out) {
  for (int p = len - 1; p >= 0; --p, index /= kRadix) out[p] = kAlphabet[index % kRadix];
  out[len] = 0;
}

void search_block(void* arg) {
  const long blk = reinterpret_cast<long>(arg);
  const long first = blk * kBlock, last = first + kBlock < g.space ? first + kBlock : g.space;
  char s[kMaxLen + 1];
  unsigned char h[MD5_DIGEST_LENGTH];
  spell(first, g.len, s);
  for (long i = first; i < last; ++i) {
    MD5(reinterpret_cast<const unsigned char*>(s), g.len, h);
    for (int t = 0; t < kTargets; ++t)
      if (std::memcmp(h, g.want[t], MD5_DIGEST_LENGTH) == 0) std::memcpy(g.found[t], s, g.len + 1);
    for (int p = g.len - 1; p >= 0; --p) {  // next string, as an odometer
      if (s[p] != 'z') {
        ++s[p];
        break;
      }
      s[p] = 'a';
    }
  }
}

bool all_found() {
  for (int t = 0; t < kTargets; ++t)
    if (!g.found[t][0]) return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const eval::Args args = eval::parse(argc, argv, 5);
  if (args.size < 3 || args.size > kMaxLen) return std::fprintf(stderr, "md5: size is a length, 3..%d\n", kMaxLen), 2;
  g.len = static_cast<int>(args.size);
  g.space = 1;
  for (int i = 0; i < g.len; ++i) g.space *= kRadix;
  char drawn[kTargets][kMaxLen + 1];
  eval::Rng rng(1);
  for (int t = 0; t < kTargets; ++t) {
    bool fresh;
    do {
      spell(static_cast<long>(rng.next() % g.space), g.len, drawn[t]);
      fresh = true;
      for (int u = 0; u < t; ++u) fresh = fresh && std::strcmp(drawn[u], drawn[t]) != 0;
    } while (!fresh);
    MD5(reinterpret_cast<const unsigned char*>(drawn[t]), g.len, g.want[t]);
  }
  const long blocks = (g.space + kBlock - 1) / kBlock;
  const int workers = args.threads + 1;
  std::vector<par::Task> tasks(workers);
  double total = 0;
  bool ok = true;
  for (int r = 0; r < args.repeat; ++r) {
    std::memset(g.found, 0, sizeof g.found);
    const double t0 = par::now();
    for (long next = 0; next < blocks && !all_found(); next += workers) {
      int started = 0;
      for (; started < workers && next + started < blocks; ++started)
        par::fork(tasks[started], started, search_block, reinterpret_cast<void*>(next + started));
      for (int w = 0; w < started; ++w) par::join(tasks[w]);
    }
    total += par::now() - t0;
    for (int t = 0; t < kTargets; ++t) ok = ok && std::strcmp(g.found[t], drawn[t]) == 0;
  }
  eval::Digest d;
  d.add(g.found, sizeof g.found);
  return eval::report("md5", args, total, ok, d);
}
