"""Long-horizon drift of the delta-net state layouts: fp16 Core ML states vs fp32 tensors passed in and out.

Each variant is converted to a real package and run by the numpy evaluator: one `prefill` chunk, then `steps` decode
steps teacher-forced on held-out text, against eager fp32 (fp32 caches and state). Reported per variant: logit error
over the first and last 64 steps (growth = drift), top-1 agreement, mean KL, and the final recurrent state's error.

    python -m qwen_mobile.export.coreml.drift --source nano --steps 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# name -> (gdn_layout, keep_gdn_fp32, keep_head_fp32): every variant computes in fp16 except where noted.
VARIANTS = {
    "state-fp16": ("state", False, False),  # three fp16 states, all ops fp16
    "io-fp32-in-out": ("io", False, False),  # state passed as fp32 but cast to fp16 at the graph's entry
    "io-fp32-gdn-fp32": ("io", True, False),  # fp32 state in/out and the delta rule's ops kept fp32
    "state-fp16-gdn-fp32": ("state", True, False),  # fp16 storage between calls, fp32 inside the delta rule
    "io-fp32-in-out-head-fp32": ("io", False, True),  # the default layout with the vocabulary projection in fp32
}
DEFAULT_VARIANTS = ("state-fp16", "io-fp32-in-out", "io-fp32-gdn-fp32", "state-fp16-gdn-fp32")


def held_out_tokens(n: int) -> list[int]:
    """The first n tokens of nano's held-out windows, concatenated."""
    from qwen_mobile.export.source import SHIPPED_MODELS

    held = json.loads((SHIPPED_MODELS["nano"] / "heldout.json").read_text())
    tokens = [t for w in held["windows"] for t in w]
    if len(tokens) < n:
        raise ValueError(f"held-out text has {len(tokens)} tokens, {n} asked")
    return tokens[:n]


@torch.no_grad()
def measure(source: str = "nano", steps: int = 512, prefill_chunk: int = 64, variants=DEFAULT_VARIANTS,
            log=print) -> dict:
    from qwen_mobile.export.source import load_model

    from .convert import build_package
    from .evaluator import MILModel
    from .graph import CoreMLDecoder, state_shapes
    from .runner import CoreMLRunner

    max_seq_len = prefill_chunk + steps + 1
    tokens = held_out_tokens(prefill_chunk + steps + 1)
    model = load_model(source, max_seq_len=max_seq_len, gdn_impl="reference")
    model.reset()
    ref = [model(torch.tensor([tokens[:prefill_chunk]]), torch.arange(prefill_chunk))[0, -1]]
    for i in range(steps):
        pos = prefill_chunk + i
        ref.append(model(torch.tensor([[tokens[pos]]]), torch.tensor([pos]))[0, -1])
    ref = torch.stack(ref)  # [steps+1, vocab]
    ref_state = torch.cat([layer.linear_attn.recurrent_state for layer in model.model.layers
                           if layer.layer_type == "linear_attention"])  # [Lg,Hv,K,V]
    shapes = state_shapes(model.config, max_seq_len)
    results = {"source": source, "steps": steps, "prefill_chunk": prefill_chunk, "variants": {}}
    for name in variants:
        layout, keep_fp32, keep_head = VARIANTS[name]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            pkg = Path(tmp) / "m.mlpackage"
            build_package(CoreMLDecoder(model, layout), pkg, prefill_chunk=prefill_chunk, qlinear="fp16",
                          keep_gdn_fp32=keep_fp32, keep_head_fp32=keep_head)
            mil = MILModel(pkg)
            state = mil.new_state()
            runner = CoreMLRunner(lambda fn, inputs: mil.run(fn, inputs, state), prefill_chunk=prefill_chunk,
                                  gdn_layout=layout, io_shapes={n: shapes[n] for n in ("gdn_conv", "gdn_rec")})
            got = [runner.prefill(tokens[:prefill_chunk], 0)]
            for i in range(steps):
                got.append(runner.decode(tokens[prefill_chunk + i], prefill_chunk + i))
        got = torch.stack(got).float()
        final = torch.from_numpy(np.asarray(runner.io["gdn_rec"] if layout == "io" else state["gdn_rec"],
                                            np.float32))
        err = (got - ref).abs().max(-1).values  # [steps+1]
        log_p, log_q = torch.log_softmax(ref.double(), -1), torch.log_softmax(got.double(), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        results["variants"][name] = {
            "gdn_layout": layout, "gdn_ops_fp32": keep_fp32, "head_fp32": keep_head,
            "max_abs_logit_diff": float(err.max()),
            "mean_max_abs_logit_diff_first64": float(err[1:65].mean()),
            "mean_max_abs_logit_diff_last64": float(err[-64:].mean()),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
            "final_state_rel_err": float((final - ref_state).abs().max() / ref_state.abs().max()),
            "finite": bool(torch.isfinite(got).all()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log(f"{name}: {results['variants'][name]}")
    results["max_abs_logit"] = float(ref.abs().max())
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="nano")
    p.add_argument("--steps", type=int, default=512)
    p.add_argument("--prefill-chunk", type=int, default=64)
    p.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    res = measure(args.source, args.steps, args.prefill_chunk, args.variants)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
