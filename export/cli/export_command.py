"""export and demo: SOURCE to a verified bundle with any recipe, and the README's main job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qwen_mobile.runtime.commands import positive_int

from .common import table


def cmd_export(args) -> int:
    from qwen_mobile.export.recipes import RECIPES, DEFAULT_RECIPE, run_export

    name = args.recipe or DEFAULT_RECIPE
    if name not in ("xnnpack", "coreml"):
        from qwen_mobile.runtime.errors import UsageError

        for flag, given in (("--image-sizes", args.image_sizes is not None), ("--no-vision", args.no_vision)):
            if given:
                raise UsageError(f"{flag} applies to --recipe xnnpack and coreml only ({name} bundles hold the text "
                                 "model)")
    recipe = RECIPES[name].from_cli(args)  # bad flags are refused before any work
    print(f"qwen-mobile export {args.source} -> {args.out}, effective recipe:\n{recipe.describe()}", file=sys.stderr)
    manifest = run_export(recipe, args.source, args.out, force=args.force, progress=not args.no_progress)
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
    ]
    image = ver.get("image")
    if image:
        rows.append(("image prompt", f"{'PASS' if image['passed'] else 'FAIL'}: top-1 {image['top1_agreement']:.1%}, "
                                     f"max |dlogit| {image['max_abs_logit_diff']:.2e}, KL {image['mean_kl']:.2e} "
                                     f"over {image['steps']} steps ({image['method']}, {image['image_tokens']} image "
                                     f"tokens)"))
    if "vision" in manifest:
        quant = manifest["vision"]["quantization"]
        rows.append(("images", ", ".join(f"{i['height']}x{i['width']} ({i['tokens']} tokens)"
                                         for i in manifest["vision"]["images"])
                     + f"; tower {quant['qlinear']}" + (f", {len(quant['kept_fp32'])} linear(s) kept fp32"
                                                        if quant["kept_fp32"] else "")))
    rows += [
        ("export time", f"{exp['seconds']:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in
                                                            exp["stage_seconds"].items()) + ")"),
    ]
    if exp.get("peak_rss_bytes"):
        rows.append(("peak memory", _export_memory_text(exp)))
    return table(rows, title="qwen-mobile export")


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
    from . import build_parser
    from .model_commands import cmd_check
    from qwen_mobile.export.source import DEFAULT_SOURCE

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


def add_export_command(sub, add_source) -> None:
    from qwen_mobile.export.coreml.convert import QLINEAR as COREML_QLINEAR
    from qwen_mobile.export.quantize import GROUP_SIZES, QEMBEDDING, TIED_TABLE
    from qwen_mobile.export.recipes import DEFAULT_RECIPE, RECIPES
    from qwen_mobile.export.recipes.xnnpack import QLINEAR as XNNPACK_QLINEAR

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
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="backend (export/recipes/): " + "; ".join(
                       f"{name} = {recipe.DESCRIPTION}" + (" (default)" if name == DEFAULT_RECIPE else "")
                       for name, recipe in RECIPES.items()))
    p.add_argument("--qlinear", choices=list(dict.fromkeys([*XNNPACK_QLINEAR, *COREML_QLINEAR])),
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
    p.add_argument("--image-sizes", metavar="SIZES",
                   help="xnnpack and coreml, from a checkpoint with a vision tower: the image sizes the bundle "
                        "encodes, a comma list of S (square) or HxW in pixels, each side a multiple of patch_size x "
                        "spatial_merge_size (32 for the releases); one encode_image_<H>x<W> method (coreml: a function "
                        "of vision.mlpackage) each (default: 224,448)")
    p.add_argument("--no-vision", action="store_true",
                   help="export only the text model from a checkpoint with a vision tower (no image methods)")
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


def add_demo_command(sub, add_source) -> None:
    p = sub.add_parser("demo", help="the README's main job on the shipped model: check, export, run, bench")
    add_source(p, required=False)
    p.add_argument("--out", default="out/nano-8da4w", help="bundle folder (default: %(default)s, replaced)")
    p.add_argument("--preset", default="xnnpack-8da4w")
    p.add_argument("--max-new-tokens", type=positive_int, default=48)
    p.set_defaults(func=cmd_demo)
