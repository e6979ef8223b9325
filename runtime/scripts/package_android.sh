#!/usr/bin/env bash
# Builds the Android app's native payload: the folder the APK ships as lib/arm64-v8a/ (android_app/build_apk.sh).
#
#   runtime/scripts/package_android.sh OUT_DIR [--no-seccomp-patch]
#
# OUT_DIR is replaced (built under OUT_DIR.partial, then renamed) and holds, every file named lib*.so because the
# package installer extracts nothing else into ApplicationInfo.nativeLibraryDir:
#   libqwen_bench.so            the aarch64 qwen-bench executable (runtime/runner/SERVE.md is its --serve protocol)
#   libld-linux-aarch64.so      glibc's dynamic loader: the program the app actually starts
#   libc-6.so libm-6.so libstdcxx-6.so libgcc_s-1.so libdl-2.so libpthread-0.so
#                               glibc 2.36 and the gcc runtime from the cross sysroot, renamed from libX.so.N with
#                               their sonames and every DT_NEEDED naming them rewritten in place
#   libexecutorch*.so           the executorch aarch64 wheel's libraries (same version as the host's)
#   libqwen35_ops.so            our kernels
# and one file that is NOT for lib/arm64-v8a/ (build_apk.sh packs only lib*.so; an app may carry it in assets/):
#   launch.json                 the exact command line and environment the app starts the runner with, the file list,
#                               and what was patched
#
# The app starts (nativeLibraryDir = $D, the environment holding GLIBC_TUNABLES=glibc.pthread.rseq=0):
#   $D/libld-linux-aarch64.so --library-path $D $D/libqwen_bench.so --serve --bundle BUNDLE_DIR
#
# Seccomp: app processes (Android 8+) run under a filter that kills glibc's set_robust_list (99), rseq (293),
# clone3 (435) and faccessat2 (439) (runtime/scripts/android_seccomp/). The `svc #0` sites of those numbers in the
# shipped libraries are patched to return -ENOSYS (android_seccomp/patch_syscalls.py), so glibc takes its fallbacks.
# --no-seccomp-patch leaves them (only for showing that the syscall check fails without the patch).
# check_android_native.sh OUT_DIR runs the result under qemu exactly as the app would and checks it.
#
# Installs g++-aarch64-linux-gnu and patchelf with apt-get when missing (needs root); downloads the executorch
# aarch64 wheel once (cached). Environment: PYTHON (default .venv/bin/python), QWEN_NATIVE_BUILD (default
# runtime/build-native, git-ignored; the aarch64 build is shared with check_arm64.sh), QWEN_ARM64_WHEEL_CACHE
# (default ~/.cache/qwen_mobile/executorch-aarch64).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: package_android.sh OUT_DIR [--no-seccomp-patch]}
PATCH=1
case "${2:-}" in
  "") ;;
  --no-seccomp-patch) PATCH=0 ;;
  *) echo "package_android: unknown option '$2' (expected --no-seccomp-patch)" >&2; exit 2 ;;
esac
PY=${PYTHON:-$ROOT/.venv/bin/python}
BUILD=${QWEN_NATIVE_BUILD:-$ROOT/runtime/build-native}
SYSROOT=/usr/aarch64-linux-gnu
READELF=aarch64-linux-gnu-readelf
t0=$(date +%s)
log() { printf 'package_android: %s (%ss)\n' "$*" "$(( $(date +%s) - t0 ))" >&2; }

# shellcheck source=arm64_lib.sh
source "$ROOT/runtime/scripts/arm64_lib.sh"
install_missing package_android aarch64-linux-gnu-g++:g++-aarch64-linux-gnu patchelf:patchelf
log "the executorch aarch64 wheel (check_arm64.sh's cache)"
executorch_aarch64_wheel package_android
WHEEL_LIB=$WHEEL_DIR/executorch/lib

log "build qwen-bench for aarch64"
ARM_BUILD=$BUILD/aarch64
EXE=$("$PY" -c 'import sys; from qwen_mobile.runtime import native; print(native.build_runner(*sys.argv[1:]))' \
  "$ARM_BUILD" "$WHEEL_LIB/cmake/executorch" "$ROOT/runtime/cmake/aarch64-linux-gnu.cmake")

