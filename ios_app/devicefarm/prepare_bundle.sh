#!/usr/bin/env bash
# Copy a qwen-mobile bundle into ios_app/DeviceTests/TestBundle, where the device-farm tests look for it, after
# checking its manifest and file hashes with the host runtime (a corrupt bundle would only fail on the farm).
#   prepare_bundle.sh BUNDLE_DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 BUNDLE_DIR" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SRC=$(cd "$1" && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
"$PY" -c "import sys; from qwen_mobile.runtime.bundle import load_manifest; load_manifest(sys.argv[1])" "$SRC"
DEST="$REPO/ios_app/DeviceTests/TestBundle"
rm -rf "$DEST.partial" && cp -R "$SRC" "$DEST.partial"
rm -rf "$DEST" && mv "$DEST.partial" "$DEST"
echo "copied $(du -sh "$DEST" | cut -f1) to $DEST; run xcodegen generate in ios_app/"
