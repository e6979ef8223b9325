"""Quality gates of issue 6, through exported bundles of the shipped nano model (slow: one export per recipe).

    .venv/bin/python -m pytest -m slow tests/export/test_nano_bundles_quality.py -s

Perplexity over fixed held-out windows (models/nano/heldout.json), teacher-forced through each bundle's `decode`
method, against our eager fp32 model on the same windows. The scoring is scripts/nano_quality.py's, the script that
prints export/README.md's whole table; this file holds each preset to its bound.
"""

import importlib.util
from pathlib import Path

import pytest

from qwen_mobile.export import export


def load_nano_quality():
    path = Path(__file__).resolve().parents[2] / "scripts" / "nano_quality.py"
    spec = importlib.util.spec_from_file_location("nano_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nano_quality = load_nano_quality()

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


@pytest.fixture(scope="module")
def eager_reference():
    windows = nano_quality.held_out_windows()
    return windows, *nano_quality.eager_scores(windows)


@pytest.mark.slow
@pytest.mark.parametrize("preset", [
    # raises: only the perplexity bound may fail here; a gate refusal (VerificationError) is a real failure
    pytest.param(p, marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                            reason="int4 recipe over its perplexity bound on the trained nano "
                                                   "(export/README.md)"))
    if p in OVER_BOUND else p
    for p in sorted(PPL_REL_BOUND)])
def test_bundle_perplexity_close_to_eager(preset, eager_reference, tmp_path):
    windows, ppl_ref, argmax_ref = eager_reference
    out = tmp_path / preset
    manifest = export("nano", out, preset=preset, progress=False)
    ppl, argmax = nano_quality.bundle_scores(out, manifest, windows)
    top1 = float((argmax == argmax_ref).float().mean())
    print(f"\n{preset}: ppl {ppl:.3f} vs eager fp32 {ppl_ref:.3f} ({ppl / ppl_ref - 1:+.3%}), top-1 agreement "
          f"{top1:.1%}, {manifest['files']['model.pte']['bytes'] / 1e6:.1f} MB")
    assert abs(ppl / ppl_ref - 1) <= PPL_REL_BOUND[preset]
