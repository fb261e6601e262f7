#!/usr/bin/env bash
# Installs every Debian package detux needs to build, test and benchmark.
# Safe to run again; needs root (or sudo).
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config  # the build
  libseccomp-dev         # the seccomp filter that confines every space
  libfmt-dev             # the supervisor's trace output
  libcli11-dev           # the detux command line
  libgtest-dev           # tests (GoogleTest)
  libbenchmark-dev       # micro-benchmarks (Google Benchmark)
  libdw-dev libelf-dev   # DWARF and ELF reading: a conflict address named as a variable (actor[3].x)
  zlib1g-dev             # CRC-32 checksums of file-system images
  libfuse3-dev           # `detux fs mount`: an image seen read-only through FUSE
  fuse3                  # fusermount3, to mount and unmount in the tools' test
  clang                  # the loader's fuzz target (libFuzzer): scripts/fuzz-smoke.sh
  libclang-rt-14-dev     # libFuzzer itself (only a recommendation of clang's otherwise)
  libssl-dev             # OpenSSL's MD5 (libcrypto) for the md5 benchmark in bench/eval
  gnuplot-nox            # Figure 4 (speedup.png) drawn by scripts/eval.sh
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
