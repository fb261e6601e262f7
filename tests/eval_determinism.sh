#!/usr/bin/env bash
# The four evaluation benchmarks (bench/eval) at tiny sizes: every run, on
# detux and on pthreads, at N = 1 and 2, twice, passes its own check, and
# every detux run of a benchmark prints the same digest, which is also the
# digest of the pthreads run with one thread: a merge that lost or misplaced
# the same bytes on every run would still be deterministic, but not equal.
set -euo pipefail
build=$1
bin=$build/bench/eval
detux=$build/tools/detux
for spec in md5:4 qsort:20000 matmult:64 lu:64; do
  IFS=: read -r bench size <<<"$spec"
  digests=""
  reference=$("$bin/${bench}_pthreads" --size "$size" --threads 1 | sed 's/.*digest=//')
  for n in 1 2; do
    for _ in 1 2; do
      d=$("$detux" run -- "$bin/${bench}_detux" --size "$size" --threads "$n")
      p=$("$bin/${bench}_pthreads" --size "$size" --threads "$n")
      for line in "$d" "$p"; do
        grep -q " verify=ok " <<<"$line" || { echo "FAIL: $bench N=$n: $line"; exit 1; }
      done
      digests+="$(sed 's/.*digest=//' <<<"$d")"$'\n'
    done
  done
  distinct=$(sort -u <<<"$digests" | grep -c .)
  [ "$distinct" -eq 1 ] || { echo "FAIL: $bench: $distinct distinct detux digests"; exit 1; }
  [ "$(head -1 <<<"$digests")" = "$reference" ] ||
    { echo "FAIL: $bench: detux digest $(head -1 <<<"$digests"), pthreads $reference"; exit 1; }
  echo "$bench: ok, digest $(head -1 <<<"$digests")"
done
