#!/usr/bin/env bash
# What can be proven about the Android app on this machine (CI runs it after pytest; it assumes .venv exists only for
# nothing: Java and the Debian tools are enough): install the tools idempotently, build the APK, verify its signature,
# alignment and badging, run the JUnit suite of the pure-Java logic, and run the native payload's checks on the APK's
# unzipped lib/arm64-v8a when runtime/scripts has them. Ends with `N passed, N failed` for the JUnit totals.
set -euo pipefail
APP=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$APP/.." && pwd)
T0=$(date +%s)
# shellcheck source=fetch_tools.sh
source "$APP/fetch_tools.sh"
W=${QWEN_ANDROID_CHECK_DIR:-$APP/build/check}
rm -rf "$W" && mkdir -p "$W"
APK=$W/qwen-mobile.apk
SUMMARY=()
fail() { echo "check.sh: FAIL: $*" >&2; exit 1; }

# ---- build ---------------------------------------------------------------------------------------------------------
if [ -f "$REPO/runtime/scripts/package_android.sh" ]; then
  bash "$APP/build_apk.sh" "$APK"
  NATIVE=yes
else
  echo "check.sh: runtime/scripts/package_android.sh is not in this tree: building WITHOUT the native runner" >&2
  bash "$APP/build_apk.sh" "$APK" --no-native
  NATIVE=no
fi
SUMMARY+=("apk: $APK, $(stat -c %s "$APK") bytes, native runner: $NATIVE")

# ---- signature, alignment, badging ---------------------------------------------------------------------------------
apksigner verify --verbose "$APK" > "$W/verify.txt" || fail "apksigner verify: $(cat "$W/verify.txt")"
grep -q "Verified using v2 scheme (APK Signature Scheme v2): true" "$W/verify.txt" || fail "no v2 signature"
SUMMARY+=("apksigner verify: ok ($(grep -c ': true' "$W/verify.txt") schemes)")
zipalign -c 4 "$APK" || fail "zipalign -c 4"
SUMMARY+=("zipalign -c 4: ok")
aapt dump badging "$APK" > "$W/badging.txt"
need() { grep -qF "$1" "$W/badging.txt" || fail "badging lacks: $1 (see $W/badging.txt)"; }
need "package: name='org.qwenmobile.app'"
need "sdkVersion:'23'"
need "targetSdkVersion:'34'"
need "launchable-activity: name='org.qwenmobile.app.MainActivity'"
need "uses-permission: name='android.permission.WAKE_LOCK'"
if [ "$NATIVE" = yes ]; then need "native-code: 'arm64-v8a'"; fi
aapt dump xmltree "$APK" AndroidManifest.xml > "$W/manifest-tree.txt"
grep -q 'com.google.intent.action.TEST_LOOP' "$W/manifest-tree.txt" || fail "no Game Loop intent filter"
grep -q 'extractNativeLibs.*=(type 0x12)0xffffffff' "$W/manifest-tree.txt" || fail "extractNativeLibs is not true"
# Through a file: with pipefail, grep -q leaving early would SIGPIPE unzip and fail the check at random.
unzip -v "$APK" > "$W/unzip-v.txt"
grep -q 'Stored.*resources.arsc' "$W/unzip-v.txt" || fail "resources.arsc is compressed (targetSdk >= 30 refuses it)"
SUMMARY+=("badging: $(grep -E "^(package|launchable-activity|native-code)" "$W/badging.txt" | tr '\n' ' ')")

# ---- JUnit ---------------------------------------------------------------------------------------------------------
mkdir -p "$W/test-classes"
javac -nowarn -source 8 -target 8 -Xlint:-options -encoding UTF-8 -cp "$JUNIT_CP" -d "$W/test-classes" \
  $(find "$APP/src/org/qwenmobile/core" "$APP/test" -name '*.java')
TESTS=$(cd "$APP/test" && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
set +e
(cd "$REPO" && java -Dqwen.repo="$REPO" -cp "$W/test-classes:$JUNIT_CP" org.junit.runner.JUnitCore $TESTS) \
  > "$W/junit.txt" 2>&1
JUNIT_RC=$?
set -e
if grep -q '^OK (' "$W/junit.txt"; then
  RUN=$(sed -n 's/^OK (\([0-9]*\) tests\{0,1\})$/\1/p' "$W/junit.txt"); FAILED=0
else
  RUN=$(sed -n 's/^Tests run: \([0-9]*\), *Failures: \([0-9]*\)$/\1/p' "$W/junit.txt")
  FAILED=$(sed -n 's/^Tests run: \([0-9]*\), *Failures: \([0-9]*\)$/\2/p' "$W/junit.txt")
  cat "$W/junit.txt" >&2
fi
[ -n "$RUN" ] || { cat "$W/junit.txt" >&2; fail "could not read the JUnit totals"; }
PASSED=$((RUN - FAILED))
SUMMARY+=("junit: $(echo $TESTS | wc -w) classes, $RUN tests")

# ---- native payload checks -------------------------------------------------------------------------------------------
NATIVE_CHECK=$REPO/runtime/scripts/check_android_native.sh
NATIVE_FAILED=0
if [ "$NATIVE" = yes ]; then
  mkdir -p "$W/unzipped"
  (cd "$W/unzipped" && unzip -q "$APK" 'lib/*' 'assets/launch.json')
  LIBDIR=$W/unzipped/lib/arm64-v8a
  cp "$W/unzipped/assets/launch.json" "$LIBDIR/"
  # The app's launch line (RunnerCommand) must be the one the payload was packaged and is checked for.
  (cd "$W/test-classes" && java org.qwenmobile.core.RunnerCommand "{libdir}" "{bundle}") > "$W/app-launch.json"
  python3 - "$LIBDIR/launch.json" "$W/app-launch.json" <<'PY' || fail "the app's launch line differs from launch.json"
import json, sys
packaged, app = (json.load(open(p)) for p in sys.argv[1:])
assert packaged["argv"] == app["argv"], (packaged["argv"], app["argv"])
assert packaged["env"] == app["env"], (packaged["env"], app["env"])
PY
  SUMMARY+=("launch line: the app's RunnerCommand equals the APK's launch.json (argv and env)")
  if [ -f "$NATIVE_CHECK" ]; then
    if bash "$NATIVE_CHECK" "$LIBDIR"; then
      SUMMARY+=("native checks (check_android_native.sh) on the APK's unzipped lib/arm64-v8a: ok")
    else
      NATIVE_FAILED=1
      SUMMARY+=("native checks (check_android_native.sh) on the APK's unzipped lib/arm64-v8a: FAILED (output above)")
    fi
  else
    SUMMARY+=("native checks: NOT RUN (no runtime/scripts/check_android_native.sh in this tree)")
  fi
else
  SUMMARY+=("native checks: NOT RUN (the APK has no native runner)")
fi

echo
echo "== android_app/check.sh summary ($(( $(date +%s) - T0 )) s)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "$PASSED passed, $FAILED failed"
[ "$JUNIT_RC" = 0 ] && [ "$FAILED" = 0 ] && [ "$NATIVE_FAILED" = 0 ]
