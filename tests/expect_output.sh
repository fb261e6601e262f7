#!/usr/bin/env bash
# expect_output.sh WANT COMMAND...: runs COMMAND twice; both runs must exit
# 0, print the same, and end with the line WANT on stdout.
set -uo pipefail
want=$1
shift
first=""
for run in 1 2; do
  got=$("$@" 2>/dev/null)
  rc=$?
  [ "$rc" = 0 ] && [ "$(tail -n 1 <<<"$got")" = "$want" ] || { echo "FAIL (run $run): exit $rc, printed: $got"; exit 1; }
  [ "$run" = 1 ] && first=$got
  [ "$got" = "$first" ] || { echo "FAIL: two runs differ: $first / $got"; exit 1; }
done
echo "ok: $want"
