"""Rung 1 of the op ladder: the two references agree with each other and with transformers."""

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    torch_chunk_gated_delta_rule,
    torch_recurrent_gated_delta_rule,
)

from qwen_mobile.models.gated_delta import chunked_reference, gated_delta_rule, recurrent_reference, unit_lower_inverse

FP64_IDENTITY = 1e-10  # same algebra in float64: only round-off separates the two forms
VS_TRANSFORMERS = 2e-5  # transformers computes in fp32 whatever the input dtype; fp32 round-off over <=130 steps
FP32_INVERSE = 1e-5  # doubling inverse in fp32 vs fp64, on correlated keys where the Neumann product fails


def make_inputs(b, t, hk, hv, dk, dv, dtype=torch.float64, seed=0, gate_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hk, dk, generator=gen, dtype=dtype)
    k = torch.randn(b, t, hk, dk, generator=gen, dtype=dtype)
    v = torch.randn(b, t, hv, dv, generator=gen, dtype=dtype)
    g = -gate_scale * torch.rand(b, t, hv, generator=gen, dtype=dtype)
    beta = torch.rand(b, t, hv, generator=gen, dtype=dtype)
    s0 = torch.randn(b, hv, dk, dv, generator=gen, dtype=dtype)
    return q, k, v, g, beta, s0


CASES = [
    # (B, T, Hk, Hv, K, V), reason
    pytest.param(1, 1, 2, 2, 16, 16, id="B1-T1-HK2-HV2"),  # single step: one padded chunk
    pytest.param(2, 7, 2, 4, 16, 8, id="B2-T7-HK2-HV4"),  # mostly padding, head sharing, K != V
    pytest.param(1, 63, 1, 1, 8, 8, id="B1-T63"),  # one short of a chunk
    pytest.param(1, 64, 2, 2, 8, 8, id="B1-T64"),  # one exact chunk
    pytest.param(1, 65, 2, 2, 8, 8, id="B1-T65"),  # exact chunk plus one ragged step
    pytest.param(2, 130, 2, 4, 8, 16, id="B2-T130-HK2-HV4"),  # several chunks, ragged tail, sharing
]


@pytest.mark.parametrize("b,t,hk,hv,dk,dv", CASES)
@pytest.mark.parametrize("gate_scale", [0.05, 1.0, 8.0], ids=["weak-decay", "decay", "strong-decay"])
def test_chunked_equals_recurrent_fp64(b, t, hk, hv, dk, dv, gate_scale):
    q, k, v, g, beta, s0 = make_inputs(b, t, hk, hv, dk, dv, gate_scale=gate_scale)
    out_r, st_r = recurrent_reference(q, k, v, g, beta, s0)
    out_c, st_c = chunked_reference(q, k, v, g, beta, s0)
    torch.testing.assert_close(out_c, out_r, atol=FP64_IDENTITY, rtol=0)
    torch.testing.assert_close(st_c, st_r, atol=FP64_IDENTITY, rtol=0)


@pytest.mark.parametrize("b,t,hk,hv,dk,dv", CASES)
@pytest.mark.parametrize("l2norm", [True, False])
def test_references_match_transformers(b, t, hk, hv, dk, dv, l2norm):
    q, k, v, g, beta, s0 = make_inputs(b, t, hk, hv, dk, dv)
    if not l2norm:  # unnormalised keys blow the state up; keep them small so fp32 stays meaningful
        q, k = q * 0.1, k * 0.1
    out_r, st_r = recurrent_reference(q, k, v, g, beta, s0, use_qk_l2norm=l2norm)
    # transformers expects q/k already repeated to the value heads.
    rep = hv // hk
    qr, kr = q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2)
    for fn in (torch_recurrent_gated_delta_rule, torch_chunk_gated_delta_rule):
        out_t, st_t = fn(qr, kr, v, g, beta, initial_state=s0, output_final_state=True,
                         use_qk_l2norm_in_kernel=l2norm)
        torch.testing.assert_close(out_t.double(), out_r, atol=VS_TRANSFORMERS, rtol=VS_TRANSFORMERS)
        torch.testing.assert_close(st_t.double(), st_r, atol=VS_TRANSFORMERS, rtol=VS_TRANSFORMERS)


def test_head_sharing_is_interleave_not_tile():
    """Value head j must read key head j // 2; a tiled (j % Hk) layout gives a different answer."""
    q, k, v, g, beta, s0 = make_inputs(1, 5, 2, 4, 8, 8)
    out, _ = recurrent_reference(q, k, v, g, beta, s0)
    k_only_head0 = k.clone()
    k_only_head0[:, :, 1] = 0.0
    q_only_head0 = q.clone()
    q_only_head0[:, :, 1] = 0.0
    out0, _ = recurrent_reference(q_only_head0, k_only_head0, v, g, beta, s0)
    # Value heads 0 and 1 read key head 0 and are unchanged; 2 and 3 read key head 1 and change.
    torch.testing.assert_close(out0[:, :, :2], out[:, :, :2])
    assert (out0[:, :, 2:] - out[:, :, 2:]).abs().max() > 1e-3


def test_state_carried_across_calls():
    q, k, v, g, beta, s0 = make_inputs(2, 100, 2, 4, 8, 8)
    out_all, st_all = chunked_reference(q, k, v, g, beta, s0)
    out_a, st_a = chunked_reference(q[:, :37], k[:, :37], v[:, :37], g[:, :37], beta[:, :37], s0)
    out_b, st_b = chunked_reference(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], beta[:, 37:], st_a)
    torch.testing.assert_close(torch.cat([out_a, out_b], 1), out_all, atol=FP64_IDENTITY, rtol=0)
    torch.testing.assert_close(st_b, st_all, atol=FP64_IDENTITY, rtol=0)


def test_doubling_inverse_is_exact_fp64():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 64, 64, generator=gen, dtype=torch.float64).tril(-1) * 0.3
    eye = torch.eye(64, dtype=torch.float64)
    expected = torch.linalg.inv(eye + a)
    torch.testing.assert_close(unit_lower_inverse(a), expected, atol=1e-9, rtol=1e-9)


def test_doubling_inverse_stable_on_correlated_keys_fp32():
    """Correlated keys, beta ~ 0.9, slow decay: the Neumann product loses all accuracy here in fp32."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(1, 32, generator=gen, dtype=torch.float64)
    keys = base + 0.3 * torch.randn(64, 32, generator=gen, dtype=torch.float64)  # cos ~ 0.9
    keys = keys / keys.norm(dim=-1, keepdim=True)
    beta = torch.full((64, 1), 0.9, dtype=torch.float64)
    a = ((beta * keys) @ keys.T).tril(-1) * 0.999
    exact = torch.linalg.inv(torch.eye(64, dtype=torch.float64) + a)
    approx = unit_lower_inverse(a.float()).double()
    rel = (approx - exact).norm() / exact.norm()
    assert rel < FP32_INVERSE, f"relative error {rel:.2e}"


def test_dispatcher_updates_state_in_place_and_rejects_unknown_impl():
    q, k, v, g, beta, s0 = make_inputs(1, 9, 2, 2, 8, 8, dtype=torch.float32)
    state = s0.clone()
    out = gated_delta_rule(q, k, v, g, beta, state, impl="reference")
    out_r, st_r = recurrent_reference(q.double(), k.double(), v.double(), g.double(), beta.double(), s0.double())
    torch.testing.assert_close(out.double(), out_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.double(), st_r, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="impl='fast'"):
        gated_delta_rule(q, k, v, g, beta, state, impl="fast")
