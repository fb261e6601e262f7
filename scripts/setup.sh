#!/usr/bin/env bash
# The README's two commands:
#   scripts/setup.sh demo   install packages, build, run the actor demo
#   scripts/setup.sh test   install packages, build, run every test, then
#                           run the suite again under ASan + UBSan, then a
#                           25-second fuzz run of the image loader
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-test}
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build
case "$what" in
  demo)
    scripts/demo.sh build 10
    ;;
  test)
    (cd build && ctest -j2 --output-on-failure --timeout 300)
    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDETUX_SANITIZE=ON >/dev/null
    ninja -C build-asan
    (cd build-asan && ctest -j2 --output-on-failure --timeout 600)
    scripts/fuzz-smoke.sh 25
    ;;
  *)
    echo "usage: scripts/setup.sh demo|test" >&2
    exit 2
    ;;
esac
