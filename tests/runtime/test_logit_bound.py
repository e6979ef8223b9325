"""The cross-platform logit bound of runtime/native.py (`logit_bound`, `compare`), the rule check_arm64.sh applies to
qwen-bench on aarch64 (qemu) vs x86-64, on measured runs and on wrong ones. Fast: no build, no qemu.

data/arm64_logit_excerpts.json holds measured runs (x86-64 `qwen-bench` vs the aarch64 build under qemu 7.2, same
bundle, same prompt; the runs of runtime/README.md "Native runner"), cut to the columns that decide a comparison:
per step each run's top-4, the top-4 |difference| and the largest |logit|. The rest of a row is filled with one value
both runs share (so it adds no difference and never wins the argmax): compare() sees the same max |dlogit|, scale and
argmaxes as on the full [steps, vocab] dumps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_mobile.runtime import native

EXCERPTS = json.loads((Path(__file__).parent / "data" / "arm64_logit_excerpts.json").read_text())


def manifest(qlinear: str, gate: float | None) -> dict:
    m = {"recipe": {"qlinear": qlinear}, "verification": {}}
    if gate is not None:
        m["verification"]["max_abs_logit_diff"] = gate
    return m


def runs(label: str) -> tuple[dict, native.Run, native.Run]:
    e = next(x for x in EXCERPTS if x["label"] == label)
    dense = {}
    for name in ("x86_64", "aarch64"):
        dense[name] = np.empty((len(e["rows"]), e["vocab"]), np.float32)  # [steps, vocab]
    for k, row in enumerate(e["rows"]):
        fill = -max(abs(v) for v in row["x86_64"])  # at most max|logit| in size, below either run's top-1
        for name in dense:
            dense[name][k] = fill
            dense[name][k, row["columns"]] = row[name]
    a = native.Run("x86_64", e["tokens"]["x86_64"], dense["x86_64"])
    b = native.Run("aarch64", e["tokens"]["aarch64"], dense["aarch64"])
    return manifest(e["qlinear"], e["gate_max_abs_logit_diff"]), a, b


def test_fp32_and_weight_only_recipes_keep_the_fp32_bound():
    for qlinear in ("fp32", "8w", "4w"):
        bound = native.logit_bound(manifest(qlinear, 0.27))
        assert (bound.rel, bound.absolute) == (1e-4, 0.0)
        logits = np.zeros((2, 8), np.float32)
        logits[:, 3] = 20.0
        assert bound.at(logits) == pytest.approx(2e-3)


def test_dynamic_recipes_bound_is_a_fraction_of_the_gate_error():
    # 0.3 and 1.5 x the gate's error: the derivation and measurements are at DYNAMIC_ACTIVATION_FRACTION.
    logits = np.full((1, 4), 3.3, np.float32)
    assert native.logit_bound(manifest("8da4w", 3.677)).at(logits) == pytest.approx(0.3 * 3.677)
    assert native.logit_bound(manifest("8da8w", 0.504)).at(logits) == pytest.approx(1.5 * 0.504)
    # A gate error near zero leaves the fp32 bound as the floor, never a bound of zero.
    assert native.logit_bound(manifest("8da4w", 0.0)).at(logits) == pytest.approx(3.3e-4)


@pytest.mark.parametrize("gate", [None, float("nan"), -1.0, True, "3.6"])
def test_dynamic_recipe_without_a_usable_gate_error_is_refused(gate):
    with pytest.raises(ValueError, match=r"manifest.json: verification.max_abs_logit_diff is .*re-export"):
        native.logit_bound(manifest("8da4w", gate))


@pytest.mark.parametrize("label, diff", [
    ("0.8B-shape random 8da4w, qemu -cpu max", 0.1415),  # the run the 2e-2 x max|logit| rule (0.066) rejected
    ("nano 8da4w, qemu -cpu max", 0.1651),
    ("nano 8da8w, qemu -cpu cortex-a76", 0.3781),
    ("nano fp32, qemu -cpu max", 1.17e-5),
    ("nano 8w, qemu -cpu max", 8.11e-6),
])
def test_measured_cross_platform_runs_pass(label, diff):
    m, a, b = runs(label)
    ok, line = native.compare(a, b, native.logit_bound(m))
    assert ok, line
    assert f"max |dlogit| {diff:.3g}" in line, line


def test_nano_8da4w_near_tie_ends_the_comparison():
    """Tokens differ from step 3, where x86's top-1 leads by 0.0022 and the logits differ by 0.165: a near-tie. The
    steps after it decode different tokens (logits apart by up to 6) and are not compared."""
    m, a, b = runs("nano 8da4w, qemu -cpu max")
    ok, line = native.compare(a, b, native.logit_bound(m))
    assert ok and "tokens differ from step 3" in line and "near-tie; logits compared over 4 steps" in line, line
    assert float(np.abs(a.logits[4:] - b.logits[4:]).max()) > 5  # what the old full comparison tripped on


def test_sme_kernels_under_qemu_fail():
    """nano 8da8w on qemu's `max` CPU (SME on): logits unrelated to x86's (off by 14.6, 29x the gate's error)."""
    m, a, b = runs("nano 8da8w, qemu -cpu max (SME)")
    ok, line = native.compare(a, b, native.logit_bound(m))
    assert not ok and "max |dlogit| 14.6" in line and "a difference beyond the bound" in line, line


@pytest.mark.parametrize("label", ["0.8B-shape random 8da4w, qemu -cpu max", "nano 8da4w, qemu -cpu max",
                                   "nano 8da8w, qemu -cpu cortex-a76"])
def test_a_wrong_logit_on_a_measured_run_fails(label):
    """One ordinary logit of the aarch64 run off by 15 % of the step's max|logit| (nano) or by 40 % (the random 0.8B
    shape, whose quantization error is as large as its logits): rejected, though the tokens are unchanged."""
    m, a, b = runs(label)
    wrong = b.logits.copy()
    k = 0
    col = int(np.argsort(a.logits[k])[len(a.logits[k]) // 2])  # a median logit, where both runs agree
    assert a.logits[k, col] == b.logits[k, col]
    share = 0.4 if label.startswith("0.8B") else 0.15
    wrong[k, col] += share * float(np.abs(a.logits[k]).max())
    assert int(wrong[k].argmax()) == b.tokens[k]
    ok, line = native.compare(a, native.Run("aarch64", b.tokens, wrong), native.logit_bound(m))
    assert not ok, line


def test_a_scaled_run_fails():
    """A broken kernel that shrinks every logit by 30 % keeps the argmax but not the bound."""
    m, a, b = runs("nano 8da4w, qemu -cpu max")
    ok, line = native.compare(a, native.Run("aarch64", b.tokens, b.logits * 0.7), native.logit_bound(m))
    assert not ok, line


def test_a_token_change_the_logits_do_not_explain_fails():
    logits = np.zeros((3, 8), np.float32)
    logits[:, 2] = 5.0
    a = native.Run("a", [2, 2, 2], logits)
    bound = native.logit_bound(manifest("8da4w", 3.0))  # 0.9: loose, but the token change is not a near-tie
    ok, line = native.compare(a, native.Run("b", [2, 4, 2], logits.copy()), bound)
    assert not ok and "not explained by the logits" in line, line
    # The same change where the logits do allow it: token 4 within 2 x the step's difference of token 2.
    near = logits.copy()
    near[1, 4] = 4.9
    other = near.copy()
    other[1, 2], other[1, 4] = 4.9, 5.0
    ok, line = native.compare(native.Run("a", [2, 2, 2], near), native.Run("b", [2, 4, 2], other), bound)
    assert ok and "near-tie" in line, line


def test_a_near_tie_after_a_logit_beyond_the_bound_still_fails():
    m, a, b = runs("nano 8da4w, qemu -cpu max")
    wrong = b.logits.copy()
    wrong[1] += 2.0 * native.logit_bound(m).at(a.logits[:4])
    ok, line = native.compare(a, native.Run("aarch64", b.tokens, wrong), native.logit_bound(m))
    assert not ok, line


def test_compare_cli_exit_code(tmp_path):
    """`python -m qwen_mobile.runtime.native compare`, as check_arm64.sh calls it, on the measured 0.8B-shape runs
    and on a wrong copy: exit 0 and 1, one line per pair naming the rule."""
    m, a, b = runs("0.8B-shape random 8da4w, qemu -cpu max")
    vocab = a.logits.shape[1]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({**m, "model": {"config": {"vocab_size": vocab}}}))

    def write(name: str, run: native.Run) -> str:
        (tmp_path / f"{name}.json").write_text(json.dumps({"results": [{"generated_ids": run.tokens}]}))
        run.logits.astype(np.float32).tofile(tmp_path / f"{name}.bin")
        return f"{name}={tmp_path / name}.json:{tmp_path / name}.bin"

    def cli(*specs: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "qwen_mobile.runtime.native", "compare", "--bundle", str(bundle),
                               "--prompt-ids", "1,2", "--gen", str(len(a.tokens)), *[x for s in specs
                                                                                     for x in ("--run", s)]],
                              capture_output=True, text=True, timeout=120)

    good = cli(write("x86_64", a), write("aarch64", b))
    assert good.returncode == 0 and "gate error vs fp32 3.68, 8da4w" in good.stdout, good.stdout + good.stderr
    bad = cli(write("x86_64", a), write("aarch64", native.Run("aarch64", b.tokens, b.logits * 0.5)))
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout, bad.stdout + bad.stderr
    # A quantized bundle whose manifest lost the gate's number: one line naming the field, no traceback.
    (bundle / "manifest.json").write_text(json.dumps({**m, "model": {"config": {"vocab_size": vocab}},
                                                      "verification": {}}))
    broken = cli(write("x86_64", a), write("aarch64", b))
    assert broken.returncode == 2 and "manifest.json: verification.max_abs_logit_diff is None" in broken.stderr, \
        broken.stderr
    assert "Traceback" not in broken.stderr, broken.stderr
