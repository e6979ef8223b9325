#!/usr/bin/env bash
# Packs an aarch64 glibc build of qwen-bench with everything it loads (our kernel library, the executorch wheel's
# libraries, libstdc++, glibc and glibc's loader) into one folder, for Linux-on-phone setups and for trying it from
# `adb shell` (runtime/README.md, "Native runner"):
#
#   runtime/scripts/package_arm64_glibc.sh BUILD_DIR WHEEL_LIB_DIR OUT_DIR
#   adb push OUT_DIR /data/local/tmp/qwen-bench && adb shell /data/local/tmp/qwen-bench/qwen-bench --help
#
# Android's libc is bionic and there is no /lib/ld-linux-aarch64.so.1, so the binary cannot be exec'd directly;
# the wrapper starts the bundled loader with the bundled libraries instead. check_arm64.sh runs the package under
# qemu without the cross sysroot to show it is self-contained. The supported Android path is the NDK build.
set -euo pipefail
BUILD=${1:?BUILD_DIR (an aarch64 build with qwen-bench)}
WHEEL_LIB=${2:?WHEEL_LIB_DIR (executorch/lib of the aarch64 wheel)}
OUT=${3:?OUT_DIR}
SYSROOT=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
READELF=${READELF:-aarch64-linux-gnu-readelf}

rm -rf "$OUT" && mkdir -p "$OUT/bin" "$OUT/lib"
cp "$BUILD/qwen-bench" "$OUT/bin/"
needed() { "$READELF" -d "$1" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'; }
# Every DT_NEEDED, transitively, from the build, the wheel or the sysroot, in that order of preference.
queue=("$OUT/bin/qwen-bench")
while [ ${#queue[@]} -gt 0 ]; do
  f=${queue[0]}
  queue=("${queue[@]:1}")
  for need in $(needed "$f"); do
    [ -e "$OUT/lib/$need" ] && continue
    src=
    for dir in "$BUILD" "$WHEEL_LIB" "$SYSROOT/lib" "$SYSROOT/lib64"; do
      if [ -e "$dir/$need" ]; then src=$dir/$need; break; fi
    done
    [ -n "$src" ] || { echo "package_arm64_glibc: $need (needed by $(basename "$f")) not found" >&2; exit 1; }
    cp -L "$src" "$OUT/lib/$need"
    queue+=("$OUT/lib/$need")
  done
done
cp -L "$SYSROOT/lib/ld-linux-aarch64.so.1" "$OUT/lib/"

cat >"$OUT/qwen-bench" <<'EOF'
#!/system/bin/sh
# glibc build: start the bundled loader explicitly (Android has no /lib/ld-linux-aarch64.so.1 and its linker is for
# bionic). Works from any shell with `sh qwen-bench ...` as well.
d=$(cd "$(dirname "$0")" && pwd)
exec "$d/lib/ld-linux-aarch64.so.1" --library-path "$d/lib" "$d/bin/qwen-bench" "$@"
EOF
chmod +x "$OUT/qwen-bench"
size=$(du -sh "$OUT" | cut -f1)
echo "package_arm64_glibc: $OUT ($size):" $(ls "$OUT/lib")
