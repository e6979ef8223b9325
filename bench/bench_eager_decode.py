"""Eager decode speed of our model vs transformers, same random weights, same process.

    python bench/bench_eager_decode.py --preset 0_8b --json out/eager_decode_0_8b.json

Random weights in the preset's real shape go through the real path: transformers' model -> save_pretrained ->
our loader. Each decoder prefills the same prompt, then decodes `--steps` tokens one at a time (transformers with
its DynamicCache, ours with its static state). Reports the median per-token time and ratios against transformers.
Speed on this machine says nothing about a phone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def hf_model_for_preset(preset: str):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    from qwen_mobile.models.config import PRESETS_DIR

    raw = json.loads((PRESETS_DIR / f"{preset}.json").read_text())
    raw.pop("model_type")
    raw.pop("full_attention_interval", None)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**raw))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(1, 16)))
            elif name.endswith("dt_bias") or name.endswith("linear_attn.norm.weight"):
                p.fill_(1.0)
            elif "norm" in name:
                p.zero_()
    model.tie_weights()
    # to_empty leaves rotary inv_freq uninitialised; recompute it from the config.
    rope = model.model.rotary_emb
    inv_freq, _ = rope.compute_default_rope_parameters(model.config)
    rope.inv_freq.copy_(inv_freq)
    rope.original_inv_freq.copy_(inv_freq)
    return model.eval()


@torch.no_grad()
def time_transformers(model, prompt: torch.Tensor, steps: int) -> tuple[float, list[float]]:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    t0 = time.perf_counter()
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    prefill = time.perf_counter() - t0
    nxt = out.logits[:, -1:].argmax(-1)
    per_token = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        per_token.append(time.perf_counter() - t0)
    return prefill, per_token


@torch.no_grad()
def time_ours(model, prompt: torch.Tensor, steps: int) -> tuple[float, list[float]]:
    model.reset()
    n = prompt.shape[1]
    t0 = time.perf_counter()
    logits = model(prompt, torch.arange(n))
    prefill = time.perf_counter() - t0
    nxt = logits[:, -1:].argmax(-1)
    per_token = []
    for i in range(steps):
        t0 = time.perf_counter()
        logits = model(nxt, torch.tensor([n + i]))
        nxt = logits[:, -1:].argmax(-1)
        per_token.append(time.perf_counter() - t0)
    return prefill, per_token


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="0_8b")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=512, help="our static cache length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impls", default="reference,op", help="our gated-delta implementations to time")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from qwen_mobile.models import Qwen35ForCausalLM

    print(f"building random {args.preset} weights ...", file=sys.stderr)
    hf = hf_model_for_preset(args.preset)
    prompt = torch.randint(0, hf.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        for impl in [s for s in args.impls.split(",") if s]:
            ours = Qwen35ForCausalLM.from_pretrained(tmp, max_seq_len=args.max_seq_len, gdn_impl=impl)
            time_ours(ours, prompt[:, :8], 2)  # warm-up
            prefill, per = time_ours(ours, prompt, args.steps)
            results[f"ours-{impl}"] = (prefill, per)
            del ours
    time_transformers(hf, prompt[:, :8], 2)
    results["transformers"] = time_transformers(hf, prompt, args.steps)

    base = statistics.median(results["transformers"][1])
    rows = []
    print(f"\n{args.preset}, fp32, {args.threads} threads, prompt {args.prompt_len}, {args.steps} decode steps")
    print(f"{'decoder':<18} {'prefill tok/s':>14} {'decode tok/s':>13} {'p10':>7} {'p90':>7} {'vs transformers':>16}")
    for name, (prefill, per) in results.items():
        med = statistics.median(per)
        q = statistics.quantiles(per, n=10)
        row = dict(decoder=name, prefill_tok_s=args.prompt_len / prefill, decode_tok_s=1 / med,
                   decode_tok_s_p10=1 / q[-1], decode_tok_s_p90=1 / q[0], decode_speedup_vs_transformers=base / med,
                   per_token_s=per)
        rows.append(row)
        print(f"{name:<18} {row['prefill_tok_s']:>14.1f} {row['decode_tok_s']:>13.2f} {row['decode_tok_s_p10']:>7.2f} "
              f"{row['decode_tok_s_p90']:>7.2f} {row['decode_speedup_vs_transformers']:>15.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(bench="eager_decode", preset=args.preset, threads=args.threads,
                                             prompt_len=args.prompt_len, steps=args.steps,
                                             max_seq_len=args.max_seq_len, host=platform.node(),
                                             cpu_count=os.cpu_count(), torch=torch.__version__, results=rows),
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
