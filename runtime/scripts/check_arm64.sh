#!/usr/bin/env bash
# Builds qwen-bench for x86-64 (against the installed executorch wheel) and for aarch64 (g++-aarch64-linux-gnu
# against the aarch64 executorch wheel from PyPI), runs both on a tiny bundle (the aarch64 one under qemu) and
# compares tokens and logits: aarch64 vs x86 vs Python's BundleProgram. Exits non-zero on any mismatch.
#
#   runtime/scripts/check_arm64.sh [BUNDLE_DIR ...]
#
# Without a bundle it exports two into the build folder once: a random-weight model (the `tiny` preset, untied;
# xnnpack-fp32: the 1e-4 bound) and the shipped nano at xnnpack-8da4w (trained weights, int8 activations: the bound
# from the gate's error and the near-tie rule). Installs g++-aarch64-linux-gnu and qemu-user-static with apt-get
# when missing (needs root). qemu timings are not performance: the JSON it writes says `"emulated": true`.
#
# The comparison (`python -m qwen_mobile.runtime.native compare`) holds each pair to `native.logit_bound`: 1e-4 x
# max(1, max|logit|) for fp32 and weight-only bundles; for 8da4w/8da8w a fraction (0.3, 1.5) of the export gate's
# own error vs fp32 (manifest verification.max_abs_logit_diff), since their int8 activation rounding legitimately
# differs between NEON and AVX kernels. Tokens must be identical or first differ at a near-tie; the logits are
# compared up to that step (runtime/README.md, "How close aarch64 must be to x86-64").
#
# Environment: PYTHON (default .venv/bin/python), QWEN_NATIVE_BUILD (default runtime/build-native, git-ignored),
# QWEN_ARM64_WHEEL_CACHE (default ~/.cache/qwen_mobile/executorch-aarch64), CHECK_GEN (default 12),
# CHECK_PROMPT_LEN (default 24), QEMU_CPU (read by qemu itself; default `max`, with SVE and SME: nano 8da8w fails
# there, its SME path giving wrong logits under qemu 7.2; `cortex-a76` is a typical phone big core).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
BUILD=${QWEN_NATIVE_BUILD:-$ROOT/runtime/build-native}
GEN=${CHECK_GEN:-12}
PROMPT_LEN=${CHECK_PROMPT_LEN:-24}
SYSROOT=/usr/aarch64-linux-gnu
t0=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - t0 ))"; }

step "tools"
# shellcheck source=arm64_lib.sh
source "$ROOT/runtime/scripts/arm64_lib.sh"
install_missing check_arm64 aarch64-linux-gnu-g++:g++-aarch64-linux-gnu
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
if [ -z "$QEMU" ]; then
  install_missing check_arm64 qemu-aarch64-static:qemu-user-static
  QEMU=$(command -v qemu-aarch64-static)
fi
echo "compiler: $(aarch64-linux-gnu-g++ --version | head -1)"
echo "emulator: $QEMU ($("$QEMU" --version | head -1))"

step "aarch64 executorch wheel"
executorch_aarch64_wheel check_arm64
echo "executorch aarch64: $WHEEL_DIR"

step "build x86-64"
native() { "$PY" -c "import sys; from qwen_mobile.runtime import native as n; print($1)" "${@:2}"; }
X86=$(native 'n.build_runner(*sys.argv[1:])' "$BUILD/x86_64" "$(native 'n.host_executorch_cmake_dir()')")
step "build aarch64"
ARM=$(native 'n.build_runner(*sys.argv[1:])' "$BUILD/aarch64" "$WHEEL_DIR/executorch/lib/cmake/executorch" \
  "$ROOT/runtime/cmake/aarch64-linux-gnu.cmake")
file "$ARM" | sed 's/, BuildID.*//'

