"""Run the selected peers on one random checkpoint, print a table with ratios, write JSON.

    python -m bench.peers.run_peers --preset tiny --json out/peers_tiny.json                 # ~10 min loaded
    nice -n 10 python -m bench.peers.run_peers --preset 0_8b --json out/peers_0_8b.json      # ~45 min, 11 GB peak

From the repo root (the package uses relative imports). The checkpoint is written once per preset/seed under
/tmp and reused; artifacts go to --work (GBs; never inside the repo). Each export step and each host run is a
separate process, so its wall time and peak RSS are its own. The JSON is rewritten after every peer, so a
partial run still leaves numbers.

For the main benchmark (bench/bench_export.py):

    from peers import run_peers, common          # script in bench/; or `from bench.peers import ...` at repo root
    peer_results = run_peers.run_peers(ckpt_dir, peers=("llamacpp", "upstream_executorch"))
    ours = common.PeerResult("qwen_mobile", "xnnpack_fp32", size_bytes=..., prefill_tok_s={"128": ...}, ...)
    print(common.format_table([ours, *peer_results], baseline=ours))
    common.ratios([ours, *peer_results], ours)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from . import llamacpp, upstream_executorch
from .common import PeerResult, format_table, ratios, versions
from .random_checkpoint import ensure_random_checkpoint

PEERS = ("llamacpp", "upstream_executorch")


def run_peers(checkpoint: Path, *, peers: Sequence[str] = PEERS, work: Path | None = None,
              et_variants: Sequence[str] = ("fp32",), lc_ftypes: Sequence[str] = ("q4_0",), lc_bf16: bool = False,
              prefill: Sequence[int] = (128, 512), et_decode: int = 32, lc_decode: int = 64, threads: int = 2,
              nice: int = 10, keep_artifacts: bool = True, sdist: Path | None = None,
              on_result=None) -> list[PeerResult]:
    """Measure each selected peer on `checkpoint` (an HF folder from random_checkpoint.py); in order given."""
    checkpoint = Path(checkpoint)
    work = Path(work or f"/tmp/qwen_mobile_peers/{checkpoint.name}")
    preset = None
    stamp = checkpoint / "random_checkpoint.json"
    if stamp.exists():
        preset = json.loads(stamp.read_text()).get("preset")
    results: list[PeerResult] = []
    for peer in peers:
        t0 = time.perf_counter()
        if peer == "llamacpp":
            rs = llamacpp.bench(checkpoint, work / "llamacpp", lc_ftypes, prefill=prefill, decode_steps=lc_decode,
                                threads=threads, nice=nice, sdist=sdist, keep_gguf=keep_artifacts, run_bf16=lc_bf16)
        elif peer == "upstream_executorch":
            rs = upstream_executorch.bench(checkpoint, work / "upstream_et", et_variants, prefill=prefill,
                                           decode_steps=et_decode, threads=threads, nice=nice, keep_pte=keep_artifacts)
        else:
            raise ValueError(f"unknown peer {peer!r}; known: {PEERS}")
        for r in rs:
            r.preset = preset
            r.notes.append(f"peer wall time incl. runs: {time.perf_counter() - t0:.0f}s")
        results.extend(rs)
        if on_result:
            on_result(results)
    return results


def pick_baseline(results: Sequence[PeerResult], spec: str | None) -> PeerResult | None:
    ok = [r for r in results if not r.error]
    if spec:
        for r in results:
            if f"{r.peer}:{r.variant}" == spec:
                return r
        raise SystemExit(f"baseline {spec!r} not among {[f'{r.peer}:{r.variant}' for r in results]}")
    for r in ok:
        if r.peer == "upstream_executorch" and r.variant == "fp32":
            return r
    return ok[0] if ok else None


def report(results: Sequence[PeerResult], baseline: PeerResult | None, checkpoint: Path) -> dict:
    return {
        "schema": 1,
        "checkpoint": str(checkpoint),
        "preset": results[0].preset if results else None,
        "host": versions("executorch", "torch", "torchao", "transformers", "llama-cpp-python", "gguf"),
        "baseline": f"{baseline.peer}:{baseline.variant}" if baseline else None,
        "results": [r.to_dict() for r in results],
        "ratios": ratios(results, baseline) if baseline else {},
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="qwen-mobile export benchmark: peers (upstream ExecuTorch, llama.cpp)")
    ap.add_argument("--preset", default="tiny", help="models/presets name; the checkpoint is made if missing")
    ap.add_argument("--checkpoint", default=None, help="existing HF folder (default /tmp/qwen35_rand_<preset>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="artifacts folder (default /tmp/qwen_mobile_peers/<ckpt name>)")
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--et-variants", nargs="+", default=["fp32"], choices=list(upstream_executorch.VARIANTS))
    ap.add_argument("--lc-ftypes", nargs="+", default=["q4_0"])
    ap.add_argument("--lc-bf16", action="store_true", help="also run llama.cpp on the unquantized bf16 GGUF")
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--et-decode", type=int, default=32)
    ap.add_argument("--lc-decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nice", type=int, default=10, help="niceness added to export/convert children")
    ap.add_argument("--sdist", default=None, help="llama-cpp-python sdist to take the converter from")
    ap.add_argument("--delete-artifacts", action="store_true")
    ap.add_argument("--baseline", default=None, help="peer:variant for ratios (default upstream_executorch:fp32)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    ckpt = Path(a.checkpoint) if a.checkpoint else ensure_random_checkpoint(
        a.preset, f"/tmp/qwen35_rand_{a.preset}", seed=a.seed)

    def save(results):
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(report(results, pick_baseline(results, None), ckpt), indent=2))

    results = run_peers(ckpt, peers=a.peers, work=Path(a.work) if a.work else None, et_variants=a.et_variants,
                        lc_ftypes=a.lc_ftypes, lc_bf16=a.lc_bf16, prefill=a.prefill, et_decode=a.et_decode,
                        lc_decode=a.lc_decode, threads=a.threads, nice=a.nice, keep_artifacts=not a.delete_artifacts,
                        sdist=Path(a.sdist) if a.sdist else None, on_result=save)
    base = pick_baseline(results, a.baseline)
    print(format_table(results, baseline=base))
    for r in results:
        if r.error:
            print(f"{r.peer}:{r.variant} ERROR: {r.error[-800:]}")
    if a.json:
        Path(a.json).write_text(json.dumps(report(results, base, ckpt), indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
