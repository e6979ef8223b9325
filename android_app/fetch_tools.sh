#!/usr/bin/env bash
# Idempotently provides the Android build tools this machine can get without Google's servers (see
# /work/shared/mobile-toolchain.md, "Android APK without Gradle"): Debian's aapt/aapt2, zipalign, apksigner, dexdump,
# junit4; API 23's android.jar (libandroid-23-java, sid) and dx (dalvik-exchange, bullseye, the only suite with it),
# fetched through a private apt configuration that leaves the system's sources and dpkg state alone, unpacked (not
# installed) into a cache outside the repository, and checked against pinned SHA-256s.
#
# Usage: source android_app/fetch_tools.sh   (sets ANDROID_JAR, DX_JAR, JUNIT_CP)
#        QWEN_ANDROID_CACHE=/some/dir to move the cache (default /var/cache/qwen_mobile/android, else ~/.cache).
set -euo pipefail

ANDROID_JAR_SHA256=4475aa3fe1fc28bdb87ae6351d6ccff58f344a1b9e2fe685f7a6fee41ba68613
DX_JAR_SHA256=33fa9ae74e3fec5472170bde4e69e96d1fa46408ea4e4c3b657d255ab9199ee5

_qm_cache_default() {
  if mkdir -p /var/cache/qwen_mobile/android 2>/dev/null && [ -w /var/cache/qwen_mobile/android ]; then
    echo /var/cache/qwen_mobile/android
  else
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/qwen_mobile/android"
  fi
}
QWEN_ANDROID_CACHE=${QWEN_ANDROID_CACHE:-$(_qm_cache_default)}
mkdir -p "$QWEN_ANDROID_CACHE"

_qm_need_debs=()
for tool in aapt2 aapt zipalign apksigner dexdump javac keytool zip unzip; do
  command -v "$tool" >/dev/null 2>&1 || _qm_need_debs+=("$tool")
done
[ -f /usr/share/java/junit4.jar ] || _qm_need_debs+=(junit4)
if [ ${#_qm_need_debs[@]} -gt 0 ]; then
  echo "fetch_tools: installing Debian packages for: ${_qm_need_debs[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "fetch_tools: missing ${_qm_need_debs[*]} and not root: apt-get install -y --no-install-recommends aapt zipalign apksigner dexdump default-jdk-headless junit4 zip unzip" >&2
    return 1 2>/dev/null || exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    aapt zipalign apksigner dexdump default-jdk-headless junit4 zip unzip >&2 \
    || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         aapt zipalign apksigner dexdump default-jdk-headless junit4 zip unzip >&2; }
fi

ANDROID_JAR=$QWEN_ANDROID_CACHE/root/usr/share/java/com.android.android-23.jar
DX_JAR=$QWEN_ANDROID_CACHE/root/usr/share/java/com.android.dx-10.0.0.jar

_qm_sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

if ! _qm_sha_ok "$ANDROID_JAR" "$ANDROID_JAR_SHA256" || ! _qm_sha_ok "$DX_JAR" "$DX_JAR_SHA256"; then
  echo "fetch_tools: fetching libandroid-23-java (sid) and dalvik-exchange (bullseye) into $QWEN_ANDROID_CACHE" >&2
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  A=$QWEN_ANDROID_CACHE/apt
  rm -rf "$A" "$QWEN_ANDROID_CACHE/debs" "$QWEN_ANDROID_CACHE/root"
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$QWEN_ANDROID_CACHE/debs"
  : > "$A/status"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$MIRROR" sid "$MIRROR" bullseye > "$A/sources.list"
  cat > "$A/apt.conf" <<CONF
Dir::State "$A"; Dir::State::lists "$A/lists"; Dir::State::status "$A/status"; Dir::Cache "$A/cache";
Dir::Etc::SourceList "$A/sources.list"; Dir::Etc::SourceParts "/nonexistent"; APT::Sandbox::User "root";
CONF
  APT_CONFIG=$A/apt.conf apt-get -q update >&2
  (cd "$QWEN_ANDROID_CACHE/debs" && APT_CONFIG=$A/apt.conf apt-get -q download libandroid-23-java/sid dalvik-exchange/bullseye >&2)
  for d in "$QWEN_ANDROID_CACHE"/debs/*.deb; do dpkg-deb -x "$d" "$QWEN_ANDROID_CACHE/root"; done
  for pair in "$ANDROID_JAR:$ANDROID_JAR_SHA256" "$DX_JAR:$DX_JAR_SHA256"; do
    f=${pair%%:*}; want=${pair##*:}
    [ -f "$f" ] || { echo "fetch_tools: $f missing after unpacking the .debs" >&2; return 1 2>/dev/null || exit 1; }
    got=$(sha256sum "$f" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
      echo "fetch_tools: $f: sha256 $got, pinned $want (the archive changed: check and re-pin)" >&2
      return 1 2>/dev/null || exit 1
    fi
  done
fi

JUNIT_CP=/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar
export ANDROID_JAR DX_JAR JUNIT_CP QWEN_ANDROID_CACHE
