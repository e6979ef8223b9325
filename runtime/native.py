"""Build and check `qwen-bench`, the native runner (runtime/runner/, runtime/README.md "Native runner").

Used by tests/native and runtime/scripts/check_arm64.sh:

* `build_runner(build_dir, executorch_cmake_dir, toolchain=None)` configures runtime/CMakeLists.txt with
  QWEN35_BUILD_RUNNER=ON (host x86-64 against the installed wheel, or a cross toolchain against another wheel);
* `reference(bundle, prompt_ids, gen)` is the same greedy run through Python's `BundleProgram`;
* `compare(...)` holds two runs to the tolerances below.

    python -m qwen_mobile.runtime.native compare --bundle DIR --prompt-ids 1,2,3 --gen 12 \
        --run x86=x86.json:x86.bin --run arm64=arm.json:arm.bin [--python]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RUNTIME_DIR = Path(__file__).resolve().parent

# fp32 bundles: the same program and kernels, only the ISA differs (AVX2 vs NEON, reassociated sums), so logits stay
# within the export gate's bound: 1e-4 x max(1, max|logit|). Measured: 0 (x86 vs Python), 2.7e-7 (aarch64 vs x86).
FP32_LOGIT_TOL = 1e-4
# Quantized bundles: dynamic int8 activation quantization rounds differently in XNNPACK's NEON and AVX kernels, so
# logits move by a few quantization steps. Measured on nano 8da4w: 0.025 with max|logit| 10; tokens identical.
QUANTIZED_LOGIT_TOL = 2e-2


@dataclass
class Run:
    name: str
    tokens: list[int]
    logits: np.ndarray  # [steps, vocab] float32

    @classmethod
    def from_files(cls, name: str, json_path: str | Path, logits_path: str | Path, vocab: int) -> Run:
        out = json.loads(Path(json_path).read_text())
        tokens = out["results"][0]["generated_ids"]
        logits = np.fromfile(logits_path, dtype=np.float32)
        if logits.size % vocab:
            raise ValueError(f"{logits_path}: {logits.size} floats is not a whole number of {vocab}-wide rows")
        return cls(name, tokens, logits.reshape(-1, vocab))


def tolerance(manifest: dict) -> float:
    return FP32_LOGIT_TOL if manifest["recipe"]["qlinear"] == "fp32" else QUANTIZED_LOGIT_TOL


def reference(bundle: str | Path, prompt_ids: list[int], gen: int) -> Run:
    """Greedy generation through Python's BundleProgram: what qwen-bench must reproduce."""
    import torch

    from .contract import PREFILL_METHOD
    from .program import BundleProgram

    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    program = BundleProgram(bundle / manifest["program"]["file"],
                            max_prefill_tokens=manifest["program"]["methods"][PREFILL_METHOD]["max_tokens"],
                            kernel_namespaces=manifest["program"]["kernel_namespaces"])
    logits = program.prefill(list(prompt_ids))
    tokens, rows = [], []
    for k in range(gen):
        rows.append(logits.detach().numpy().astype(np.float32).copy())
        tokens.append(int(torch.argmax(logits)))
        if k == gen - 1:
            break
        logits = program.decode(tokens[-1], len(prompt_ids) + k)
    vocab = manifest["model"]["config"]["vocab_size"]
    return Run("python", tokens, np.stack(rows) if rows else np.zeros((0, vocab), np.float32))


def compare(a: Run, b: Run, tol: float) -> tuple[bool, str]:
    """Tokens identical and every logit within tol x max(1, max|logit|); returns (ok, one-line summary)."""
    if a.logits.shape != b.logits.shape:
        return False, f"{a.name} vs {b.name}: logits shapes differ {a.logits.shape} vs {b.logits.shape}"
    scale = max(1.0, float(np.abs(a.logits).max(initial=0.0)))
    diff = float(np.abs(a.logits - b.logits).max(initial=0.0))
    same = a.tokens == b.tokens
    first = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), None)
    ok = same and diff <= tol * scale
    line = (f"{a.name} vs {b.name}: max |dlogit| {diff:.3g} (bound {tol * scale:.3g}), tokens "
            + ("identical" if same else f"differ from step {first}") + (" OK" if ok else " MISMATCH"))
    return ok, line


def build_runner(build_dir: str | Path, executorch_cmake_dir: str | Path, toolchain: str | Path | None = None,
                 jobs: int = 2) -> Path:
    """Configure and build runtime/ with the runner; returns the qwen-bench path. Raises with the build's tail."""
    from .library import _find_cmake

    cmake = _find_cmake()
    build_dir = Path(build_dir)
    _forget_other_checkouts_build(build_dir)
    configure = [cmake, "-S", str(RUNTIME_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-Dexecutorch_DIR={executorch_cmake_dir}", "-DQWEN35_BUILD_RUNNER=ON"]
    if toolchain:
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={toolchain}")
    for cmd in (configure, [cmake, "--build", str(build_dir), "-j", str(jobs)]):
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode:
            tail = "\n".join(proc.stdout.splitlines()[-40:])
            raise RuntimeError(f"qwen-bench build failed: {' '.join(cmd)}\n{tail}")
    exe = build_dir / "qwen-bench"
    if not exe.exists():
        raise RuntimeError(f"the build finished but {exe} is missing")
    return exe


def _forget_other_checkouts_build(build_dir: Path) -> None:
    """A build folder outside the checkout (a cache shared by clones, as CI's fresh clone meets a developer's) may
    have been configured from another source tree, which CMake refuses to reuse: start that folder over."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith("CMAKE_HOME_DIRECTORY:"):
            configured_from = Path(line.split("=", 1)[1])
            if configured_from.resolve() != RUNTIME_DIR.resolve():
                shutil.rmtree(build_dir)
            return


def host_executorch_cmake_dir() -> Path:
    import executorch

    return Path(list(executorch.__path__)[0]) / "lib" / "cmake" / "executorch"


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_mobile.runtime.native")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare qwen-bench runs with each other and with Python")
    c.add_argument("--bundle", required=True)
    c.add_argument("--prompt-ids", required=True, help="the ids the runs were given")
    c.add_argument("--gen", type=int, required=True)
    c.add_argument("--run", action="append", default=[], metavar="NAME=OUT.json:LOGITS.bin",
                   help="a qwen-bench run (--json and --dump-logits files); the first is the baseline")
    c.add_argument("--python", action="store_true", help="also compare every run with Python's BundleProgram")
    args = parser.parse_args(argv)

    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    vocab = manifest["model"]["config"]["vocab_size"]
    tol = tolerance(manifest)
    runs = []
    for spec in args.run:
        name, _, files = spec.partition("=")
        js, _, bins = files.partition(":")
        if not (name and js and bins):
            parser.error(f"--run {spec!r}: expected NAME=OUT.json:LOGITS.bin")
        runs.append(Run.from_files(name, js, bins, vocab))
    if args.python:
        ids = [int(x) for x in args.prompt_ids.split(",")]
        runs.insert(0, reference(args.bundle, ids, args.gen))
    if len(runs) < 2:
        parser.error("need at least two runs to compare (pass --run twice, or --run and --python)")
    ok = True
    for other in runs[1:]:
        good, line = compare(runs[0], other, tol)
        print(line)
        ok &= good
    if len(runs) > 2 and runs[0].name == "python":
        # The cross-architecture pair as well, the one the issue names.
        good, line = compare(runs[1], runs[2], tol)
        print(line)
        ok &= good
    for r in runs:
        print(f"  {r.name}: {len(r.tokens)} tokens {r.tokens[:12]}{' ...' if len(r.tokens) > 12 else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_main())
