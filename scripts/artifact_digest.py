"""Export one source through every recipe and print each bundle file's sha256, so a refactor can prove it changed
no artifact: run it before and after, then `diff` the two JSON files.

    python scripts/artifact_digest.py nano --work /tmp/digest-before > before.json
    python scripts/artifact_digest.py nano --work /tmp/digest-after  > after.json
    diff before.json after.json && echo identical

The manifest is compared as JSON without the fields that say when, with which toolkit version and how fast it was
written (`created_utc`, `toolkit_version`, and at any depth keys ending in `seconds` or naming RSS/PSS/memory); everything
else is compared byte for byte, except Core ML models: coremltools writes random item UUIDs and protobuf maps in no
fixed order, so a package (or the one inside a coreml-pte program) is compared as a graph: every op hashed from its
type, constant values and inputs, order and names ignored (`_graph_digest`). Same ops on the same constants wired the
same way compare equal; that is what "the package did not change" can mean for Core ML. `--rehash` recomputes the digests of
bundles already under --work without exporting again.
The quality gate is off: this checks that the bytes did not move, not that the recipe is good.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def _value_hash(value) -> str:
    import numpy as np

    array = np.asarray(value)
    return hashlib.sha256(array.tobytes() + str(array.dtype).encode() + str(array.shape).encode()).hexdigest()


def _graph_digest(package: Path) -> bytes:
    """A Core ML package's MIL program as a graph, independent of op order and names: each op hashed from its type,
    its constant values and the hashes of the ops it reads (a Merkle hash), one sorted multiset per function, plus the
    functions' outputs. Constants' values are inside the hashes, so the weights file's layout does not matter."""
    from qwen_mobile.export.coreml.evaluator import MILModel

    program = MILModel(package)
    digest = hashlib.sha256()
    for name in sorted(program.functions):
        function, seen, ops = program.functions[name], {}, []
        for input_name, var in function.inputs.items():
            seen[var.name] = f"input:{input_name}"
        for op in function.operations:
            parts = [op.op_type]
            for key, value in sorted(op.inputs.items()):
                for var in value if isinstance(value, (list, tuple)) else [value]:
                    parts.append(f"{key}=" + (seen[var.name] if var.name in seen else
                                              "const:" + _value_hash(var.val) if var.val is not None else "?"))
            if op.op_type == "const":
                parts.append(_value_hash(op.outputs[0].val))
            op_hash = hashlib.sha256("|".join(parts).encode()).hexdigest()
            ops.append(op_hash)
            for i, out in enumerate(op.outputs):
                seen[out.name] = f"{op_hash}:{i}"
        digest.update(f"{name}:{sorted(ops)}:{[seen[v.name] for v in function.outputs]}".encode())
    return digest.digest()


def _coreml_pte_content(pte: Path) -> bytes:
    """A coreml-pte program's Core ML model (the delegate's payload), as a graph (_graph_digest)."""
    import tempfile

    from qwen_mobile.export.coreml.pte import extract_coreml_model

    with tempfile.TemporaryDirectory() as tmp:
        return _graph_digest(extract_coreml_model(pte.read_bytes(), Path(tmp)))


def file_digests(bundle: Path) -> dict[str, str]:
    digests = {}
    recipe = json.loads((bundle / "manifest.json").read_text())["recipe"]["name"]
    packages = sorted(p for p in bundle.glob("*.mlpackage") if p.is_dir())
    for package in packages:
        digests[f"{package.name} (graph)"] = hashlib.sha256(_graph_digest(package)).hexdigest()
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel.split("/")[0].endswith(".mlpackage"):
            continue  # compared as a graph above
        if rel == "manifest.json":
            manifest = json.loads(path.read_text())
            for field in VOLATILE_MANIFEST_FIELDS:
                manifest.pop(field, None)
            for name, entry in manifest.get("files", {}).items():
                if name.split("/")[0].endswith(".mlpackage") or recipe == "coreml-pte":
                    entry.pop("sha256")  # compared as a graph
                    entry.pop("bytes")
            if recipe in ("coreml", "coreml-pte"):  # a package's size moves with its op names' lengths
                manifest["export"].pop("conversion", None)
                for package in manifest["program"].get("packages", []):
                    package.pop("bytes", None)
            data = json.dumps(_stable(manifest), sort_keys=True).encode()
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
