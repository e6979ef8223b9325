"""Long-horizon drift of the Core ML state layouts on the shipped nano model (512 decode steps, numpy evaluator)."""

from __future__ import annotations

import pytest

# Measured on the retrained nano (issue 23; README "State layout"): max |dlogit| 0.054-0.075 over 512 steps (reference
# max |logit| 15.8), top-1 1.000, final recurrent state within 2.3e-3 of fp32, growth 1.21. Bounds leave ~2x room on
# the absolute error; growth compares the last 64 steps with the first 64. (The first nano, max |logit| ~10: 0.019-0.024,
# top-1 >= 0.996, growth 1.17, under a 0.05 bound: the trained model's larger logits carry larger fp16 errors.)
MAX_ABS_LOGIT_DIFF = 0.15
MIN_TOP1 = 0.99
MAX_STATE_REL_ERR = 5e-3
MAX_GROWTH = 1.5


@pytest.mark.slow
def test_state_layouts_do_not_drift_over_512_steps():
    from qwen_mobile.export.coreml.drift import measure

    res = measure("nano", steps=512, variants=("state-fp16", "io-fp32-in-out", "io-fp32-gdn-fp32"))
    for name, r in res["variants"].items():
        assert r["finite"], name
        assert r["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF, (name, r)
        assert r["top1_agreement"] >= MIN_TOP1, (name, r)
        assert r["final_state_rel_err"] <= MAX_STATE_REL_ERR, (name, r)
        growth = r["mean_max_abs_logit_diff_last64"] / r["mean_max_abs_logit_diff_first64"]
        assert growth <= MAX_GROWTH, (name, growth)
