#!/usr/bin/env bash
# Every runtime example, run twice through `detux run`, prints the same
# bytes; the outputs are the ones the README shows.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")/.." && pwd)
detux=$build/tools/detux
twice() {  # name, input file, command...
  local name=$1 input=$2
  shift 2
  local a b
  a=$("$@" < "$input")
  b=$("$@" < "$input")
  [ "$a" = "$b" ] || { echo "FAIL: $name: two runs differ"; diff <(echo "$a") <(echo "$b"); exit 1; }
  echo "$a"
}
hello=$(twice hello /dev/null "$detux" run "$build/examples/hello/hello")
grep -q 'hello, spaces: this is space 3' <<<"$hello" || { echo "FAIL: hello: $hello"; exit 1; }
numbers=$(mktemp)
trap 'rm -f "$numbers"' EXIT
seq 1 1000 > "$numbers"
sum=$(twice sum_stdin "$numbers" "$detux" run "$build/examples/hello/sum_stdin")
[ "$sum" = "space 0 read 5 numbers, sum 15
space 1 read 995 numbers, sum 500485
total 1000 numbers, sum 500500" ] || { echo "FAIL: sum_stdin: $sum"; exit 1; }
spawn=$(twice spawn /dev/null "$detux" run --image "greet=$build/examples/hello/greet" \
  "$build/examples/hello/spawn")
[ "$spawn" = "greet: hello, ada (I am greet)
shell: process 1 (ada) exited 3
greet: hello, barbara (I am greet)
shell: process 2 (barbara) exited 7
greet: hello, edsger (I am greet)
shell: process 3 (edsger) exited 6
shell reads /log: ada was here
shell reads /log: barbara was here
shell reads /log: edsger was here
master: the shell's join returned 0" ] || { echo "FAIL: spawn: $spawn"; exit 1; }
twice actors /dev/null "$detux" run "$build/examples/actors/actors_detux" > /dev/null
"$src/scripts/gauss-case-study.sh" "$build" 10
echo "examples: every output the same twice"
