"""Export one source through every recipe and print each bundle file's sha256, so a refactor can prove it changed
no artifact: run it before and after, then `diff` the two JSON files.

    python scripts/artifact_digest.py nano --work /tmp/digest-before > before.json
    python scripts/artifact_digest.py nano --work /tmp/digest-after  > after.json
    diff before.json after.json && echo identical

The manifest is compared as JSON without the fields that say when, with which toolkit version and how fast it was
written (`created_utc`, `toolkit_version`, and at any depth keys ending in `seconds` or naming RSS/PSS/memory); everything
else is compared byte for byte, except what Core ML writes differently on every run: a package's Manifest.json
(random item UUIDs, numbered instead), its model.mlmodel (protobuf maps in no fixed order: re-serialized
deterministically), and a coreml-pte program (the package inside it: compared by its canonical spec and weights). `--rehash` recomputes the digests of
bundles already under --work without exporting again.
The quality gate is off: this checks that the bytes did not move, not that the recipe is good.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

# (name, export flags): each xnnpack preset, the tied table stored twice, and the Core ML recipes.
RECIPES = [
    ("xnnpack-fp32", ["--preset", "xnnpack-fp32"]),
    ("xnnpack-8w", ["--preset", "xnnpack-8w"]),
    ("xnnpack-8da8w", ["--preset", "xnnpack-8da8w"]),
    ("xnnpack-8da4w", ["--preset", "xnnpack-8da4w"]),
    ("xnnpack-4w", ["--preset", "xnnpack-4w"]),
    ("xnnpack-8da4w-twice", ["--preset", "xnnpack-8da4w", "--tied-table", "twice"]),
    ("coreml-fp16", ["--recipe", "coreml", "--qlinear", "fp16"]),
    ("coreml-4w", ["--recipe", "coreml", "--qlinear", "4w"]),
    ("coreml-pte-fp16", ["--recipe", "coreml-pte", "--qlinear", "fp16"]),
]
VOLATILE_MANIFEST_FIELDS = ("created_utc", "toolkit_version")


def _is_volatile(key: str) -> bool:
    return key.endswith("seconds") or any(word in key for word in ("rss", "pss", "memory"))


def _stable(value):
    """The manifest without timings and memory figures, which differ run to run."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not _is_volatile(k)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _without_uuids(data: bytes) -> bytes:
    """An .mlpackage's Manifest.json names its items by fresh random UUIDs: number them in order of appearance."""
    order: dict[bytes, bytes] = {}
    return UUID.sub(lambda m: order.setdefault(m.group(0), b"uuid-%d" % len(order)), data)


def _canonical_mlmodel(data: bytes) -> bytes:
    """A Core ML model spec re-serialized with its protobuf maps (an op's attributes) in key order: coremltools writes
    them in whatever order the dict had, which differs run to run."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(data)
    return spec.SerializeToString(deterministic=True)


def _coreml_pte_content(pte: Path) -> bytes:
    """A coreml-pte program's Core ML model (the delegate's payload), canonical spec plus weights: the .pte's own
    bytes embed the package with its random UUIDs and unordered maps."""
    import tempfile

    from qwen_mobile.export.coreml.pte import extract_coreml_model

    with tempfile.TemporaryDirectory() as tmp:
        package = extract_coreml_model(pte.read_bytes(), Path(tmp))
        parts = [_canonical_mlmodel((package / "Data/com.apple.CoreML/model.mlmodel").read_bytes())]
        parts += [p.read_bytes() for p in sorted((package / "Data/com.apple.CoreML/weights").glob("*"))]
    return b"".join(hashlib.sha256(part).digest() for part in parts)


def file_digests(bundle: Path) -> dict[str, str]:
    digests = {}
    recipe = json.loads((bundle / "manifest.json").read_text())["recipe"]["name"]
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel == "manifest.json":
            manifest = json.loads(path.read_text())
            for field in VOLATILE_MANIFEST_FIELDS:
                manifest.pop(field, None)
            for name, entry in manifest.get("files", {}).items():
                if name.endswith((".mlpackage/Manifest.json", ".mlmodel")) or recipe == "coreml-pte":
                    entry.pop("sha256")  # compared below by content
                    entry.pop("bytes")
            data = json.dumps(_stable(manifest), sort_keys=True).encode()
        elif rel.endswith(".mlpackage/Manifest.json"):
            data = _without_uuids(path.read_bytes())
        elif rel.endswith(".mlmodel"):
            data = _canonical_mlmodel(path.read_bytes())
        elif rel.endswith(".pte") and recipe == "coreml-pte":
            data = _coreml_pte_content(path)
        else:
            data = path.read_bytes()
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="what `qwen-mobile export` takes: an HF folder or 'nano'")
    parser.add_argument("--work", required=True, type=Path, help="folder for the bundles (kept for inspection)")
    parser.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    parser.add_argument("--rehash", action="store_true", help="digest the bundles already under --work; no export")
    args = parser.parse_args()
    cli = Path(sys.executable).with_name("qwen-mobile")
    results = {}
    for name, flags in RECIPES:
        if args.only and name not in args.only:
            continue
        out = args.work / name
        if args.rehash:
            if out.is_dir():
                results[name] = file_digests(out)
            continue
        cmd = [str(cli), "export", args.source, "--out", str(out), "--force", "--no-progress",
               "--quality-gate", "off", *flags]
        print(f"[{name}] {' '.join(cmd)}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-1:]}
            print(done.stderr[-2000:], file=sys.stderr)
            continue
        results[name] = file_digests(out)
    json.dump(results, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
