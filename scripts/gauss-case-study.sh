#!/usr/bin/env bash
# gauss-case-study.sh: the thesis's section 5.2, measured.
#
#   scripts/gauss-case-study.sh [BUILD_DIR [RUNS]]
#
# Runs the Gaussian elimination with its missing-join bug RUNS times (default
# 50) on detux (through `detux run`) and with pthreads, and prints how many
# distinct outputs each gave, and whether any was the right answer (the
# output of --fixed).  Exit status 0 if detux gave exactly one output and it
# was wrong (the bug shows, the same way every time); 1 otherwise.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${1:-$here/../build}
runs=${2:-50}
detux=$build/tools/detux
ex=$build/examples/gauss
right=$("$detux" run "$ex/gauss_detux" --fixed | md5sum | cut -d' ' -f1)

count() {  # prints "<distinct> <runs that were right>"
  local outs
  outs=$(for _ in $(seq "$runs"); do "$@" | md5sum | cut -d' ' -f1; done)
  echo "$(sort -u <<<"$outs" | wc -l) $(grep -c "^$right\$" <<<"$outs" || true)"
}
read -r d_distinct d_right < <(count "$detux" run "$ex/gauss_detux")
read -r p_distinct p_right < <(count "$ex/gauss_pthreads")
echo "detux:    $d_distinct distinct output(s) in $runs runs, $d_right right"
echo "pthreads: $p_distinct distinct output(s) in $runs runs, $p_right right"
[ "$d_distinct" -eq 1 ] && [ "$d_right" -eq 0 ]
