#!/usr/bin/env bash
# Tests of `detux fs`: mkfs, put, get, cat, ls, mkdir, rm and fsck on an
# image, a refused corrupt image, and (when FUSE can mount here) a
# read-only mount seen with ls, cat and stat.
#   fs_tools.sh BUILD_DIR [mount]
# With "mount" it runs only the mount test, and exits 77 (skipped) with a
# reason when /dev/fuse or fusermount3 is unavailable.
set -euo pipefail
detux="$(cd "$1" && pwd)/tools/detux"
work=$(mktemp -d)
trap 'fusermount3 -u "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$detux" fs mkfs t.img --size 8
"$detux" fs mkdir t.img /docs
printf 'hello from the host\n' > in.txt
head -c 3000000 /dev/urandom > big.bin
"$detux" fs put t.img in.txt /docs/hello.txt
"$detux" fs put t.img big.bin /big.bin

if [ "${2:-}" = mount ]; then
  [ -c /dev/fuse ] || { echo "SKIP: /dev/fuse is not available"; exit 77; }
  command -v fusermount3 >/dev/null || { echo "SKIP: fusermount3 is not installed"; exit 77; }
  mkdir mnt
  "$detux" fs mount t.img mnt -f 2>mount.err &
  for _ in $(seq 50); do mountpoint -q mnt && break; sleep 0.1; done
  mountpoint -q mnt || { echo "SKIP: FUSE cannot mount here: $(cat mount.err)"; exit 77; }
  [ "$(ls mnt)" = "$(printf 'big.bin\ndocs')" ] || fail "ls of the mount: $(ls mnt)"
  [ "$(cat mnt/docs/hello.txt)" = "hello from the host" ] || fail "cat through the mount"
  cmp -s mnt/big.bin big.bin || fail "big file through the mount"
  [ "$(stat -c %s mnt/big.bin)" = 3000000 ] || fail "stat size through the mount"
  if (echo x > mnt/new) 2>/dev/null; then fail "the mount is writable"; fi
  fusermount3 -u mnt
  echo "mount: 4 passed, 0 failed"
  exit 0
fi

[ "$("$detux" fs cat t.img /docs/hello.txt)" = "hello from the host" ] || fail "cat"
"$detux" fs get t.img /big.bin out.bin
cmp -s big.bin out.bin || fail "get gives different bytes"
"$detux" fs ls t.img | grep -q ' big.bin$' || fail "ls lacks big.bin"
"$detux" fs ls t.img | grep -q ' docs/$' || fail "ls lacks docs/"
"$detux" fs ls t.img /docs | grep -q ' hello.txt$' || fail "ls /docs"
"$detux" fs fsck t.img | grep -q 'sound' || fail "fsck of a sound image"
if "$detux" fs rm t.img /docs 2>rm.err; then fail "rm of a non-empty directory"; fi
grep -q ENOTEMPTY rm.err || fail "rm message: $(cat rm.err)"
"$detux" fs rm t.img /docs/hello.txt
"$detux" fs rm t.img /docs
[ "$("$detux" fs ls t.img | wc -l)" = 1 ] || fail "rm left entries"
if "$detux" fs cat t.img /docs/hello.txt 2>/dev/null; then fail "cat of a removed file"; fi
# A corrupt image is refused with a reason, by every command.
cp t.img bad.img
printf '\xff' | dd of=bad.img bs=1 seek=5000 conv=notrunc status=none
if "$detux" fs fsck bad.img 2>fsck.err; then fail "fsck accepted a corrupt image"; fi
grep -q checksum fsck.err || fail "fsck message: $(cat fsck.err)"
if "$detux" fs ls bad.img 2>/dev/null; then fail "ls accepted a corrupt image"; fi
printf '\xff' | dd of=bad.img bs=1 seek=20 conv=notrunc status=none  # in the header
if "$detux" fs ls bad.img 2>ls.err; then fail "ls accepted a corrupt header"; fi
grep -q "header is corrupt" ls.err || fail "header message: $(cat ls.err)"

# What a review found on December 8 (each of these failed before):
# two commands at once both land (each held the image only while it ran, and
# the later save dropped the other's change);
for i in $(seq 8); do
  "$detux" fs mkdir t.img /a$i 2>/dev/null & "$detux" fs mkdir t.img /b$i 2>/dev/null & wait
done
[ "$("$detux" fs ls t.img | wc -l)" = 17 ] || fail "parallel commands lost changes: $("$detux" fs ls t.img)"
# a get that cannot read its source, or whose target is the image, leaves
# the host file as it was;
echo precious > keep.txt
if "$detux" fs get t.img /a1 keep.txt 2>/dev/null; then fail "get of a directory"; fi
[ "$(cat keep.txt)" = precious ] || fail "a refused get truncated its target"
"$detux" fs put t.img keep.txt /keep
if "$detux" fs get t.img /keep t.img 2>/dev/null; then fail "get over the image itself"; fi
"$detux" fs fsck t.img >/dev/null || fail "get over the image itself destroyed it"
# an image reached through a symbolic link stays the link's target;
ln -s t.img link.img
"$detux" fs mkdir link.img /via-link
[ -L link.img ] && "$detux" fs ls t.img | grep -q ' via-link/$' || fail "a save replaced the link"
# output that cannot be written is a failure.
if [ -e /dev/full ] && "$detux" fs cat t.img /keep >/dev/full 2>/dev/null; then fail "cat to a full device"; fi
echo "tools: 18 passed, 0 failed"
