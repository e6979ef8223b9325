"""The quality table of export/README.md: perplexity through each XNNPACK bundle of the shipped nano.

    .venv/bin/python scripts/nano_quality.py [--out nano_quality.json]    # about 10 minutes on 2 cores

For each recipe: export `nano`, teacher-force the first 2 fixed held-out windows of models/nano/heldout.json through
the bundle (`prefill` of the first token, then `decode` token by token), and compare with our eager fp32 model on
the same windows: perplexity, its change, top-1 agreement with eager, the file size, and the export gate's own
numbers from the manifest. `tests/export/test_nano_bundles_quality.py` (slow) asserts the bounds on the same
computation; this script prints the whole table, including the two rows with an 8-bit table that no preset names.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from qwen_mobile.export import export
from qwen_mobile.export.source import SHIPPED_MODELS
from qwen_mobile.models import Qwen35ForCausalLM
from qwen_mobile.runtime.program import BundleProgram

NANO = SHIPPED_MODELS["nano"]
WINDOWS = 2
ROWS = [  # (label, export options)
    ("xnnpack-fp32", {"preset": "xnnpack-fp32"}),
    ("xnnpack-8da4w", {"preset": "xnnpack-8da4w"}),
    ("xnnpack-8da8w", {"preset": "xnnpack-8da8w"}),
    ("xnnpack-8w", {"preset": "xnnpack-8w"}),
    ("xnnpack-4w", {"preset": "xnnpack-4w"}),
    ("8da4w, `--qembedding 8w`", {"preset": "xnnpack-8da4w", "qembedding": "8w"}),
    ("4w, `--qembedding 8w`", {"preset": "xnnpack-4w", "qembedding": "8w"}),
]


def held_out_windows() -> list[list[int]]:
    held = json.loads((NANO / "heldout.json").read_text())
    return [w[: held["seq_len"]] for w in held["windows"][:WINDOWS]]


def total_nll(step_logits: torch.Tensor, targets: list[int]) -> float:
    logp = torch.log_softmax(step_logits.double(), -1)  # [steps, vocab]
    return -float(logp[torch.arange(len(targets)), torch.tensor(targets)].sum())


def eager_scores(windows) -> tuple[float, torch.Tensor]:
    model = Qwen35ForCausalLM.from_pretrained(NANO, max_seq_len=1024)
    nll, count, argmax = 0.0, 0, []
    with torch.no_grad():
        for w in windows:
            model.reset()
            logits = model(torch.tensor([w]), torch.arange(len(w)))[0, :-1]  # [len - 1, vocab], predicts w[1:]
            nll += total_nll(logits, w[1:])
            count += len(w) - 1
            argmax.append(logits.argmax(-1))
    return math.exp(nll / count), torch.cat(argmax)


def bundle_scores(bundle: Path, manifest: dict, windows) -> tuple[float, torch.Tensor]:
    program = BundleProgram(bundle / "model.pte",
                            max_prefill_tokens=manifest["program"]["methods"]["forward"]["max_tokens"],
                            kernel_namespaces=manifest["program"]["kernel_namespaces"])
    nll, count, argmax = 0.0, 0, []
    for w in windows:
        steps = [program.prefill(w[:1], 0)] + [program.decode(t, i) for i, t in enumerate(w[1:-1], start=1)]
        logits = torch.stack(steps)  # [len - 1, vocab]
        nll += total_nll(logits, w[1:])
        count += len(w) - 1
        argmax.append(logits.argmax(-1))
    return math.exp(nll / count), torch.cat(argmax)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="rows to run (default: all)")
    args = parser.parse_args()
    windows = held_out_windows()
    ppl_ref, argmax_ref = eager_scores(windows)
    print(f"eager fp32: ppl {ppl_ref:.3f} on {sum(len(w) - 1 for w in windows)} predicted tokens")
    rows = []
    for label, options in ROWS:
        if args.only and label not in args.only and options["preset"] not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "bundle"
            manifest = export("nano", bundle, progress=False, **options)
            ppl, argmax = bundle_scores(bundle, manifest, windows)
            gate = manifest["verification"]
            rows.append({"label": label, "options": options, "model_pte_mb": manifest["files"]["model.pte"]["bytes"] / 1e6,
                         "ppl": ppl, "ppl_change": ppl / ppl_ref - 1,
                         "top1_agreement_with_eager": float((argmax == argmax_ref).float().mean()),
                         "gate_top1": gate.get("top1_agreement"), "gate_mean_kl": gate.get("mean_kl"),
                         "gate_max_abs_logit_diff": gate.get("max_abs_logit_diff")})
        r = rows[-1]
        print(f"{label}: {r['model_pte_mb']:.1f} MB, ppl {ppl:.3f} ({r['ppl_change']:+.2%}), top-1 with eager "
              f"{r['top1_agreement_with_eager']:.1%}, gate top-1 {r['gate_top1']:.3f}, KL {r['gate_mean_kl']:.2g}",
              flush=True)
    print(f"\n| preset | model.pte | ppl | vs eager fp32 ({ppl_ref:.3f}) | top-1 agreement with eager | gate top-1 "
          "| gate mean KL |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['model_pte_mb']:.1f} MB | {r['ppl']:.3f} | {r['ppl_change']:+.2%} | "
              f"{r['top1_agreement_with_eager']:.1%} | {r['gate_top1']:.3f} | {r['gate_mean_kl']:.2g} |")
    if args.out:  # written whole under a temporary name, then renamed: never a half-written file at --out
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps({"eager_fp32_ppl": ppl_ref, "rows": rows}, indent=1) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
