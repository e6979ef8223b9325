"""`qwen-mobile`: a thin argparse layer over the typed functions in qwen_mobile.export.api."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qwen_mobile.runtime.errors import UsageError

from .verify import VerificationError

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
        if not args.prompt_ids:
            raise UsageError("the prompt is empty: give --prompt text or --prompt-ids")
        return args.prompt_ids
    if tokenizer is None:
        raise FileNotFoundError(f"SOURCE '{args.source}' has no tokenizer.json; pass --prompt-ids instead of --prompt")
    ids = tokenizer.encode(args.prompt, add_special_tokens=False).ids
    if not ids:
        raise UsageError("the prompt is empty: give --prompt text or --prompt-ids")
    return ids


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


def cmd_export(args) -> int:
    from qwen_mobile.export.api import export

    if args.recipe in ("coreml", "coreml-pte"):
        return _export_coreml(args)
    from qwen_mobile.export.api import ExportSettings

    overrides = dict(recipe=args.recipe, qlinear=args.qlinear, qembedding=args.qembedding, group_size=args.group_size,
                     tied_table=args.tied_table, max_seq_len=args.max_seq_len, max_prefill_chunk=args.max_prefill_chunk)
    gate = {"on": True, "off": False, "auto": None}[args.quality_gate]
    settings = ExportSettings.resolve(args.preset, **overrides)  # bad flags are refused before any work
    print(f"qwen-mobile export {args.source} -> {args.out}, effective recipe:\n{settings.describe()}", file=sys.stderr)
    manifest = export(args.source, args.out, preset=args.preset, force=args.force, quality_gate=gate,
                      progress=not args.no_progress, **overrides)
    print(export_summary(manifest, Path(args.out)))
    return 0


def _export_coreml(args) -> int:
    """--recipe coreml / coreml-pte: Core ML packages (or a .pte inside one Core ML delegate) for iOS 18+."""
    for flag, value in (("--qembedding", args.qembedding), ("--group-size", args.group_size),
                        ("--tied-table", args.tied_table)):
        if value is not None:
            raise UsageError(f"{flag}: not a Core ML flag (the recipe quantizes the embedding with the linears and "
                             "uses blocks of 32 for 4w)")
    gate = {"on": True, "off": False, "auto": None}[args.quality_gate]
    common = dict(qlinear=args.qlinear or "fp16", max_seq_len=args.max_seq_len or 1024,
                  prefill_chunk=args.max_prefill_chunk or 64, quality_gate=gate, force=args.force,
                  progress=not args.no_progress)
    if args.recipe == "coreml":
        from qwen_mobile.export.coreml import export_coreml

        manifest = export_coreml(args.source, args.out, gdn_layout=args.gdn_layout, head_fp32=args.head_fp32,
                                 max_package_bytes=int(args.max_package_mb * 1e6), **common)
    else:
        from qwen_mobile.export.coreml.pte import export_coreml_pte

        if args.gdn_layout != "io" or args.head_fp32:
            raise UsageError("--gdn-layout/--head-fp32 apply to --recipe coreml only")
        manifest = export_coreml_pte(args.source, args.out, **common)
    print(export_summary(manifest, Path(args.out)))
    return 0


def export_summary(manifest: dict, out: Path) -> str:
    """The table printed at the end of an export, for every recipe."""
    recipe, ver, exp = manifest["recipe"], manifest["verification"], manifest["export"]
    program, files = manifest["program"], manifest["files"]
    size = sum(f["bytes"] for f in files.values())
    main = [n for n in files if n.split("/")[0] == program["file"] or n.startswith(program["file"] + "/")]
    main_bytes = sum(files[n]["bytes"] for n in main)
    rows = [
        ("bundle", str(out)),
        ("model", f"{manifest['model']['id']} ({manifest['model']['params'] / 1e6:.1f} M params"
                  f"{', random weights' if manifest['model']['random_weights'] else ''})"),
        ("recipe", f"{recipe['name']} qlinear={recipe['qlinear']} qembedding={recipe['qembedding']} "
                   f"group={recipe['group_size']}" + (f" (preset {recipe['preset']})" if recipe.get("preset") else "")),
        ("size", f"{main_bytes / 1e6:.1f} MB {program['file']}, {size / 1e6:.1f} MB bundle"
                 + (", tied table stored twice" if recipe.get("tied_table_copies", 1) > 1 else "")
                 + (f"; lm_head: {recipe['head']}" if recipe.get("head") else "")),
        ("methods", ", ".join(f"{m} (T {d['min_tokens']}..{d['max_tokens']})" if "max_tokens" in d else m
                              for m, d in program["methods"].items())),
        ("context", f"{manifest['state']['max_seq_len']} tokens"),
    ]
    graph = program.get("graph", {})
    if recipe["name"] == "xnnpack":
        rows.append(("delegation", "; ".join(
            f"{m}: {g['delegate_calls']} XNNPACK calls, {sum(g['ops_outside_delegates'].values())} ops outside"
            for m, g in graph.items() if program["methods"].get(m, {}).get("kind") in ("prefill", "decode"))))
    elif recipe["name"] == "coreml":
        packages = program.get("packages") or [program["file"]]
        rows.append(("packages", f"{len(packages)} ({program.get('chain', 'one package')})"))
    if "delegation" in program and isinstance(program["delegation"], str):
        rows.append(("delegation", program["delegation"]))
    rows += [
        ("verification", f"{'PASS' if ver['passed'] else 'FAIL'}: top-1 {ver['top1_agreement']:.1%}, "
                         f"max |dlogit| {ver['max_abs_logit_diff']:.2e}, KL {ver['mean_kl']:.2e} "
                         f"over {ver['steps']} steps [{ver['gate']}]"
                         + (f"; {ver['evaluator']}" if ver.get("evaluator") else "")),
        ("export time", f"{exp['seconds']:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in
                                                            exp["stage_seconds"].items()) + ")"),
    ]
    if exp.get("peak_rss_bytes"):
        rows.append(("peak memory", _export_memory_text(exp)))
    return _table(rows, title="qwen-mobile export")


def _export_memory_text(exp: dict) -> str:
    """One line for the summary: the export's peak, and how it was obtained when a forked worker took part."""
    own, worker, pair = exp["peak_rss_bytes"], exp.get("worker_peak_rss_bytes") or 0, exp.get("pair_peak_pss_bytes") or 0
    if not worker:
        return f"{own / 1e9:.2f} GB (RSS)"
    return (f"{exp['peak_memory_bytes'] / 1e9:.2f} GB (exporter RSS {own / 1e9:.2f} GB; with the forked XNNPACK worker "
            + (f"{pair / 1e9:.2f} GB PSS, sampled" if pair else "not sampled")
            + f"; RSS sum {(own + worker) / 1e9:.2f} GB counts shared pages twice)")


