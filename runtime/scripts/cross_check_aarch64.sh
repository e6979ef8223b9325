#!/bin/sh
# Cross-compiles the C++ core (no ExecuTorch, serial) for aarch64 and runs its self-test under qemu,
# exercising the NEON path on an x86 host. Needs: g++-aarch64-linux-gnu, qemu-user.
#   sh runtime/scripts/cross_check_aarch64.sh [build-dir]
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$HERE/build-aarch64-selftest}
CXX=${CXX_AARCH64:-aarch64-linux-gnu-g++}
mkdir -p "$OUT"
"$CXX" -std=c++17 -O2 -static -I"$HERE/kernels" \
  "$HERE/kernels/gated_delta_rule.cpp" "$HERE/kernels/gdr_generic.cpp" "$HERE/scripts/selftest_core.cpp" \
  -o "$OUT/selftest_core"
QEMU=$(command -v qemu-aarch64 || command -v qemu-aarch64-static)
"$QEMU" "$OUT/selftest_core"
