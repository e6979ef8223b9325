"""Quality gates of issue 6, through exported bundles of the shipped nano model (slow: one export per recipe).

    .venv/bin/python -m pytest -m slow tests/export/test_nano_bundles_quality.py -s

Perplexity over fixed held-out windows (models/nano/heldout.json), teacher-forced through each bundle's `decode`
method, against our eager fp32 model on the same windows.
"""

import json
import math

import pytest
import torch

from qwen_mobile.export import export
from qwen_mobile.export.source import SHIPPED_MODELS
from qwen_mobile.models import Qwen35ForCausalLM
from qwen_mobile.runtime.program import BundleProgram

NANO = SHIPPED_MODELS["nano"]
WINDOWS = 2  # of the 8 fixed 512-token held-out windows; enough for a stable mean NLL at this cost

# Relative perplexity increase over eager fp32 allowed per recipe (issue 6 targets).
PPL_REL_BOUND = {
    "xnnpack-fp32": 1e-4,  # same math
    "xnnpack-8da8w": 0.01,  # int8 per-channel weights, int8 dynamic activations
    "xnnpack-8da4w": 0.03,  # int4 g32 + dynamic int8 activations
    "xnnpack-8w": 0.01,  # int8 per-channel weights, fp32 activations (qwen35::linear_wq)
    "xnnpack-4w": 0.015,  # int4 g32 weights, fp16 scales, fp32 activations (qwen35::linear_wq)
}
# Measured on the shipped nano (issue 23: the 17.8M-token run plus its loop-branch fine-tune, held-out ppl 20.1):
# 8da4w +5.14 %, 4w +5.59 % (the pre-trained weights, ppl 18.1: +4.76 %, +6.60 %; the previous nano, ppl 35: +3.83 %,
# +3.87 %; the first, ppl 155: +0.47 %, +0.83 %). The bounds stay; these rows are expected to fail until a recipe
# change meets them (8da4w with an 8-bit table measured +2.23 %; 4w's cost is in its int4 linears: +6.14 % with an
# 8-bit table; scripts/nano_quality.py prints every row). strict: a pass flags the mark for removal.
OVER_BOUND = {"xnnpack-8da4w", "xnnpack-4w"}


def windows() -> list[list[int]]:
    held = json.loads((NANO / "heldout.json").read_text())
    return [w[: held["seq_len"]] for w in held["windows"][:WINDOWS]]


def nll(step_logits: list[torch.Tensor], targets: list[int]) -> float:
    logp = torch.log_softmax(torch.stack(step_logits).double(), -1)
    return -float(logp[torch.arange(len(targets)), torch.tensor(targets)].sum())


@pytest.fixture(scope="module")
def eager_reference():
    model = Qwen35ForCausalLM.from_pretrained(NANO, max_seq_len=1024)
    total, count, argmax = 0.0, 0, []
    with torch.no_grad():
        for w in windows():
            model.reset()
            logits = model(torch.tensor([w]), torch.arange(len(w)))[0, :-1]  # predicts w[1:]
            total += nll(list(logits), w[1:])
            count += len(w) - 1
            argmax.append(logits.argmax(-1))
    return math.exp(total / count), torch.cat(argmax)


@pytest.mark.slow
@pytest.mark.parametrize("preset", [
    # raises: only the perplexity bound may fail here; a gate refusal (VerificationError) is a real failure
    pytest.param(p, marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                            reason="int4 recipe over its perplexity bound on the trained nano "
                                                   "(export/README.md)"))
    if p in OVER_BOUND else p
    for p in sorted(PPL_REL_BOUND)])
def test_bundle_perplexity_close_to_eager(preset, eager_reference, tmp_path):
    ppl_ref, argmax_ref = eager_reference
    out = tmp_path / preset
    manifest = export("nano", out, preset=preset, progress=False)
    program = BundleProgram(out / "model.pte", max_prefill_tokens=manifest["program"]["methods"]["forward"]["max_tokens"],
                            kernel_namespaces=manifest["program"]["kernel_namespaces"])
    total, count, argmax = 0.0, 0, []
    for w in windows():
        steps = [program.prefill(w[:1], 0)] + [program.decode(t, i) for i, t in enumerate(w[1:-1], start=1)]
        total += nll(steps, w[1:])
        count += len(w) - 1
        argmax.append(torch.stack(steps).argmax(-1))
    ppl = math.exp(total / count)
    top1 = float((torch.cat(argmax) == argmax_ref).float().mean())
    print(f"\n{preset}: ppl {ppl:.3f} vs eager fp32 {ppl_ref:.3f} ({ppl / ppl_ref - 1:+.3%}), top-1 agreement "
          f"{top1:.1%}, {manifest['files']['model.pte']['bytes'] / 1e6:.1f} MB")
    assert abs(ppl / ppl_ref - 1) <= PPL_REL_BOUND[preset]
