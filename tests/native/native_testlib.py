"""Helpers for tests/native: running qwen-bench and reading its output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "runtime" / "schemas" / "bench.schema.json"


def run_bench(exe: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=600)
    if check and proc.returncode:
        raise AssertionError(f"qwen-bench {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def bench_json(exe: Path, out_dir: Path, *args) -> dict:
    out = out_dir / "bench.json"
    run_bench(exe, *args, "--json", out)
    return json.loads(out.read_text())


def validate(result: dict) -> None:
    import jsonschema

    jsonschema.validate(result, json.loads(SCHEMA.read_text()))