def cmd_demo(args) -> int:
    """The README's main job on the shipped model: parity with transformers, export a bundle, run it."""
    from qwen_mobile.export.api import DEFAULT_SOURCE

    source = args.source or DEFAULT_SOURCE
    prompt = "def fibonacci(n):\n    if n < 2:\n"
    common = dict(source=source, prompt=prompt, prompt_ids=None, gdn_impl="op", json=None)
    print("== 1/4 our eager model vs transformers ==")
    rc = cmd_check(argparse.Namespace(**common, new_tokens=16, atol=1e-4))
    print(f"\n== 2/4 export {source} -> {args.out} ({args.preset}) ==")
    # Parsed like a typed command, so every export flag gets its parser default (a new flag cannot be forgotten here).
    rc |= cmd_export(build_parser().parse_args(["export", source, "--out", str(args.out), "--preset", args.preset,
                                                "--force"]))
    print("\n== 3/4 run the bundle ==")
    from qwen_mobile.runtime.commands import cmd_bench, cmd_run

    rc |= cmd_run(build_parser().parse_args(["run", args.out, "--prompt", prompt,
                                             "--max-new-tokens", str(args.max_new_tokens)]))
    print("\n== 4/4 bench the bundle on this host ==")
    rc |= cmd_bench(build_parser().parse_args(["bench", args.out, "--prompt-lengths", "128", "--gen", "32",
                                               "--runs", "3"]))
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
    p.add_argument("--new-tokens", type=_positive, default=16, help="greedy tokens to compare (default 16)")
    p.add_argument("--atol", type=float, default=1e-4, help="bound on the max |logit| difference (default 1e-4)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("generate", help="greedy eager generation with our model, streamed")
    add_source(p)
    add_prompt(p)
    add_impl(p)
    p.add_argument("--max-new-tokens", type=_positive, default=64)
    p.set_defaults(func=cmd_generate)

    from qwen_mobile.export.api import RECIPE_QLINEAR
    from qwen_mobile.export.quantize import GROUP_SIZES, QEMBEDDING, TIED_TABLE

    p = sub.add_parser(
        "export", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="export SOURCE to a verified bundle folder (.pte + tokenizer + manifest)",
        description="Export SOURCE to a bundle folder: model.pte (methods `forward` for prefill, dynamic T, and "
                    "`decode_token`, T=1, sharing one set of state buffers), tokenizer files and manifest.json. The "
                    ".pte is run on this host with our kernel and compared with eager fp32 before the folder appears.",
        epilog="Presets (export/presets/*.yaml) set every flag; explicit flags override them.\n"
               "  xnnpack-8da4w  phone default: int8 dynamic activations x int4 weights, 4-bit embedding\n"
               "  xnnpack-8da8w  int8 dynamic activations x int8 weights, 8-bit embedding\n"
               "  xnnpack-8w     weight-only int8 through our kernels, tied table stored once\n"
               "  xnnpack-4w     weight-only int4 (group 32) through our kernels, tied table stored once\n"
               "  xnnpack-fp32   full precision; the reference\n"
               "Core ML recipes take no preset: --recipe coreml --qlinear {fp16,8w,4w} (see export/coreml/README.md).")
    add_source(p)
    p.add_argument("--out", required=True, help="bundle folder to create (refused if it exists, unless --force)")
    p.add_argument("--preset", default=None,
                   help="reviewed settings to start from (default: xnnpack-<QLINEAR> when --qlinear names one, else "
                        "xnnpack-8da4w); the effective recipe is printed before the export starts")
    p.add_argument("--recipe", choices=["xnnpack", "coreml", "coreml-pte"],
                   help="backend: xnnpack = ExecuTorch .pte for Android/iOS CPU (default); coreml = stateful "
                        "multifunction .mlpackage for iOS 18+; coreml-pte = ExecuTorch .pte entirely inside the "
                        "Core ML delegate (see export/coreml/README.md)")
    p.add_argument("--qlinear", choices=list(dict.fromkeys([*RECIPE_QLINEAR["xnnpack"], "fp16", "8w", "4w"])),
                   help="linear layers. xnnpack: 8da4w = int8 dynamic activations x int4 group-wise weights "
                        "(default); 8da8w = int8 dynamic activations x int8 per-channel weights; 8w / 4w = "
                        "weight-only int8 / int4 through our kernels (tied table stored once); fp32 = none. "
                        "coreml: fp16 (default), 8w, 4w (blocks of 32), fp32 (verification only)")
    p.add_argument("--qembedding", choices=QEMBEDDING, help="embedding table: 4w/8w weight-only, or none")
    p.add_argument("--group-size", type=int, choices=GROUP_SIZES,
                   help="weights per scale for group-wise int4 (smaller = more accurate, larger file)")
    p.add_argument("--tied-table", choices=TIED_TABLE,
                   help="a tied embedding/lm_head table quantized by --qembedding: 'once' (default) = one table, "
                        "read by the embedding gather and by lm_head (our weight-only kernel, fp32 activations); "
                        "'twice' = lm_head follows --qlinear inside XNNPACK and the embedding keeps its own copy "
                        "(a third of a 0.8B file more; bench/README.md compares the two)")
    p.add_argument("--max-seq-len", type=int, help="KV cache length: prompt plus generated tokens")
    p.add_argument("--max-prefill-chunk", type=int, help="most tokens one `forward` call takes (longer prompts "
                                                           "are fed in chunks)")
    p.add_argument("--quality-gate", choices=["auto", "on", "off"], default="auto",
                   help="enforce the preset's quantization quality floors (auto: on for checkpoints, off for "
                        "random-weight presets, where agreement means nothing); fp32 is always checked at 1e-4")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("Core ML only (--recipe coreml)")
    g.add_argument("--gdn-layout", choices=["io", "state"], default="io",
                   help="delta-net conv/recurrent state: 'io' = fp32 tensors in and out of each call, one Core ML "
                        "state per package (default, chosen by measured drift); 'state' = fp16 Core ML states")
    g.add_argument("--head-fp32", action="store_true", help="keep the vocabulary projection in fp32")
    g.add_argument("--max-package-mb", type=float, default=1400.0,
                   help="split the layers over chained packages above this size (Neural Engine compile limit; "
                        "default %(default)s)")
    p.set_defaults(func=cmd_export)

    add_bundle_commands(sub, add_prompt)

    p = sub.add_parser("demo", help="the README's main job on the shipped model: check, export, run, bench")
    add_source(p, required=False)
    p.add_argument("--out", default="out/nano-8da4w", help="bundle folder (default: %(default)s, replaced)")
    p.add_argument("--preset", default="xnnpack-8da4w")
    p.add_argument("--max-new-tokens", type=_positive, default=48)
    p.set_defaults(func=cmd_demo)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _lengths(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts such as 128,512, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive token counts, got {text!r}")
    return values


def add_bundle_commands(sub, add_prompt) -> None:
    """run, chat, bench, inspect: everything that takes an exported bundle (implemented in qwen_mobile.runtime)."""
    from qwen_mobile.runtime.commands import CHAT_HELP, cmd_bench, cmd_chat, cmd_inspect, cmd_run

    def add_bundle(p):
        p.add_argument("bundle", metavar="BUNDLE", help="bundle folder written by `qwen-mobile export`")
        p.add_argument("--no-verify", action="store_true",
                       help="skip the sha256 check of every file against the manifest (faster load of big bundles)")

    def add_sampling(p):
        g = p.add_argument_group("sampling (transformers semantics, applied in this order)")
        g.add_argument("--repetition-penalty", type=float, default=1.0,
                       help="> 1 discourages tokens already in the context (default 1 = off)")
        g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); e.g. 0.7")
        g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
        g.add_argument("--top-p", type=float, default=1.0, help="keep the smallest set with this much mass (1 = off)")
        g.add_argument("--seed", type=int, default=None,
                       help="seed of the sampler; the same seed reproduces the same tokens (default: random, printed)")

    def add_chat_flags(p):
        p.add_argument("--system", default=None, help="system prompt")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--thinking", dest="thinking", action="store_true", default=None,
                       help="open a <think> block for the reply")
        g.add_argument("--no-thinking", dest="thinking", action="store_false",
                       help="pre-fill an empty <think></think> block (default for 0.8B/2B and the shipped model)")

    p = sub.add_parser("run", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="generate from one prompt through a bundle on this host",
                       description="Generate from one prompt through a bundle's .pte on this host (ExecuTorch "
                                   "pybindings + our kernels), streaming text; timings go to stderr.",
                       epilog="examples:\n  qwen-mobile run out/nano-8da4w --prompt 'def add(a, b):'\n"
                              "  qwen-mobile run B --prompt-ids 1,2,3 --json - --dump-logits steps.npy\n"
                              "  qwen-mobile run B --chat --prompt 'Write a haiku' --temperature 0.7 --seed 1")
    add_bundle(p)
    add_prompt(p)
    p.add_argument("--chat", action="store_true", help="wrap --prompt in the ChatML template as a user turn")
    add_chat_flags(p)
    p.add_argument("--max-new-tokens", type=_positive, default=64, help="default %(default)s")
    add_sampling(p)
    p.add_argument("--truncate", choices=["error", "left"], default="error",
                   help="a prompt longer than the context: 'error' (default) refuses; 'left' drops the oldest "
                        "prompt tokens so the prompt plus --max-new-tokens fit")
    p.add_argument("--json", metavar="OUT", help="write ids, text, stop reason, timings and sampling as JSON "
                                                  "('-' = stdout only, no streamed text)")
    p.add_argument("--dump-logits", metavar="PATH.npy",
                   help="save the logits every generated token was sampled from, float32 [steps, vocab]")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="interactive chat that keeps the model state between turns (/save, /load, /reset)",
                       description="Chat with a bundle. Each turn prefills only the new message: the KV caches, conv "
                                   "and recurrent states carry the history. Snapshots save that state to a file "
                                   "tied to this bundle's hash.",
                       epilog="inside the chat, " + CHAT_HELP)
    add_bundle(p)
    add_chat_flags(p)
    p.add_argument("--max-new-tokens", type=_positive, default=256, help="per reply (default %(default)s)")
    p.add_argument("--snapshot-dir", default=".", help="where /save and /load keep NAME.safetensors (default: .)")
    add_sampling(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="time bundles on this host: TTFT, prefill and decode tok/s, peak RSS; JSON and plot",
                       description="Benchmark bundles side by side in this process, or compare saved results. Each "
                                   "TARGET is a bundle folder (measured now), a JSON file in the bench schema "
                                   "(runtime/schemas/bench.schema.json: from this command, the native runner or the "
                                   "apps), or a folder of such files (e.g. a device farm's artifacts, searched "
                                   "recursively). Ratios in the table are against the first target; results from "
                                   "several devices are shown one row per device and bundle.",
                       epilog="examples:\n  qwen-mobile bench out/nano-8da4w out/nano-fp32 --plot nano.png\n"
                              "  qwen-mobile bench out/nano-8da4w --json host.json\n"
                              "  qwen-mobile bench host.json pixel8.json --plot compare.png\n"
                              "  qwen-mobile bench farm-results/ --plot devices.png     # one row per device")
    p.add_argument("targets", metavar="TARGET", nargs="+", help="bundle folder, bench JSON file, or folder of them")
    p.add_argument("--prompt-lengths", type=_lengths, default=[128, 512], metavar="N,N",
                   help="prompt lengths to time prefill at (default 128,512)")
    p.add_argument("--gen", type=_positive, default=64, help="tokens to decode per run (default %(default)s)")
    p.add_argument("--runs", type=_positive, default=5, help="timed runs per prompt length (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids (default %(default)s)")
    p.add_argument("--json", metavar="OUT", help="write the results (one object, or a list for several targets)")
    p.add_argument("--plot", metavar="OUT.png", help="bar chart of prefill and decode tok/s, p10-p90 whiskers")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("inspect", help="what is inside a bundle: manifest, methods, ops, delegation, sizes")
    add_bundle(p)
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=cmd_inspect)


# Errors a user can act on: one line naming the flag, file or field, exit code 1 (argparse's usage errors exit 2).
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, VerificationError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"qwen-mobile {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = "; nothing written" if args.command in ("export", "demo") else ""
        print(f"\nqwen-mobile {args.command}: interrupted{what}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
