"""Lowering A/B in one process: our shortcuts (lean retraces, forked preprocess) against ExecuTorch's own path.

    python bench/bench_lowering.py --layers 24 --rounds 1 --json out/lowering_0_8b.json      # the 0.8B shape, ~17 min

Builds the 0.8B-shape model (random weights; --layers trims it, --small also shrinks its width) with the 8da4w
recipe, then lowers it with ExecuTorch's own path (sequential preprocess, deep copies, every retrace) and with ours,
each from a fresh `torch.export`. Warm-up costs fall on whichever runs first, so the order alternates between rounds
(ExecuTorch's first in round 0). Exits non-zero unless both give the same bytes. The host's speed drifts over minutes
(bench/README.md), so only the ratio within one round means anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the 0.8B shape to keep (24 = all)")
    ap.add_argument("--small", action="store_true", help="also shrink width and vocabulary (a quick smoke run)")
    ap.add_argument("--rounds", type=int, default=1, help="upstream/ours pairs, alternating order")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from qwen_mobile.export.source import randomize_small_params
    from qwen_mobile.export.lowering import export_methods, lower_to_executorch
    from qwen_mobile.export.quantize import quantize_model
    from qwen_mobile.export.transforms import fuse_projections
    from qwen_mobile.models import Qwen35Config, Qwen35ForCausalLM

    raw = json.loads((Path(__file__).resolve().parent.parent / "models/presets/0_8b.json").read_text())
    raw["num_hidden_layers"] = args.layers
    if args.small:
        raw.update(hidden_size=256, intermediate_size=512, vocab_size=1024)
    model = Qwen35ForCausalLM(Qwen35Config.from_dict(raw), max_seq_len=1024)
    randomize_small_params(model, 0)
    model.eval().requires_grad_(False)
    fuse_projections(model)
    quantize_model(model, "8da4w", "4w", 32)

    runs = []
    for r in range(args.rounds):
        for ours in ((False, True) if r % 2 == 0 else (True, False)):
            programs = export_methods(model, 128)
            t = time.perf_counter()
            et, _ = lower_to_executorch(programs, {"get_max_seq_len": 128}, parallel=ours, share_constants=ours,
                                        lean=ours)
            seconds = time.perf_counter() - t
            digest = hashlib.sha256(et.buffer).hexdigest()
            runs.append({"round": r, "path": "ours" if ours else "executorch", "seconds": round(seconds, 1),
                         "sha256": digest})
            print(f"round {r} {runs[-1]['path']:<11}{seconds:8.1f} s  sha256 {digest[:16]}", flush=True)
            del et, programs
    identical = len({run["sha256"] for run in runs}) == 1
    seconds_of = {(run["round"], run["path"]): run["seconds"] for run in runs}
    ratios = [seconds_of[(r, "executorch")] / seconds_of[(r, "ours")] for r in range(args.rounds)]
    print(f"executorch / ours per round: {', '.join(f'{x:.2f}x' for x in ratios)}; bytes identical: {identical}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"bench": "lowering_ab", "layers": args.layers, "small": args.small,
                                         "runs": runs, "ratios": ratios, "identical": identical}, indent=1))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
