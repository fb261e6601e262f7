#!/usr/bin/env bash
# Tests of `detux run`'s command line and of its life beside PROGRAM:
#  - its options stop at PROGRAM: PROGRAM's own options are PROGRAM's, and a
#    repeated --env or --image never takes PROGRAM as one more value (both
#    did, under CLI11's list options, until a review on December 8);
#  - a TERM sent to the tool reaches PROGRAM, a terminal's INT (sent to the
#    whole group) reaches it once, and a tool killed with KILL takes
#    PROGRAM with it (it used to run on, orphaned);
#  - a run whose --fs image cannot be saved exits 74, not 0, and one whose
#    space calls exit() saves its files where it was asked to.
#   cli_run.sh BUILD_DIR
set -euo pipefail
build="$(cd "$1" && pwd)"
detux="$build/tools/detux"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
run() { "$detux" run "$@" 2>/dev/null; }

[ "$(run --env A=1 /bin/echo -n hi)" = hi ] || fail "--env took PROGRAM"
[ "$(run /bin/echo --env x --trace)" = "--env x --trace" ] || fail "PROGRAM's options went to detux"
[ "$(run -- /bin/echo --fs y)" = "--fs y" ] || fail "-- before PROGRAM"
env=$(run --env A=1 --env B=2 --fs=$work/x.img /usr/bin/env)
grep -qx A=1 <<<"$env" && grep -qx B=2 <<<"$env" || fail "repeated --env: $env"
if "$detux" run --trace >/dev/null 2>err; then fail "no PROGRAM accepted"; fi
grep -q "PROGRAM is required" err || fail "no PROGRAM: $(cat err)"

# TERM to the tool: PROGRAM's handler runs and its status comes back.
"$detux" run /bin/sh -c 'trap "echo got TERM; exit 3" TERM; echo ready; while :; do sleep 0.05; done' \
  >out 2>/dev/null &
tool=$!
for _ in $(seq 100); do grep -q ready out 2>/dev/null && break; sleep 0.05; done
kill -TERM "$tool"
rc=0; wait "$tool" || rc=$?
[ "$rc" = 3 ] && grep -q "got TERM" out || fail "TERM was not forwarded: rc $rc, $(cat out)"

# INT to the whole process group (a terminal's Ctrl-C): PROGRAM gets it
# once, and the tool waits for PROGRAM instead of dying of it.
set -m  # the job gets a process group of its own
"$detux" run /bin/sh -c 'n=0; trap "n=\$((n+1))" INT; echo ready
  for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.05; done; echo "INTs: $n"' >out 2>/dev/null &
tool=$!
set +m
for _ in $(seq 100); do grep -q ready out 2>/dev/null && break; sleep 0.05; done
kill -INT -- "-$tool"
rc=0; wait "$tool" || rc=$?
[ "$rc" = 0 ] && grep -q "INTs: 1" out || fail "a group's INT: rc $rc, $(cat out)"

# KILL to the tool: PROGRAM dies with it.
"$detux" run /bin/sh -c 'echo $$ > pid; while :; do sleep 0.05; done' 2>/dev/null &
tool=$!
for _ in $(seq 100); do [ -s pid ] && break; sleep 0.05; done
program=$(cat pid)
kill -KILL "$tool"
wait "$tool" 2>/dev/null || true
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.Z' "/proc/$1/status" 2>/dev/null; }
for _ in $(seq 100); do alive "$program" || break; sleep 0.05; done
if alive "$program"; then kill -KILL "$program"; fail "PROGRAM outlived a killed tool"; fi
# A run whose file system cannot be saved fails (it exited 0, its changes lost).
rc=0; "$detux" run --fs "$work/no-such-dir/fs.img" "$build/examples/hello/hello" >/dev/null 2>err || rc=$?
[ "$rc" = 74 ] && grep -q "could not save" err || fail "an unsaved file system: rc $rc, $(cat err)"
# A space that calls exit() under --fs: its file keeps its bytes, and the
# image is saved where it was asked to be (a path too long for a string's
# inline buffer), twice in a row.
img="$work/an-image-with-a-long-name.img"
for run in 1 2; do
  got=$("$detux" run --fs "$img" "$build/tests/fs_exit" 2>/dev/null) || fail "fs_exit run $run failed"
  [ "$got" = "join 0" ] || fail "fs_exit run $run: $got"
done
[ "$("$detux" fs cat "$img" /out.txt)" = "written by the space" ] || fail "the saved image lacks /out.txt"
echo "cli: 11 passed, 0 failed"
