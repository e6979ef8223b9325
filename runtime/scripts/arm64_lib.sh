# Shared by check_arm64.sh, package_android.sh and check_android_native.sh (sourced, not run): the Debian tools they
# install, the aarch64 executorch wheel they build against, and the tiny bundle they run. Expects ROOT and PY
# (the interpreter whose toolkit every step uses) to be set by the caller.

# install_missing WHO COMMAND:PACKAGE ...: apt-get the packages whose command is missing (root only; else exit 2).
install_missing() {
  local who=$1 need=() pair
  shift
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "$who: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
    exit 2
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
}

# executorch_aarch64_wheel WHO: sets ET_VERSION and WHEEL_DIR to the C++ parts (headers, libraries, CMake package) of the aarch64
# executorch wheel of the host's version, downloaded once into $QWEN_ARM64_WHEEL_CACHE. Same version as the host
# wheel: the .pte format and kernel names must match what exported the bundle.
executorch_aarch64_wheel() {
  local who=$1 cache=${QWEN_ARM64_WHEEL_CACHE:-$HOME/.cache/qwen_mobile/executorch-aarch64} version
  version=$("$PY" -c 'from importlib.metadata import version; print(version("executorch"))')
  ET_VERSION=$version
  WHEEL_DIR=$cache/$version
  [ -f "$WHEEL_DIR/executorch/lib/cmake/executorch/executorch-config.cmake" ] && return 0
  mkdir -p "$cache/download"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
    -d "$cache/download" "executorch==$version"
  rm -rf "$WHEEL_DIR.partial" && mkdir -p "$WHEEL_DIR.partial"
  "$PY" - "$cache/download" "$WHEEL_DIR.partial" "$version" "$who" <<'PYEOF'
import glob, sys, zipfile
src, dst, ver, who = sys.argv[1:]
wheels = glob.glob(f"{src}/executorch-{ver}-*manylinux*aarch64.whl")
if not wheels:
    sys.exit(f"{who}: no aarch64 wheel for executorch {ver} in {src}")
with zipfile.ZipFile(wheels[0]) as z:
    keep = ("executorch/include/", "executorch/lib/", "executorch/share/")
    z.extractall(dst, [n for n in z.namelist() if n.startswith(keep)])
PYEOF
  rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
}

# tiny_untied_bundle BUILD: prints the path of a small xnnpack-fp32 bundle of the `tiny` preset with its own lm_head
# (a random model with a tied table greedily repeats one token, which would make token comparisons trivial), exported
# once into BUILD/bundles and re-exported when this toolkit no longer reads the cached one (e.g. an older schema).
tiny_untied_bundle() {
  local build=$1 bundle=$1/bundles/tiny-untied-fp32
  if ! bundle_loads "$bundle"; then
    echo "exporting a tiny random model (xnnpack-fp32) into $bundle" >&2
    "$PY" - "$ROOT/models/presets/tiny.json" "$build/bundles/tiny-untied-src" <<'PYEOF'
import json, sys, torch
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
cfg = dict(json.load(open(sys.argv[1])), tie_word_embeddings=False)
torch.manual_seed(0)
Qwen3_5ForCausalLM(Qwen3_5TextConfig(**cfg)).save_pretrained(sys.argv[2])
PYEOF
    mkdir -p "$build"
    # The CLI of the same interpreter as every other step (PYTHON may be a venv other than .venv).
    "$PY" -m qwen_mobile.export.cli export "$build/bundles/tiny-untied-src" --preset xnnpack-fp32 --max-seq-len 128 \
      --out "$bundle" --force --no-progress >"$build/export-tiny.log" 2>&1 \
      || { tail -20 "$build/export-tiny.log" >&2; exit 1; }
  fi
  echo "$bundle"
}

# nano_8da4w_bundle BUILD: prints the path of the shipped nano exported xnnpack-8da4w (trained weights, int8
# activations), exported into BUILD/bundles and re-exported when the shipped weights are newer (a retrained nano) or
# this toolkit no longer reads the cached one.
nano_8da4w_bundle() {
  local build=$1 bundle=$1/bundles/nano-8da4w
  if [ "$ROOT/models/nano/model.safetensors" -nt "$bundle/manifest.json" ] || ! bundle_loads "$bundle"; then
    echo "exporting nano (xnnpack-8da4w) into $bundle" >&2
    mkdir -p "$build"
    "$PY" -m qwen_mobile.export.cli export nano --preset xnnpack-8da4w --max-seq-len 128 --out "$bundle" --force \
      --no-progress >"$build/export-nano.log" 2>&1 || { tail -20 "$build/export-nano.log" >&2; exit 1; }
  fi
  echo "$bundle"
}

# bundle_loads DIR: whether this toolkit reads DIR's manifest (a cached bundle from an older schema does not).
bundle_loads() {
  "$PY" -c 'import sys; from qwen_mobile.runtime.bundle import load_manifest
load_manifest(sys.argv[1])' "$1" 2>/dev/null
}
