"""Shared helpers for the qwen35::gated_delta_rule tests: inputs, the fp64 reference, tolerances.

The reference is transformers' own ``torch_recurrent_gated_delta_rule`` run in float64 on
head-repeated q, k (repeat_interleave: value head j reads key head j // (Hv // Hk)). It is
independent of our kernel: a Python loop over tokens, no chunking, no C++.
"""

from __future__ import annotations

import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import torch_recurrent_gated_delta_rule

# fp32 kernel vs fp64 reference (mlx-lm test_gated_delta precedent: atol = rtol ~ 1e-4).
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4
# fp16 / bf16 inputs: the reference sees the same rounded inputs, so only the output rounding
# (fp16 ulp 2^-11, bf16 ulp 2^-8, relative) and fp32 accumulation remain; the state stays fp32.
LOWP_OUT_TOL = {torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}
# .pte vs reference, same kernel as eager (ExecuTorch test_gated_delta.py precedent).
PTE_ATOL = 1e-5

# Gate regimes (fla's gate_logit_normalizer idea): log-decay g = -scale * U(0, 1).
GATE_SCALES = {"weak": 0.02, "mid": 1.0, "strong": 8.0}


def make_inputs(B, T, Hk, Hv, K, V, dtype=torch.float32, gate="mid", seed=0, state_scale=0.5, l2norm=True):
    """Random inputs with a non-zero initial state. Without in-kernel l2norm, q and k are drawn
    with norm ~1 so the recurrence stays bounded, as it does after the model's own normalisation."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hk, K, generator=gen)
    k = torch.randn(B, T, Hk, K, generator=gen)
    if not l2norm:
        q = q / K**0.5
        k = k / K**0.5
    v = torch.randn(B, T, Hv, V, generator=gen)
    g = -GATE_SCALES[gate] * torch.rand(B, T, Hv, generator=gen)
    beta = torch.rand(B, T, Hv, generator=gen)
    state = state_scale * torch.randn(B, Hv, K, V, generator=gen)
    q, k, v, g, beta = (t.to(dtype) for t in (q, k, v, g, beta))
    return q, k, v, g, beta, state


def reference(q, k, v, g, beta, state, use_qk_l2norm=True):
    """(out, final_state) in float64 from transformers' recurrence on head-repeated q, k."""
    Hk, Hv = q.shape[2], v.shape[2]
    rep = Hv // Hk
    qd, kd = (t.double().repeat_interleave(rep, dim=2) for t in (q, k))
    out, final = torch_recurrent_gated_delta_rule(
        qd, kd, v.double(), g.double(), beta.double(), initial_state=state.double(),
        output_final_state=True, use_qk_l2norm_in_kernel=use_qk_l2norm,
    )
    return out, final


def assert_close(actual, expected, atol, rtol, what):
    assert not torch.isnan(actual).any(), f"{what}: NaN in kernel output"
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