BUNDLES=("$@")
if [ ${#BUNDLES[@]} -eq 0 ]; then
  step "tiny and nano bundles"
  TINY=$(tiny_untied_bundle "$BUILD")
  NANO=$(nano_8da4w_bundle "$BUILD")
  BUNDLES=("$TINY" "$NANO")
fi

status=0
for B in "${BUNDLES[@]}"; do
  name=$(basename "$B")
  step "run $name"
  OUT=$BUILD/check/$name && mkdir -p "$OUT"
  # A fixed prompt spread over the vocabulary, stop ids stepped over.
  IDS=$("$PY" - "$B" "$PROMPT_LEN" <<'EOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json")); n = int(sys.argv[2]); v = m["model"]["config"]["vocab_size"]
stop = set(m["tokenizer"]["stop_ids"]); ids = [(7 + 37 * i) % v for i in range(n)]
print(",".join(str(t if t not in stop else (t + 1) % v) for t in ids))
EOF
)
  common=(--bundle "$B" --prompt-ids "$IDS" --gen "$GEN" --runs 1 --warmup 0 --no-power)
  "$X86" "${common[@]}" --json "$OUT/x86_64.json" --dump-logits "$OUT/x86_64.bin" 2>"$OUT/x86_64.log" \
    || { tail -5 "$OUT/x86_64.log" >&2; exit 1; }
  "$QEMU" -L "$SYSROOT" "$ARM" "${common[@]}" --json "$OUT/aarch64.json" --dump-logits "$OUT/aarch64.bin" \
    2>"$OUT/aarch64.log" || { tail -5 "$OUT/aarch64.log" >&2; exit 1; }
  # Both outputs are bench-schema JSON, and the emulated one says so.
  "$PY" - "$ROOT/runtime/schemas/bench.schema.json" "$OUT/x86_64.json" "$OUT/aarch64.json" <<'EOF'
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
x86, arm = (json.load(open(p)) for p in sys.argv[2:])
for r in (x86, arm):
    jsonschema.validate(r, schema)
assert arm["device"]["arch"] == "aarch64" and arm["device"]["emulated"] is True, arm["device"]
assert x86["device"]["emulated"] is False, x86["device"]
EOF
  "$PY" -m qwen_mobile.runtime.native compare --bundle "$B" --prompt-ids "$IDS" --gen "$GEN" --python \
    --run "x86_64=$OUT/x86_64.json:$OUT/x86_64.bin" --run "aarch64=$OUT/aarch64.json:$OUT/aarch64.bin" || status=1
done

# The Linux-on-phone / `adb shell` question: the glibc build with its own loader and libraries, run with no cross
# sysroot at all (as on a device without glibc), must give the aarch64 run's logits bit for bit.
step "self-contained glibc package"
PKG=$BUILD/aarch64-glibc-package
"$ROOT/runtime/scripts/package_arm64_glibc.sh" "$BUILD/aarch64" "$WHEEL_DIR/executorch/lib" "$PKG"
env -u QEMU_LD_PREFIX "$QEMU" "$PKG/lib/ld-linux-aarch64.so.1" --library-path "$PKG/lib" "$PKG/bin/qwen-bench" \
  "${common[@]}" --json "$OUT/package.json" --dump-logits "$OUT/package.bin" 2>"$OUT/package.log" \
  || { tail -5 "$OUT/package.log" >&2; exit 1; }
if cmp -s "$OUT/aarch64.bin" "$OUT/package.bin"; then echo "package vs aarch64: logits identical OK"
else echo "package vs aarch64: logits differ MISMATCH"; status=1; fi

# The sampler thread and sysfs reads of the aarch64 build, against a fake tree: a steady 0.5 A at 4.0 V is 2 W idle
# and running, so the baseline-subtracted energy is zero (the arithmetic itself is tested in tests/native).
step "power sampling (aarch64, fake sysfs)"
FAKE=$BUILD/fake-sysfs
rm -rf "$FAKE" && mkdir -p "$FAKE/sys/class/power_supply/battery" "$FAKE/sys/class/thermal/thermal_zone0"
printf 'Battery\n' >"$FAKE/sys/class/power_supply/battery/type"
printf 'Discharging\n' >"$FAKE/sys/class/power_supply/battery/status"
printf -- '-500000\n' >"$FAKE/sys/class/power_supply/battery/current_now"
printf '4000000\n' >"$FAKE/sys/class/power_supply/battery/voltage_now"
printf 'cpu\n' >"$FAKE/sys/class/thermal/thermal_zone0/type"
printf '45000\n' >"$FAKE/sys/class/thermal/thermal_zone0/temp"
"$QEMU" -L "$SYSROOT" "$ARM" --bundle "${BUNDLES[0]}" --prompt-len 8 --gen 4 --runs 3 --warmup 0 --power-root "$FAKE" \
  --power-hz 20 --idle-seconds 0.5 --json "$BUILD/check/power-aarch64.json" 2>"$BUILD/check/power-aarch64.log" \
  || { tail -5 "$BUILD/check/power-aarch64.log" >&2; exit 1; }
"$PY" - "$BUILD/check/power-aarch64.json" <<'EOF' || status=1
import json, sys
e = json.load(open(sys.argv[1]))["energy"]
ok = e and abs(e["idle_power_w"] - 2) < 1e-9 and abs(e["mean_power_w"] - 2) < 1e-9 and abs(e["joules"]) < 1e-9 \
    and "charge_counter" in e["absent_fields"] and any(p["zone"] == "cpu" and p["value"] == 45 for p in e["thermal"])
e = e or {}
print(f"power sampling: idle {e.get('idle_power_w')} W, run {e.get('mean_power_w')} W, net {e.get('joules')} J, "
      f"{e.get('samples')} samples " + ("OK" if ok else "MISMATCH"))
sys.exit(0 if ok else 1)
EOF

step "done"
[ $status -eq 0 ] && echo "check_arm64: PASS" || echo "check_arm64: FAIL" >&2
exit $status
