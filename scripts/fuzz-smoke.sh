#!/usr/bin/env bash
# A short fuzz run of the image loader: builds fuzz/fs_load_fuzz with clang
# into build-fuzz (its own build directory), seeds a corpus with a few valid
# images made by `detux fs`, and fuzzes for SECONDS (default 25).
#   scripts/fuzz-smoke.sh [SECONDS]
# Exits non-zero on any finding; the crashing input is left in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-25}
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DDETUX_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null
ninja -C build-fuzz -j2 fs_load_fuzz detux_tool >build-fuzz/build.log 2>&1 || { tail -30 build-fuzz/build.log; exit 1; }
detux=build-fuzz/tools/detux
corpus=build-fuzz/fuzz-corpus
rm -rf "$corpus" && mkdir -p "$corpus"
seed=$(mktemp -d)
trap 'rm -rf "$seed"' EXIT
export ASAN_OPTIONS=detect_leaks=0
"$detux" fs mkfs "$corpus/empty.img" --size 1
cp "$corpus/empty.img" "$corpus/tree.img"
printf 'a small file\n' > "$seed/small"
head -c 200000 /dev/zero | tr '\0' 'x' > "$seed/large"
"$detux" fs mkdir "$corpus/tree.img" /d
"$detux" fs mkdir "$corpus/tree.img" /d/e
"$detux" fs put "$corpus/tree.img" "$seed/small" /d/e/small
"$detux" fs put "$corpus/tree.img" "$seed/large" /large
"$detux" fs mkfs "$corpus/inodes.img" --size 1 --inodes 16
cd build-fuzz
./fuzz/fs_load_fuzz -max_total_time="$secs" -max_len=131072 -rss_limit_mb=2048 -print_final_stats=1 \
  fuzz-corpus 2>fuzz.log || { tail -40 fuzz.log; exit 1; }
grep -E 'stat::number_of_executed_units|Done' fuzz.log | sed 's/^/fuzz-smoke: /'
