#!/usr/bin/env bash
# Checks the Android app's native payload (the folder package_android.sh writes, or an APK's lib/arm64-v8a/ unzipped
# next to that folder's launch.json) under qemu, started exactly as the app starts it:
#
#   runtime/scripts/check_android_native.sh LIB_DIR [BUNDLE_DIR] [--skip-unpatched]
#
# 1. ELF: every lib*.so has no text relocations, a non-executable stack and LOAD segments aligned to >= 16 KB.
# 2. Run: `env -i GLIBC_TUNABLES=glibc.pthread.rseq=0 qemu-aarch64 -strace <launch.json argv>` (the loader, the
#    library folder, libqwen_bench.so --serve --bundle BUNDLE) through a session of requests (greedy and seeded
#    generate, a second turn, save and load, a small bench, quit); its greedy tokens must equal Python's BundleProgram
#    and its sampled tokens Python's Sampler on the same bundle.
# 3. Seccomp: every syscall the guest made (qemu's strace log) must be in the Android app seccomp allowlist of every
#    API level from 23 (no filter before 26) to 35 (android_seccomp/allowlist_api<N>.txt, derived from AOSP bionic).
# 4. Unless --skip-unpatched: the same payload packaged without the seccomp patch (package_android.sh
#    --no-seccomp-patch, into the build folder) must FAIL step 3, naming set_robust_list: the check can fail.
#
# Without BUNDLE_DIR it uses (and exports once, ~1 min) check_arm64.sh's tiny random fp32 bundle. Installs qemu-user
# and the aarch64 cross compiler (for the kernel's syscall numbers) with apt-get when missing (needs root).
# Environment: PYTHON, QWEN_NATIVE_BUILD (as package_android.sh), CHECK_GEN (default 12).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
BUILD=${QWEN_NATIVE_BUILD:-$ROOT/runtime/build-native}
GEN=${CHECK_GEN:-12}
LIB_DIR= ; BUNDLE= ; UNPATCHED=1
for a in "$@"; do
  case "$a" in
    --skip-unpatched) UNPATCHED=0 ;;
    -*) echo "check_android_native: unknown option '$a'" >&2; exit 2 ;;
    *) if [ -z "$LIB_DIR" ]; then LIB_DIR=$a; elif [ -z "$BUNDLE" ]; then BUNDLE=$a;
       else echo "check_android_native: too many arguments" >&2; exit 2; fi ;;
  esac
done
[ -n "$LIB_DIR" ] || { sed -n '2,20p' "$0" >&2; exit 2; }
LIB_DIR=$(cd "$LIB_DIR" && pwd)
[ -f "$LIB_DIR/launch.json" ] || { echo "check_android_native: $LIB_DIR/launch.json missing (package_android.sh writes it)" >&2; exit 2; }
SECCOMP=$ROOT/runtime/scripts/android_seccomp
t0=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - t0 ))"; }

step "tools"
# shellcheck source=arm64_lib.sh
source "$ROOT/runtime/scripts/arm64_lib.sh"
install_missing check_android_native aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu
QEMU=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
if [ -z "$QEMU" ]; then
  install_missing check_android_native qemu-aarch64:qemu-user
  QEMU=$(command -v qemu-aarch64)
fi
echo "emulator: $QEMU ($("$QEMU" --version | head -1))"

status=0
step "ELF checks"
"$PY" "$SECCOMP/check_payload.py" elf "$LIB_DIR" || status=1

[ -n "$BUNDLE" ] || BUNDLE=$(tiny_untied_bundle "$BUILD")
BUNDLE=$(cd "$BUNDLE" && pwd)
OUT=$BUILD/check-android && mkdir -p "$OUT"

