#!/usr/bin/env bash
# Everything about the iOS app that Linux can check (no Mac, Xcode or iPhone here):
#   1. QwenMobileKit, the Core ML / ExecuTorch engines and the app logic build with Swift 6.0.3 (Debian trixie's
#      swiftlang in a chroot cached outside the repo), the engines against Linux stubs of the Apple/ExecuTorch API;
#   2. `swift test`: the XCTest suite, including the vectors shared with Python and Java under tests/apps/vectors/;
#   3. a bench report written by the Swift code validates against runtime/schemas/bench.schema.json (jsonschema);
#   4. tree-sitter-swift syntax check of every Swift file (the SwiftUI views and device tests are not compiled here);
#   5. `swift format lint --strict`;
#   6. project.yml, Info.plist and the entitlements (scripts/check_project.py).
# Run as root (chroot, bind mounts). Measured: 362 s from a fresh clone (chroot 247 s, build 80 s, tests 18 s), 30-60 s warm.
# Env: QWEN_MOBILE_SWIFT_CHROOT (default /var/cache/qwen_mobile/trixie-swift), QWEN_MOBILE_CHECK_VENV (default
# /var/cache/qwen_mobile/ios-check-venv: tree-sitter), PYTHON (default: the repo's .venv/bin/python).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CHROOT_SH="$HERE/scripts/swift_chroot.sh"
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
CHECK_VENV=${QWEN_MOBILE_CHECK_VENV:-/var/cache/qwen_mobile/ios-check-venv}
SWIFT_SOURCES="Package.swift Sources Stubs App Tests DeviceTests"
T0=$(date +%s)
declare -a SUMMARY

step() { echo; echo "== $*"; }
record() { SUMMARY+=("$1"); }
elapsed() { echo $(( $(date +%s) - $1 )); }

[ -x "$PYTHON" ] || { echo "check.sh: no Python at $PYTHON (create the repo's .venv, or set PYTHON)" >&2; exit 2; }

step "Swift chroot"
t=$(date +%s)
"$CHROOT_SH" ensure
record "swift chroot ready ($(elapsed "$t") s): $("$CHROOT_SH" run "$REPO" swift --version 2>/dev/null | head -1)"

step "swift build (QwenMobileKit, engines and app logic against the Linux stubs)"
t=$(date +%s)
"$CHROOT_SH" run "$REPO" bash -c 'cd ios_app && swift build --build-tests 2>&1 | grep -v "^\[" ; exit ${PIPESTATUS[0]}'
record "swift build: all targets and tests ($(elapsed "$t") s)"

step "swift test (XCTest, cross-language vectors)"
t=$(date +%s)
mkdir -p "$HERE/.build/check"
REPORT_IN_CHROOT=/src/ios_app/.build/check/bench_report.json
rm -f "$HERE/.build/check/bench_report.json"
set +e
"$CHROOT_SH" run "$REPO" bash -c "cd ios_app && QWEN_MOBILE_BENCH_OUT=$REPORT_IN_CHROOT swift test 2>&1" \
  > "$HERE/.build/check/swift_test.log"
TEST_RC=$?
set -e
grep -E "error:|Test Suite '.*' (passed|failed)" "$HERE/.build/check/swift_test.log" | grep -v "Selected tests\|All tests\|\.xctest" || true
TEST_LINE=$(grep -E "Executed [0-9]+ tests" "$HERE/.build/check/swift_test.log" | tail -1 | sed 's/^[[:space:]]*//')
record "swift test: ${TEST_LINE:-no summary line} ($(elapsed "$t") s)"
if [ "$TEST_RC" != 0 ]; then
  echo "check.sh: swift test failed; the full log is $HERE/.build/check/swift_test.log" >&2
  echo "$TEST_LINE"
  exit "$TEST_RC"
fi

step "bench report from Swift vs runtime/schemas/bench.schema.json"
"$PYTHON" - "$HERE/.build/check/bench_report.json" "$REPO/runtime/schemas/bench.schema.json" <<'PY'
import json, sys
import jsonschema
report, schema = (json.load(open(p)) for p in sys.argv[1:3])
jsonschema.validate(report, schema)
print(f"bench report valid: producer {report['producer']['name']}, {len(report['results'])} results")
PY
record "bench report written by Swift validates against the bench schema"

step "tree-sitter-swift syntax check"
if ! "$CHECK_VENV/bin/python" -c "import tree_sitter, tree_sitter_swift" 2>/dev/null; then
  python3 -m venv "$CHECK_VENV"
  "$CHECK_VENV/bin/pip" install -q tree-sitter==0.26.1 tree-sitter-swift==0.7.4
fi
# shellcheck disable=SC2086
SYNTAX=$(cd "$HERE" && "$CHECK_VENV/bin/python" scripts/check_swift_syntax.py $SWIFT_SOURCES) || { echo "$SYNTAX"; exit 1; }
echo "$SYNTAX"
record "$(echo "$SYNTAX" | tail -1)"

step "swift format lint --strict"
"$CHROOT_SH" run "$REPO" bash -c "cd ios_app && swift format lint --strict -r $SWIFT_SOURCES"
record "swift format lint --strict: clean ($(cd "$HERE" && find $SWIFT_SOURCES -name '*.swift' | wc -l) files)"

step "project.yml, Info.plist, entitlements"
PROJECT=$("$PYTHON" "$HERE/scripts/check_project.py" "$HERE") || { echo "$PROJECT"; exit 1; }
echo "$PROJECT"
record "$(echo "$PROJECT" | tail -1)"

echo
echo "== ios_app/check.sh summary ($(elapsed "$T0") s)"
for line in "${SUMMARY[@]}"; do echo "  - $line"; done
echo "$TEST_LINE"
exit "$TEST_RC"
