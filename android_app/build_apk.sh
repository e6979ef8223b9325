#!/usr/bin/env bash
# Builds the sample app's APK with Debian's tools, no Gradle (android_app/README.md, "Build"):
# aapt2 compile/link against API 23's android.jar, javac (Java 8, no lambdas), dx, zip, zipalign, apksigner with a
# throwaway key. The native payload (lib/arm64-v8a: the qwen-bench runner, its libraries, glibc and its loader) comes
# from runtime/scripts/package_android.sh.
#
#   bash android_app/build_apk.sh OUT.apk                 # with the native runner (package_android.sh must exist)
#   bash android_app/build_apk.sh OUT.apk --no-native     # UI and logic only: the app cannot run a model
#   bash android_app/build_apk.sh OUT.apk --native-dir D  # use an already packaged lib/arm64-v8a folder D
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
case "$OUT" in -h|--help) usage;; esac
[[ "$OUT" == *.apk ]] || { echo "build_apk.sh: OUT must end in .apk, got '$OUT'" >&2; exit 2; }
NATIVE=auto; NATIVE_DIR=
while [ $# -gt 0 ]; do
  case "$1" in
    --no-native) NATIVE=none;;
    --native-dir) NATIVE=dir; NATIVE_DIR=${2:?--native-dir needs a folder}; shift;;
    *) echo "build_apk.sh: unknown option '$1'" >&2; usage;;
  esac
  shift
done

APP=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$APP/.." && pwd)
OUT=$(mkdir -p "$(dirname "$OUT")" && cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
# shellcheck source=fetch_tools.sh
source "$APP/fetch_tools.sh"
B=${QWEN_ANDROID_BUILD:-$APP/build}
rm -rf "$B/gen" "$B/classes" "$B/assets" "$B/apkroot" "$B"/*.apk "$B/classes.dex" "$B/res.zip"
mkdir -p "$B/gen" "$B/classes" "$B/assets" "$B/apkroot/lib/arm64-v8a"
T0=$(date +%s)

# ---- native payload --------------------------------------------------------------------------------------------
LIBS="$B/apkroot/lib/arm64-v8a"
case $NATIVE in
  auto)
    PKG=$REPO/runtime/scripts/package_android.sh
    if [ ! -f "$PKG" ]; then
      echo "build_apk.sh: $PKG does not exist yet, so there is no native runner to package." >&2
      echo "  Pass --no-native to build the APK without it (the app then cannot run a model), or --native-dir DIR." >&2
      exit 1
    fi
    echo "== native payload: $PKG"
    bash "$PKG" "$B/native"
    NATIVE_DIR=$B/native;;
  dir)
    [ -d "$NATIVE_DIR" ] || { echo "build_apk.sh: --native-dir $NATIVE_DIR is not a folder" >&2; exit 1; };;
  none)
    echo "== WARNING: --no-native: the APK has no lib/arm64-v8a runner; it lists bundles but cannot run them" >&2;;
esac
if [ "$NATIVE" != none ]; then
  # Only lib*.so files go to lib/arm64-v8a (nothing else is extracted); launch.json, the command line the payload
  # expects, travels as an asset and check.sh compares it with the app's RunnerCommand.
  cp -a "$NATIVE_DIR"/lib*.so "$LIBS/"
  [ -f "$NATIVE_DIR/launch.json" ] && cp "$NATIVE_DIR/launch.json" "$B/assets/"
  for f in libld-linux-aarch64.so libqwen_bench.so; do
    [ -f "$LIBS/$f" ] || { echo "build_apk.sh: the native payload lacks $f (the app starts the runner through it)" >&2; exit 1; }
  done
fi

# ---- resources, code, dex ----------------------------------------------------------------------------------------
cp "$REPO/runtime/schemas/manifest.schema.json" "$B/assets/"
aapt2 compile --dir "$APP/res" -o "$B/res.zip"
aapt2 link -I "$ANDROID_JAR" --manifest "$APP/AndroidManifest.xml" --min-sdk-version 23 --target-sdk-version 34 \
  -A "$B/assets" --java "$B/gen" -o "$B/base.apk" "$B/res.zip" 2> >(grep -v 'resources.arsc' >&2 || true)
javac -source 8 -target 8 -bootclasspath "$ANDROID_JAR" -Xlint:-options -encoding UTF-8 -d "$B/classes" \
  $(find "$APP/src" "$B/gen" -name '*.java')
java -cp "$DX_JAR" com.android.dx.command.Main --dex --min-sdk-version=23 --output="$B/classes.dex" "$B/classes"

# ---- assemble, align, sign -----------------------------------------------------------------------------------------
cp "$B/base.apk" "$B/unaligned.apk"
(cd "$B" && zip -q -j unaligned.apk classes.dex)
if [ "$NATIVE" != none ]; then
  # Stored, not deflated: extractNativeLibs=true would cope, but stored libraries also map straight from the APK.
  (cd "$B/apkroot" && zip -q -0 -r -D ../unaligned.apk lib)
fi
zipalign -f -p 4 "$B/unaligned.apk" "$B/aligned.apk"
KS=$QWEN_ANDROID_CACHE/throwaway-debug.keystore
if [ ! -f "$KS" ]; then
  keytool -genkeypair -keystore "$KS" -storepass android -keypass android -alias androiddebugkey -keyalg RSA \
    -keysize 2048 -validity 10000 -dname "CN=qwen-mobile throwaway debug key,O=qwen-mobile,C=US" >/dev/null 2>&1
fi
apksigner sign --ks "$KS" --ks-pass pass:android --key-pass pass:android --out "$B/signed.apk" "$B/aligned.apk"
mv "$B/signed.apk" "$OUT"
echo "== $OUT: $(stat -c %s "$OUT") bytes, native payload: $NATIVE, built in $(( $(date +%s) - T0 )) s"
