#!/usr/bin/env bash
# Creates (once) and enters a Debian trixie chroot holding Swift 6 (Debian's swiftlang), because Debian 12 has no
# Swift compiler and trixie's needs a newer glibc than the host's (shared/mobile-toolchain.md, "Swift on Linux").
# The chroot lives outside the repository (2.3 GB) and is reused by every later run.
#
#   swift_chroot.sh ensure                 create the chroot if missing or incomplete (~4 min cold, 0 s warm)
#   swift_chroot.sh run REPO CMD...        run CMD in the chroot with REPO bind-mounted at /src (cwd /src)
#
# Env: QWEN_MOBILE_SWIFT_CHROOT (default /var/cache/qwen_mobile/trixie-swift). Needs root (debootstrap, mount).
set -euo pipefail

ROOT=${QWEN_MOBILE_SWIFT_CHROOT:-/var/cache/qwen_mobile/trixie-swift}
STAMP=$ROOT/.qwen_mobile_swift_ready   # written last, so a half-built chroot is rebuilt, not used

die() { echo "swift_chroot.sh: $*" >&2; exit 1; }

mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

ensure() {
  [ "$(id -u)" = 0 ] || die "must run as root (debootstrap and bind mounts); chroot path $ROOT"
  if [ -f "$STAMP" ]; then return 0; fi
  if ! command -v debootstrap >/dev/null; then
    echo "swift_chroot.sh: installing debootstrap from the host's archive" >&2
    # Other jobs may hold the dpkg lock for a while (CI images install packages in parallel): wait for it.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
      debootstrap >/dev/null
  fi
  # A previous run may have died half-way: start from a clean directory (after releasing any mounts in it).
  if [ -d "$ROOT" ]; then
    umount_all
    rm -rf --one-file-system "$ROOT"
  fi
  local tmp="$ROOT.partial"
  if [ -d "$tmp" ]; then ROOT=$tmp umount_all; rm -rf --one-file-system "$tmp"; fi
  mkdir -p "$(dirname "$ROOT")"
  echo "swift_chroot.sh: debootstrap trixie into $tmp (about 80 s)" >&2
  debootstrap --variant=minbase trixie "$tmp" "$(mirror)" >"$(dirname "$ROOT")/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $(dirname "$ROOT")/debootstrap.log"
  cp /etc/resolv.conf "$tmp/etc/resolv.conf"
  mount --bind /proc "$tmp/proc"
  echo "swift_chroot.sh: apt-get install swiftlang libc6-dev libstdc++-14-dev in the chroot (about 90 s)" >&2
  if ! chroot "$tmp" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends swiftlang libc6-dev libstdc++-14-dev ca-certificates >/dev/null'; then
    umount "$tmp/proc" || true
    die "apt-get install of swiftlang in the chroot failed"
  fi
  # swift finds its runtime libraries through /proc/self/exe, so the check runs with /proc mounted.
  local ok=0
  chroot "$tmp" swift --version >/dev/null 2>&1 || ok=$?
  umount "$tmp/proc"
  [ "$ok" = 0 ] || die "swift does not run in the new chroot $tmp"
  mv "$tmp" "$ROOT"
  date -u +%FT%TZ > "$STAMP"
}

umount_all() {
  # Deepest mount points first.
  local m
  for m in $(awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
}

run() {
  local repo=$1; shift
  [ -f "$STAMP" ] || die "no Swift chroot at $ROOT (run: $0 ensure)"
  repo=$(cd "$repo" && pwd)
  mkdir -p "$ROOT/src"
  # Each run mounts its binds and releases them on return; a crashed run's mounts are replaced, never stacked.
  if ! mountpoint -q "$ROOT/proc"; then mount --bind /proc "$ROOT/proc"; fi
  if ! mountpoint -q "$ROOT/src" || [ "$(stat -c %d:%i "$ROOT/src")" != "$(stat -c %d:%i "$repo")" ]; then
    mountpoint -q "$ROOT/src" && umount "$ROOT/src"
    mount --bind "$repo" "$ROOT/src"
  fi
  local rc=0
  trap 'umount "$ROOT/src" 2>/dev/null; umount "$ROOT/proc" 2>/dev/null' RETURN
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
    QWEN_MOBILE_REPO=/src bash -c 'cd /src && "$@"' bash "$@" || rc=$?
  return $rc
}

case "${1:-}" in
  ensure) ensure ;;
  run) shift; [ $# -ge 2 ] || die "usage: $0 run REPO CMD..."; run "$@" ;;
  umount) umount_all ;;
  *) die "usage: $0 ensure | run REPO CMD... | umount" ;;
esac
