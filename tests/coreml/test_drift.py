"""Long-horizon drift of the Core ML state layouts on the shipped nano model (512 decode steps, numpy evaluator)."""

from __future__ import annotations

import pytest

# Measured on the shipped nano (issue 23: the 17.8M-token run plus its loop-branch fine-tune; README "State layout"):
# max |dlogit| 0.109 (delta rule fp32) and 0.120 (fp16) over 512 steps (reference max |logit| 19.2), top-1 >= 0.998,
# final recurrent state within 2.3e-3 of fp32, growth 0.77-0.90; growth compares the last 64 steps with the first 64.
# The 0.15 bound was 2x the previous nano's 0.075 (max |logit| 15.8); the pre-trained weights' fp16 rows sat at it
# (0.149), kept, not raised: better-trained models' larger logits carry larger fp16 errors. (The first nano, max
# |logit| ~10: 0.019-0.024, top-1 >= 0.996, growth 1.17.)
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