# One session of requests through the exact launch line; tokens against Python. Writes the strace log.
run_session() {  # LIB_DIR STRACE_LOG RESULT_JSON
  "$PY" - "$1" "$BUNDLE" "$QEMU" "$2" "$3" "$GEN" "$ROOT/runtime/scripts" <<'EOF'
import json, sys, time
lib, bundle, qemu, log, result, gen, scripts = sys.argv[1:6] + [int(sys.argv[6]), sys.argv[7]]
sys.path.insert(0, scripts)
from serve_client import ServeClient
from qwen_mobile.runtime import native
from qwen_mobile.runtime.sampling import Sampler, SamplingConfig
from qwen_mobile.runtime.session import Bundle

launch = json.load(open(f"{lib}/launch.json"))
argv = [a.replace("{libdir}", lib).replace("{bundle}", bundle) for a in launch["argv"]]
cmd = [qemu, "-strace", "-D", log, *argv]
print("launch: env -i " + " ".join(f"{k}={v}" for k, v in launch["env"].items()) + " " + " ".join(cmd))
manifest = json.load(open(f"{bundle}/manifest.json"))
vocab, stop = manifest["model"]["config"]["vocab_size"], set(manifest["tokenizer"]["stop_ids"])
prompt = [t if t not in stop else (t + 1) % vocab for t in ((7 + 37 * i) % vocab for i in range(24))]
turn2 = [t if t not in stop else (t + 1) % vocab for t in ((11 + 53 * i) % vocab for i in range(6))]
sampling = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=1234)
py = Bundle(bundle)
ok = True
t0 = time.time()
with ServeClient(cmd, env=dict(launch["env"]), timeout=900) as c:
    assert c.ready["event"] == "ready", c.ready
    greedy, _ = c.generate(prompt, gen, stop_at_stop_ids=False)
    ref = native.reference(bundle, prompt, gen).tokens
    print(f"greedy   qemu {greedy}\n         python {ref} " + ("OK" if greedy == ref else "MISMATCH"))
    ok &= greedy == ref
    sampled, _ = c.generate(prompt, gen, stop_at_stop_ids=False, **sampling)
    s = py.session()
    ref_s = s.generate(prompt, gen, Sampler(SamplingConfig(**sampling)), stop_ids=set()).ids
    print(f"sampled  qemu {sampled}\n         python {ref_s} " + ("OK" if sampled == ref_s else "MISMATCH"))
    ok &= sampled == ref_s
    snap = f"{log}.snapshot.safetensors"
    saved = c.request({"op": "save", "path": snap})
    second, _ = c.generate(turn2, gen, stop_at_stop_ids=False, **{"continue": True})
    ref_2 = s.generate(turn2, gen, stop_ids=set()).ids
    loaded = c.request({"op": "load", "path": snap})
    again, _ = c.generate(turn2, gen, stop_at_stop_ids=False, **{"continue": True})
    good = saved["event"] == loaded["event"] == "ok" and second == ref_2 == again
    print(f"turn 2 after the sampled turn {second}, after save/load {again}, python {ref_2} "
          + ("OK" if good else "MISMATCH"))
    ok &= good
    bench = c.request({"op": "bench", "prompt_ids": prompt[:8], "gen": 4, "runs": 1, "warmup": 0})
    good = bench["event"] == "bench" and bench["result"]["device"]["emulated"] is True
    print("bench request: " + ("OK" if good else f"FAILED {bench}"))
    ok &= good
    bye = c.request({"op": "quit"})
    rc = c.close()
    ok &= bye["event"] == "bye" and rc == 0
    print(f"quit: {bye} exit {rc}")
json.dump({"ok": bool(ok), "greedy": greedy, "python_greedy": ref, "sampled": sampled, "python_sampled": ref_s,
           "seconds": round(time.time() - t0, 1)}, open(result, "w"))
sys.exit(0 if ok else 1)
EOF
}

step "run the packaged runner under qemu as the app starts it"
run_session "$LIB_DIR" "$OUT/strace.log" "$OUT/session.json" || status=1

step "syscalls against the app seccomp allowlists (API 23..35)"
"$PY" "$SECCOMP/check_payload.py" syscalls "$OUT/strace.log" --json "$OUT/syscalls.json" || status=1

if [ $UNPATCHED = 1 ]; then
  step "the same payload without the seccomp patch must fail the syscall check"
  UNP=$OUT/unpatched-lib
  "$ROOT/runtime/scripts/package_android.sh" "$UNP" --no-seccomp-patch >/dev/null
  run_session "$UNP" "$OUT/strace-unpatched.log" "$OUT/session-unpatched.json" >/dev/null || status=1
  if "$PY" "$SECCOMP/check_payload.py" syscalls "$OUT/strace-unpatched.log" --json "$OUT/syscalls-unpatched.json" \
      >"$OUT/syscalls-unpatched.txt"; then
    echo "unpatched payload PASSED the syscall check: the check cannot tell (MISMATCH)"; status=1
  elif grep -q "set_robust_list" "$OUT/syscalls-unpatched.txt"; then
    grep -E "^API 2[6-9]|^API 3" "$OUT/syscalls-unpatched.txt" | head -3
    echo "unpatched payload fails the syscall check as it must: OK"
  else
    cat "$OUT/syscalls-unpatched.txt"; echo "unpatched payload failed without naming set_robust_list (MISMATCH)"; status=1
  fi
fi

step "done"
[ $status -eq 0 ] && echo "check_android_native: PASS" || echo "check_android_native: FAIL" >&2
exit $status
