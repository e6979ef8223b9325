"""`qwen-mobile`: a thin argparse layer over the typed functions in qwen_mobile.export.api."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DESCRIPTION = """\
qwen-mobile: Qwen3.5 small models from a local Hugging Face checkpoint to a phone.

SOURCE is a local HF folder (config.json + *.safetensors), the name of the model shipped in models/
('nano'), or a preset name (random weights in a real shape: 0_8b, 2b, 4b, 9b, tiny).
"""


def _table(rows: list[tuple[str, object]], title: str | None = None) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prompt-ids expects comma-separated integers, got {text!r}") from None


def _tokenizer_for(source):
    from qwen_mobile.export.api import resolve_source

    resolved = resolve_source(source)
    path = Path(resolved) / "tokenizer.json" if isinstance(resolved, Path) else None
    if path is None or not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def _prompt_ids(args, tokenizer) -> list[int]:
    if args.prompt_ids is not None:
        return args.prompt_ids
    if tokenizer is None:
        raise SystemExit(f"error: SOURCE '{args.source}' has no tokenizer.json; pass --prompt-ids instead of --prompt")
    return tokenizer.encode(args.prompt, add_special_tokens=False).ids


def cmd_presets(args) -> int:
    from qwen_mobile.export.api import SHIPPED_MODELS, describe
    from qwen_mobile.models import Qwen35Config, available_presets

    for name in available_presets():
        print(_table(list(describe(Qwen35Config.from_preset(name)).items()), title=f"preset {name}"), end="\n\n")
    for name, path in SHIPPED_MODELS.items():
        state = "present" if (path / "config.json").is_file() else "missing"
        print(f"shipped model {name}: {path} ({state})")
    return 0


def cmd_check(args) -> int:
    from qwen_mobile.export.api import check_against_transformers

    tokenizer = _tokenizer_for(args.source)
    ids = _prompt_ids(args, tokenizer)
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
    print(_table(rows, title="qwen-mobile check: our model vs transformers (fp32, eager)"))
    if tokenizer is not None:
        print("\nours:         " + repr(tokenizer.decode(report.greedy_ours)))
        print("transformers: " + repr(tokenizer.decode(report.greedy_transformers)))
    if args.json:
        Path(args.json).write_text(json.dumps(report.__dict__ | {"pass": ok}, indent=2))
    return 0 if ok else 1


def cmd_generate(args) -> int:
    import torch

    from qwen_mobile.export.api import load_model

    tokenizer = _tokenizer_for(args.source)
    ids = _prompt_ids(args, tokenizer)
    model = load_model(args.source, max_seq_len=len(ids) + args.max_new_tokens, gdn_impl=args.gdn_impl)
    stop = tuple(model.config.eos_token_id)
    if tokenizer is not None:
        print(tokenizer.decode(ids), end="", flush=True)
    model.reset()
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(torch.tensor([ids]), torch.arange(len(ids)))
        t_prefill = time.perf_counter() - t0
        out: list[int] = []
        t1 = time.perf_counter()
        for i in range(args.max_new_tokens):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt in stop:
                break
            if tokenizer is not None:
                print(tokenizer.decode([nxt]), end="", flush=True)
            logits = model(torch.tensor([[nxt]]), torch.tensor([len(ids) + i]))
        t_decode = time.perf_counter() - t1
    print() if tokenizer is not None else print(",".join(map(str, out)))
    print(f"\n[{len(ids)} prompt tokens in {t_prefill * 1e3:.0f} ms ({len(ids) / t_prefill:.0f} tok/s); "
          f"{len(out)} generated in {t_decode:.2f} s ({len(out) / max(t_decode, 1e-9):.1f} tok/s), eager "
          f"{args.gdn_impl}]", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """The README's main job on the embedded default: parity with transformers, then a generation."""
    from qwen_mobile.export.api import DEFAULT_SOURCE

    source = args.source or DEFAULT_SOURCE
    prompt = "def fibonacci(n):\n"
    common = dict(source=source, prompt=prompt, prompt_ids=None, gdn_impl=args.gdn_impl, json=None)
    rc = cmd_check(argparse.Namespace(**common, new_tokens=16, atol=1e-4))
    print()
    rc |= cmd_generate(argparse.Namespace(**common, max_new_tokens=args.max_new_tokens))
    return rc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-mobile", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_source(p, required=True):
        p.add_argument("source", metavar="SOURCE", nargs=None if required else "?",
                       help="HF folder, shipped model name ('nano') or preset name")

    def add_prompt(p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--prompt", default="def fibonacci(n):\n", help="prompt text (needs tokenizer.json in SOURCE)")
        g.add_argument("--prompt-ids", type=_parse_ids, default=None, metavar="1,2,3",
                       help="prompt as token ids, for checkpoints without a tokenizer")

    def add_impl(p):
        p.add_argument("--gdn-impl", default="op", choices=["op", "reference", "chunked", "recurrent"],
                       help="gated delta rule implementation: 'op' = our native kernel (default), "
                            "'reference' = the pure-PyTorch references (no compiled code)")

    p = sub.add_parser("presets", help="list the size presets and shipped models")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("check", help="compare our model with transformers on a checkpoint (logits, greedy tokens)")
    add_source(p)
    add_prompt(p)
    add_impl(p)
    p.add_argument("--new-tokens", type=int, default=16, help="greedy tokens to compare (default 16)")
    p.add_argument("--atol", type=float, default=1e-4, help="bound on the max |logit| difference (default 1e-4)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("generate", help="greedy eager generation with our model, streamed")
    add_source(p)
    add_prompt(p)
    add_impl(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the README's main job: check + generate on the shipped default model")
    add_source(p, required=False)
    add_impl(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
