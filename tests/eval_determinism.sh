#!/usr/bin/env bash
# The four evaluation benchmarks (bench/eval) at tiny sizes: every run, on
# detux and on pthreads, at N = 1 and 2, twice, passes its own check, and
# every detux run of a benchmark prints the same digest.
set -euo pipefail
build=$1
bin=$build/bench/eval
detux=$build/tools/detux
for spec in md5:4 qsort:20000 matmult:64 lu:64; do
  IFS=: read -r bench size <<<"$spec"
  digests=""
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
  echo "$bench: ok, digest $(head -1 <<<"$digests")"
done
