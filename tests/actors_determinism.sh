#!/usr/bin/env bash
# The seed's lock-step actor simulation: 20 runs in spaces give one output;
# its pthreads twin, on the same input, gives more than one.
set -euo pipefail
build=$1
runs=${2:-20}
detux_out=$(for _ in $(seq "$runs"); do
  "$build/tools/detux" run "$build/examples/actors/actors_detux" | md5sum
done | sort -u | wc -l)
pthreads_out=$(for _ in $(seq "$runs"); do
  "$build/examples/actors/actors_pthreads" | md5sum
done | sort -u | wc -l)
echo "detux: $detux_out distinct output(s) in $runs runs"
echo "pthreads: $pthreads_out distinct output(s) in $runs runs"
[ "$detux_out" -eq 1 ] || { echo "FAIL: detux output varied"; exit 1; }
[ "$pthreads_out" -gt 1 ] || { echo "FAIL: the pthreads twin did not vary (the race did not show)"; exit 1; }
