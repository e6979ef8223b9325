"""Rung 3: every bad argument raises an error naming it, before anything is written."""

from __future__ import annotations

import pytest
import torch

from gdr_testlib import make_inputs

B, T, Hk, Hv, K, V = 1, 4, 2, 4, 8, 6  # K != V so a transposed state is detectable


def _good():
    q, k, v, g, beta, state = make_inputs(B, T, Hk, Hv, K, V)
    return dict(q=q, k=k, v=v, g=g, beta=beta, state=state)


def _set(name, fn):
    def mutate(a):
        a[name] = fn(a[name])
        return a

    return mutate


BAD = [
    ("state", "state-fp16", _set("state", lambda s: s.half())),
    ("state", "state-fp64", _set("state", lambda s: s.double())),
    ("state", "state-transposed-KV", _set("state", lambda s: s.transpose(-1, -2).contiguous())),
    ("state", "state-wrong-batch", _set("state", lambda s: torch.zeros(2, Hv, K, V))),
    ("state", "state-rank3", _set("state", lambda s: s[0])),
    ("state", "state-noncontiguous", _set("state", lambda s: torch.zeros(B, Hv, V, K).transpose(-1, -2))),
    ("q", "q-rank3", _set("q", lambda t: t[0])),
    ("q", "q-int32", _set("q", lambda t: t.to(torch.int32))),
    ("k", "k-K-mismatch", _set("k", lambda t: torch.zeros(B, T, Hk, K + 1))),
    ("k", "k-T-mismatch", _set("k", lambda t: t[:, :2])),
    ("v", "v-T-mismatch", _set("v", lambda t: t[:, :2])),
    ("v", "v-B-mismatch", _set("v", lambda t: torch.cat([t, t]))),
    ("v", "Hv-not-multiple-of-Hk", _set("v", lambda t: torch.zeros(B, T, 3, V))),
    ("v", "v-fp64", _set("v", lambda t: t.double())),
    ("g", "g-T-mismatch", _set("g", lambda t: t[:, :2])),
    ("g", "g-rank4", _set("g", lambda t: t[..., None])),
    ("beta", "beta-Hv-mismatch", _set("beta", lambda t: t[..., :2])),
    ("beta", "beta-int64", _set("beta", lambda t: t.to(torch.int64))),
]


@pytest.mark.parametrize("argname,mutate", [pytest.param(a, m, id=i) for a, i, m in BAD])
def test_functional_rejects_and_names_argument(qrt, argname, mutate):
    a = mutate(_good())
    before = a["state"].clone()
    with pytest.raises(ValueError, match=rf"'{argname}'"):
        torch.ops.qwen35.gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"], a["state"])
    assert torch.equal(a["state"], before), "state was modified by a rejected call"


OUT_BAD = [
    ("out", "out-wrong-dtype", lambda a: torch.zeros(B, T, Hv, V, dtype=torch.float16)),
    ("out", "out-wrong-shape", lambda a: torch.zeros(B, T, Hv, V + 1)),
    ("out", "out-noncontiguous", lambda a: torch.zeros(B, T, V, Hv).transpose(-1, -2)),
    ("out", "out-aliases-state", None),  # built below: out is a view of the state buffer
]


@pytest.mark.parametrize("argname,make_out", [pytest.param(a, m, id=i) for a, i, m in OUT_BAD])
def test_out_variant_rejects_and_leaves_buffers_untouched(qrt, argname, make_out):
    a = _good()
    if make_out is None:
        # state [1, 4, 8, 6] has 192 floats; out [1, 4, 4, 6] has 96: alias its first half.
        out = a["state"].view(-1)[: B * T * Hv * V].view(B, T, Hv, V)
    else:
        out = make_out(a)
    state_before, out_before = a["state"].clone(), out.clone()
    with pytest.raises(ValueError, match=rf"'{argname}'"):
        torch.ops.qwen35.gated_delta_rule.out(a["q"], a["k"], a["v"], a["g"], a["beta"], a["state"], True, out=out)
    assert torch.equal(a["state"], state_before)
    assert torch.equal(out, out_before)


def test_out_variant_bad_input_leaves_out_untouched(qrt):
    a = _good()
    a["g"] = a["g"][:, :2]
    out = torch.full((B, T, Hv, V), 7.0)
    state_before = a["state"].clone()
    with pytest.raises(ValueError, match="'g'"):
        torch.ops.qwen35.gated_delta_rule.out(a["q"], a["k"], a["v"], a["g"], a["beta"], a["state"], True, out=out)
    assert torch.equal(out, torch.full((B, T, Hv, V), 7.0)) and torch.equal(a["state"], state_before)


def test_c_core_validates_too(qrt):
    """The C entry point re-checks what it can see (dtypes, head grouping), naming the argument."""
    import ctypes

    from qwen_mobile.runtime import ops

    lib = ops._lib()  # the library with this op's C entry points bound (argtypes)
    a = _good()
    out = torch.empty(B, T, Hv, V)
    err = ctypes.create_string_buffer(256)
    dtypes = (ctypes.c_int32 * 6)(0, 0, 0, 0, 0, 0)
    dims = (ctypes.c_int64 * 6)(B, T, Hk, 3, K, V)  # Hv = 3 is not a multiple of Hk = 2
    ptrs = [a[n].data_ptr() for n in ("q", "k", "v", "g", "beta", "state")] + [out.data_ptr()]
    rc = lib.qwen35_gated_delta_rule(*ptrs, dtypes, dims, 1, 1, err, len(err))
    assert rc != 0 and b"'v'" in err.value


def test_fake_kernel_validates_under_export(qrt):
    """torch.export runs the fake kernel: a transposed state is rejected at export time, by name."""

    class Bad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("gdn_state", torch.zeros(B, Hv, V, K))  # K and V swapped

        def forward(self, q, k, v, g, beta):
            return torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, self.gdn_state)

    from qwen_mobile.runtime.ops import GatedDeltaRuleArgumentError

    a = _good()
    with pytest.raises(GatedDeltaRuleArgumentError, match=r"argument 'state' has shape \[1, 4, 6, 8\], must be "
                                                          r"\[B, Hv, K, V\] = \[1, 4, 8, 6\]"), torch.no_grad():
        torch.export.export(Bad(), (a["q"], a["k"], a["v"], a["g"], a["beta"]), strict=False)