log "assemble $OUT"
STAGE=$OUT.partial
rm -rf "$STAGE" && mkdir -p "$STAGE"
needed() { "$READELF" -d "$1" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'; }
# Android extracts lib*.so only, and PackageManager accepts only [A-Za-z0-9._-] (plus a few) in names: libX.so.N
# becomes libX-N.so, with '+' spelled 'x'.
apk_name() {
  case "$1" in
    ld-linux-aarch64.so.1) echo libld-linux-aarch64.so ;;
    lib*.so) echo "$1" ;;
    # Same length as the original: the rename is done in place.
    lib*.so.*) local base=${1%%.so.*} ver=${1#*.so.}; base=${base//+/x}; echo "$base-${ver//./-}.so" ;;
    *) echo "package_android: cannot give '$1' an APK library name" >&2; return 1 ;;
  esac
}
declare -A RENAMED=()  # original soname -> file name in the APK
cp "$EXE" "$STAGE/libqwen_bench.so"
queue=("$STAGE/libqwen_bench.so")
while [ ${#queue[@]} -gt 0 ]; do
  f=${queue[0]}
  queue=("${queue[@]:1}")
  for need in $(needed "$f"); do
    [ -n "${RENAMED[$need]:-}" ] && continue
    src=
    for dir in "$ARM_BUILD" "$WHEEL_LIB" "$SYSROOT/lib" "$SYSROOT/lib64"; do
      if [ -e "$dir/$need" ]; then src=$dir/$need; break; fi
    done
    [ -n "$src" ] || { echo "package_android: $need (needed by $(basename "$f")) not found" >&2; exit 1; }
    dst=$(apk_name "$need")
    RENAMED[$need]=$dst
    cp -L "$src" "$STAGE/$dst"
    chmod 0755 "$STAGE/$dst"
    queue+=("$STAGE/$dst")
  done
done
if [ -z "${RENAMED[ld-linux-aarch64.so.1]:-}" ]; then
  cp -L "$SYSROOT/lib/ld-linux-aarch64.so.1" "$STAGE/libld-linux-aarch64.so"
fi
chmod 0755 "$STAGE"/*.so

# Sonames, DT_NEEDED and the version records follow the new names, rewritten in place (equal lengths:
# android_seccomp/rename_needed.py; patchelf 0.14 moves .dynstr into a new segment, and a libc patched that way
# crashes at start-up). The loader keeps its soname: started as the program, it answers to its own soname (libc's
# DT_NEEDED ld-linux-aarch64.so.1) whatever its file is called. The build's RUNPATH (the build folder) goes:
# --library-path is the only search path.
renames=()
for need in "${!RENAMED[@]}"; do
  [ "$need" = ld-linux-aarch64.so.1 ] || [ "${RENAMED[$need]}" = "$need" ] || renames+=("$need=${RENAMED[$need]}")
done
libs=()
for f in "$STAGE"/*.so; do [ "$(basename "$f")" = libld-linux-aarch64.so ] || libs+=("$f"); done
# libc keeps its own soname libc.so.6: the loader recognises libc by that soname (its libc_map, whose early
# initialisation it runs), and a libc renamed inside crashes at start-up (measured). Everyone else's DT_NEEDED says
# libc-6.so, the file; the loader then knows the object by both names.
others=()
for f in "${libs[@]}"; do [ "$(basename "$f")" = libc-6.so ] || others+=("$f"); done
"$PY" "$ROOT/runtime/scripts/android_seccomp/rename_needed.py" "${renames[@]}" -- "${others[@]}"
libc_renames=()
for r in "${renames[@]}"; do [ "${r%%=*}" = libc.so.6 ] || libc_renames+=("$r"); done
[ ${#libc_renames[@]} -eq 0 ] || "$PY" "$ROOT/runtime/scripts/android_seccomp/rename_needed.py" "${libc_renames[@]}" -- "$STAGE/libc-6.so"
for f in "${libs[@]}"; do
  if "$READELF" -d "$f" | grep -q '(RUNPATH)\|(RPATH)'; then patchelf --remove-rpath "$f"; fi
done
# What the loader resolves by: every soname is its file name and every DT_NEEDED a file in the folder.
for f in "$STAGE"/*.so; do
  name=$(basename "$f")
  [ "$name" = libld-linux-aarch64.so ] && continue
  soname=$("$READELF" -d "$f" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
  if [ -n "$soname" ] && [ "$soname" != "$name" ] && [ "$name" != libc-6.so ]; then
    echo "package_android: $name has soname $soname after renaming" >&2; exit 1
  fi
  for need in $(needed "$f"); do
    [ "$need" = ld-linux-aarch64.so.1 ] || [ -e "$STAGE/$need" ] \
      || { echo "package_android: $name needs $need, which is not in the folder" >&2; exit 1; }
  done
done

PATCH_REPORT=null
if [ $PATCH = 1 ]; then
  log "patch the seccomp-forbidden syscall sites"
  # glibc 2.36's aarch64 pthread_create uses clone, not clone3 (the wrapper came later), so 435 is patched where
  # present but not required.
  "$PY" "$ROOT/runtime/scripts/android_seccomp/patch_syscalls.py" --json "$STAGE.patch.json" \
    --require libc-6.so=99,293,439 --require libld-linux-aarch64.so=99,293 "$STAGE"/*.so >&2
  PATCH_REPORT=$(cat "$STAGE.patch.json")
  rm -f "$STAGE.patch.json"
fi

GLIBC=$(strings "$STAGE/libc-6.so" | sed -n 's/^GNU C Library \(.*\)\.$/\1/p' | head -1)
"$PY" - "$STAGE" "$PATCH_REPORT" "$GLIBC" "$ET_VERSION" <<'EOF'
import json, os, sys
stage, report, glibc, et = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
files = sorted(f for f in os.listdir(stage) if f.endswith(".so"))
launch = {
    "format": "qwen-mobile-android-launch", "version": 1, "abi": "arm64-v8a",
    "about": "How the app starts the native runner from ApplicationInfo.nativeLibraryDir ({libdir}); "
             "protocol: runtime/runner/SERVE.md",
    "argv": ["{libdir}/libld-linux-aarch64.so", "--library-path", "{libdir}", "{libdir}/libqwen_bench.so",
             "--serve", "--bundle", "{bundle}"],
    "optional_args": ["--threads", "{n}", "--no-verify"],
    "env": {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"},
    "notes": ["Start it directly (ProcessBuilder), never through /system/bin/linker64 or a shell.",
              "The app's environment may stay as it is, plus GLIBC_TUNABLES; the checks run it with env -i and only "
              "GLIBC_TUNABLES.",
              "Read stdout line by line; drain stderr (ExecuTorch's log) on its own thread."],
    "glibc": glibc, "executorch": et,
    "seccomp_patched": report,
    "files": {f: os.path.getsize(os.path.join(stage, f)) for f in files},
}
with open(os.path.join(stage, "launch.json"), "w") as out:
    json.dump(launch, out, indent=1)
    out.write("\n")
EOF
rm -rf "$OUT" && mv "$STAGE" "$OUT"
log "done: $(du -sh "$OUT" | cut -f1)"
for f in "$OUT"/*; do printf '%10d %s\n' "$(stat -c %s "$f")" "$f"; done
