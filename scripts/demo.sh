#!/usr/bin/env bash
# demo.sh: Determinator's lock-step actor simulation, on detux and on pthreads.
#
#   scripts/demo.sh [BUILD_DIR [RUNS]]
#
# Runs examples/actors/actors_detux (through `tools/detux run`) and
# examples/actors/actors_pthreads RUNS times each (default 10; BUILD_DIR
# defaults to build/ at the top of the repository) and prints, for each, how
# many distinct outputs it produced, with a count and the digest line of each.
# It also prints the correct lock-step result (actors_pthreads --reference).
#
# Exit status: 0 if every run succeeded and detux gave one output equal to the
# reference; 1 otherwise; 2 on bad usage or a missing binary.
# Environment: RUNS (instead of the second argument), TIMEOUT (seconds per
# run, default 120; needs timeout(1)).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  echo "usage: $0 [BUILD_DIR [RUNS]]   (default: $here/../build, 10 runs)" >&2
  exit 2
}
case "${1:-}" in -h | --help) usage ;; esac
[[ $# -le 2 ]] || usage

build=${1:-$here/../build}
runs=${2:-${RUNS:-10}}
timeout_s=${TIMEOUT:-120}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "demo.sh: RUNS must be a positive integer, got '$runs'" >&2; exit 2; }
[[ -d $build ]] || { echo "demo.sh: build directory '$build' not found (configure and build first, e.g. cmake -B build -G Ninja && ninja -C build)" >&2; exit 2; }
build=$(cd "$build" && pwd)

launcher=$build/tools/detux
detux_bin=$build/examples/actors/actors_detux
pthreads_bin=$build/examples/actors/actors_pthreads
missing=0
for bin in "$launcher" "$detux_bin" "$pthreads_bin"; do
  if [[ ! -x $bin ]]; then
    echo "demo.sh: missing binary: $bin (build it with: ninja -C $build ${bin##*/})" >&2
    missing=1
  fi
done
[[ $missing -eq 0 ]] || exit 2

timeout_cmd=()
if command -v timeout >/dev/null 2>&1; then timeout_cmd=(timeout "$timeout_s"); fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/detux-demo.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# run_many NAME CMD...: runs CMD $runs times, stdout of run i in $tmp/NAME.i.
# A failing run stops the demo with its stderr.
run_many() {
  local name=$1
  shift
  local i rc
  for ((i = 1; i <= runs; i++)); do
    rc=0
    "${timeout_cmd[@]}" "$@" >"$tmp/$name.$i" 2>"$tmp/$name.$i.err" || rc=$?
    if [[ $rc -ne 0 ]]; then
      if [[ $rc -eq 124 && ${#timeout_cmd[@]} -gt 0 ]]; then
        echo "demo.sh: $name run $i timed out after ${timeout_s}s: $*" >&2
      else
        echo "demo.sh: $name run $i failed (exit status $rc): $*" >&2
      fi
      sed 's/^/  | /' "$tmp/$name.$i.err" >&2
      exit 1
    fi
  done
}

# report NAME: prints the distinct outputs of NAME's runs, most frequent first,
# and sets $distinct to their number.
distinct=0
report() {
  local name=$1 i count sum first
  for ((i = 1; i <= runs; i++)); do
    printf '%s %s\n' "$(cksum <"$tmp/$name.$i" | tr ' ' _)" "$i"
  done >"$tmp/$name.sums"
  distinct=$(cut -d' ' -f1 "$tmp/$name.sums" | sort -u | wc -l)
  local noun=outputs
  [[ $distinct -eq 1 ]] && noun=output
  echo "$name: $distinct distinct $noun in $runs runs"
  cut -d' ' -f1 "$tmp/$name.sums" | sort | uniq -c | sort -k1,1nr -k2 |
    while read -r count sum; do
      first=$(awk -v s="$sum" '$1 == s { print $2; exit }' "$tmp/$name.sums")
      printf '  %3dx  %s\n' "$count" "$(grep -m1 '^digest:' "$tmp/$name.$first" || echo '(no digest line)')"
    done
}

echo "detux: $launcher run $detux_bin"
echo "pthreads: $pthreads_bin"
echo

run_many reference "$pthreads_bin" --reference
ref_digest=$(grep -m1 '^digest:' "$tmp/reference.1" || true)
echo "reference (sequential lock-step): $ref_digest"
echo

run_many detux "$launcher" run "$detux_bin"
report detux
detux_distinct=$distinct
run_many pthreads "$pthreads_bin"
report pthreads
echo

status=0
if [[ $detux_distinct -ne 1 ]]; then
  echo "demo.sh: FAIL: detux gave $detux_distinct different outputs; it should be deterministic" >&2
  status=1
elif ! cmp -s "$tmp/detux.1" "$tmp/reference.1"; then
  echo "demo.sh: FAIL: detux's output differs from the lock-step reference:" >&2
  diff "$tmp/reference.1" "$tmp/detux.1" | sed 's/^/  | /' >&2 || true
  status=1
else
  echo "detux matches the lock-step reference on every run."
fi
pthreads_ok=0
for ((i = 1; i <= runs; i++)); do
  cmp -s "$tmp/pthreads.$i" "$tmp/reference.1" && pthreads_ok=$((pthreads_ok + 1))
done
echo "pthreads matches the reference in $pthreads_ok of $runs runs."
exit $status
