"""presets, check, generate: the commands that run our eager model on SOURCE (no bundle)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .common import prompt_ids, table, tokenizer_for


def cmd_presets(args) -> int:
    from qwen_mobile.export.parity import describe
    from qwen_mobile.export.source import SHIPPED_MODELS
    from qwen_mobile.models import Qwen35Config, available_presets

    for name in available_presets():
        print(table(list(describe(Qwen35Config.from_preset(name)).items()), title=f"preset {name}"), end="\n\n")
    for name, path in SHIPPED_MODELS.items():
        state = "present" if (path / "config.json").is_file() else "missing"
        print(f"shipped model {name}: {path} ({state})")
    return 0


def cmd_check(args) -> int:
    from qwen_mobile.export.parity import check_against_transformers

    tokenizer = tokenizer_for(args.source)
    ids = prompt_ids(args, tokenizer)
    report = check_against_transformers(args.source, ids, args.new_tokens, gdn_impl=args.gdn_impl)
    ok = report.max_abs_logit_diff <= args.atol and report.greedy_match
    rows = [
        ("source", report.source),
        ("prompt tokens / new tokens", f"{report.prompt_len} / {report.new_tokens}"),
        ("max |logit diff| (prefill)", f"{report.max_abs_logit_diff:.2e} (bound {args.atol:.0e})"),
        ("greedy tokens identical", report.greedy_match),
        ("eager decode tok/s ours", f"{report.decode_tok_s_ours:.1f}"),
        ("eager decode tok/s transformers", f"{report.decode_tok_s_transformers:.1f}"),
        ("result", "PASS" if ok else "FAIL"),
    ]
    print(table(rows, title="qwen-mobile check: our model vs transformers (fp32, eager)"))
    if tokenizer is not None:
        print("\nours:         " + repr(tokenizer.decode(report.greedy_ours)))
        print("transformers: " + repr(tokenizer.decode(report.greedy_transformers)))
    if args.json:
        Path(args.json).write_text(json.dumps(report.__dict__ | {"pass": ok}, indent=2))
    return 0 if ok else 1


def cmd_generate(args) -> int:
    import torch

    from qwen_mobile.export.source import load_model

    tokenizer = tokenizer_for(args.source)
    ids = prompt_ids(args, tokenizer)
    model = load_model(args.source, max_seq_len=len(ids) + args.max_new_tokens, gdn_impl=args.gdn_impl)
    stop = tuple(model.config.eos_token_id)
    model.reset()
    with torch.no_grad():
        out, t_prefill, t_decode = _stream_greedy(
            lambda: model(torch.tensor([ids]), torch.arange(len(ids)))[0, -1],
            lambda token, pos: model(torch.tensor([[token]]), torch.tensor([pos]))[0, -1],
            ids, args.max_new_tokens, stop, tokenizer)
    _print_timings(len(ids), out, t_prefill, t_decode, f"eager {args.gdn_impl}")
    return 0


def _stream_greedy(prefill, step, ids, max_new_tokens, stop_ids, tokenizer):
    """Greedy loop shared by the eager and the bundle paths: prefill() -> logits, step(token, pos) -> logits."""
    if tokenizer is not None:
        print(tokenizer.decode(ids), end="", flush=True)
    t0 = time.perf_counter()
    logits = prefill()
    t_prefill = time.perf_counter() - t0
    out, t1 = [], time.perf_counter()
    for i in range(max_new_tokens):
        token = int(logits.argmax())
        out.append(token)
        if token in stop_ids:
            break
        if tokenizer is not None:
            print(tokenizer.decode([token]), end="", flush=True)
        logits = step(token, len(ids) + i)
    t_decode = time.perf_counter() - t1
    print() if tokenizer is not None else print(",".join(map(str, out)))
    return out, t_prefill, t_decode


def _print_timings(n_prompt, out, t_prefill, t_decode, what):
    print(f"\n[{what}: {n_prompt} prompt tokens in {t_prefill * 1e3:.0f} ms ({n_prompt / t_prefill:.0f} tok/s); "
          f"{len(out)} generated in {t_decode:.2f} s ({len(out) / max(t_decode, 1e-9):.1f} tok/s) on this host]",
          file=sys.stderr)
