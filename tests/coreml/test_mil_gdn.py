"""The MIL translation of qwen35::gated_delta_rule, run from saved packages by the numpy evaluator, against the
float64 token-loop reference (models/gated_delta.recurrent_reference): an independent implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qwen_mobile.models.gated_delta import recurrent_reference

# fp32 program vs float64 reference: the chunked form reorders sums; 1e-4 relative is mlx-lm's op bound.
FP32_REL_TOL = 1e-4
# fp16 program (every intermediate rounded to fp16, no fp32 islands): measured worst 6.3e-3 relative (T=64, B=2).
FP16_REL_TOL = 1.5e-2
# With g ~ U(-8, 0) the in-chunk cumulative log decay reaches -256, where fp16's step is 0.25: exp(gamma_i - gamma_j)
# is then off by up to ~25 % for far pairs (whose weight is ~0 anyway). Measured 3.2e-2; keep_gdn_fp32 avoids it.
FP16_REL_TOL_STRONG_DECAY = 6e-2


class OpCall(nn.Module):
    # Not "state": Core ML renames an input of that name to "state_workaround".
    def forward(self, q, k, v, g, beta, state_in):
        new_state = state_in.clone()  # the op writes its state argument; Core ML inputs are immutable
        out = torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, new_state, True)
        return out, new_state


def make_inputs(b, t, hk, hv, d, *, correlated=False, gate_scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hk, d, generator=gen)
    if correlated:
        # Keys within a chunk nearly parallel (cos ~0.9), strong writes, slow decay: the case that breaks a
        # power-series inverse.
        base = torch.randn(b, 1, hk, d, generator=gen)
        k = base + 0.3 * torch.randn(b, t, hk, d, generator=gen)
        beta = 0.9 + 0.05 * torch.rand(b, t, hv, generator=gen)
        g = -0.01 * torch.rand(b, t, hv, generator=gen)
    else:
        k = torch.randn(b, t, hk, d, generator=gen)
        beta = torch.rand(b, t, hv, generator=gen)
        g = -gate_scale * torch.rand(b, t, hv, generator=gen)
    v = torch.randn(b, t, hv, d, generator=gen)
    state = 0.1 * torch.randn(b, hv, d, d, generator=gen)
    return q, k, v, g, beta, state


def convert(args, tmp_path, precision):
    import coremltools as ct

    import qwen_mobile.runtime  # noqa: F401
    from qwen_mobile.export.coreml.evaluator import MILModel
    from qwen_mobile.export.coreml.mil_gdn import functionalize_gated_delta, register

    register()
    with torch.no_grad():
        ep = torch.export.export(OpCall(), args, strict=False).run_decompositions({})
    assert functionalize_gated_delta(ep) == 1
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    ml = ct.convert(ep, outputs=[ct.TensorType(name="out", dtype=np.float32),
                                 ct.TensorType(name="state_out", dtype=np.float32)],
                    minimum_deployment_target=ct.target.iOS18, compute_precision=compute, skip_model_load=True)
    path = tmp_path / f"gdr_{precision}.mlpackage"
    ml.save(str(path))
    return MILModel(path)


# id: B-T-Hk-Hv-D[-case]; each shape hits a branch of the translation.
CASES = {
    "B1-T1-H2-HV4-D32": dict(b=1, t=1, hk=2, hv=4, d=32),  # decode branch, head sharing
    "B1-T5-H2-HV2-D32": dict(b=1, t=5, hk=2, hv=2, d=32),  # T < chunk: chunk 8, mostly padding
    "B2-T64-H2-HV4-D32": dict(b=2, t=64, hk=2, hv=4, d=32),  # one exact chunk, batch 2
    "B1-T130-H2-HV4-D32-correlated": dict(b=1, t=130, hk=2, hv=4, d=32, correlated=True),  # 3 chunks, ragged tail
    "B1-T64-H2-HV2-D32-strong-decay": dict(b=1, t=64, hk=2, hv=2, d=32, gate_scale=8.0),  # exp(gamma) underflows
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_translation_matches_reference(case, precision, tmp_path):
    args = make_inputs(**CASES[case])
    ref_out, ref_state = recurrent_reference(*(a.double() for a in args[:5]), initial_state=args[5].double())
    model = convert(args, tmp_path, precision)
    names = ("q", "k", "v", "g", "beta", "state_in")
    got = model.run("main", {n: a.numpy() for n, a in zip(names, args)})
    bound = FP32_REL_TOL if precision == "fp32" else (
        FP16_REL_TOL_STRONG_DECAY if "strong-decay" in case else FP16_REL_TOL)
    for name, ref in (("out", ref_out), ("state_out", ref_state)):
        ref = ref.numpy()
        assert np.isfinite(got[name]).all(), name
        rel = np.abs(got[name] - ref).max() / np.abs(ref).max()
        assert rel <= bound, f"{case} {precision} {name}: max error {rel:.3g} of max |ref| > {bound}"


def test_unknown_mil_op_is_named(tmp_path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from qwen_mobile.export.coreml.evaluator import MILModel, UnsupportedMILOp

    @mb.program(input_specs=[mb.TensorSpec(shape=(3,))], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.sin(x=x)

    ml = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    ml.save(str(tmp_path / "sin.mlpackage"))
    model = MILModel(tmp_path / "sin.mlpackage")
    with pytest.raises(UnsupportedMILOp, match="'sin'"):
        model.run("main", {"x": np.zeros(3, np.float32)})


_test_lib = None


def _define_mutating_test_op():
    """A mutating custom op that is not ours: qm_coreml_test::bump(Tensor(a!) x) -> Tensor."""
    global _test_lib
    if _test_lib is None:
        _test_lib = torch.library.Library("qm_coreml_test", "DEF")
        _test_lib.define("bump(Tensor(a!) x) -> Tensor")
        _test_lib.impl("bump", lambda x: x.add_(1.0).clone(), "CompositeExplicitAutograd")
        torch.library.register_fake("qm_coreml_test::bump", lambda x: x.new_empty(x.shape), lib=_test_lib)
    return torch.ops.qm_coreml_test.bump


def test_functionalize_refuses_other_mutating_ops():
    from qwen_mobile.export.coreml.mil_gdn import functionalize_gated_delta

    bump = _define_mutating_test_op()

    class Other(nn.Module):
        def forward(self, x):
            y = x.clone()
            return bump(y) + y

    with torch.no_grad():
        ep = torch.export.export(Other(), (torch.zeros(2),), strict=False).run_decompositions({})
    with pytest.raises(NotImplementedError, match="no translation"):
        functionalize_gated_delta(ep)
