"""Rung 2: the eager op (our C++ through ctypes) against the fp64 transformers recurrence."""

from __future__ import annotations

import pytest
import torch

from gdr_testlib import FP32_ATOL, FP32_RTOL, LOWP_OUT_TOL, assert_close, make_inputs, reference


def _id(B, T, Hk, Hv, K, V, dtype=torch.float32, gate="mid", l2=True):
    s = f"B{B}-T{T}-HK{Hk}-HV{Hv}-K{K}" + (f"-V{V}" if V != K else "")
    if dtype != torch.float32:
        s += "-" + str(dtype).replace("torch.", "")
    if gate != "mid":
        s += f"-{gate}"
    if not l2:
        s += "-nol2"
    return s


def _case(reason, B, T, Hk, Hv, K, V, dtype=torch.float32, gate="mid", l2=True):
    return pytest.param(B, T, Hk, Hv, K, V, dtype, gate, l2, id=_id(B, T, Hk, Hv, K, V, dtype, gate, l2))


# Each shape is here for the branch it hits (tuned chunk C = 16, also the reference chunk 64 boundaries;
# AVX2 vector = 8 floats; decode column block = 32; GEMM tile = 4 rows x 16 columns).
CASES = [
    _case("decode branch (fused T=1 step)", 2, 1, 2, 4, 128, 128),
    _case("smallest chunked prefill: one ragged chunk of 2", 2, 2, 2, 4, 128, 128),
    _case("63 = 3 chunks of 16 + ragged 15 (and < reference chunk 64)", 2, 63, 2, 4, 128, 128),
    _case("64: exact multiple of every chunk size", 2, 64, 2, 4, 128, 128),
    _case("65: a last chunk of one token (n = 1 GEMMs, empty substitution)", 2, 65, 2, 4, 128, 128),
    _case("several chunks and a ragged tail", 2, 130, 2, 4, 128, 128),
    _case("long prefill (benchmark length), 8 chunks of carried state", 2, 512, 2, 4, 128, 128),
    _case("Hv == Hk (0.8B/2B head layout), decode", 2, 1, 4, 4, 128, 128),
    _case("Hv == Hk, prefill", 2, 130, 4, 4, 128, 128),
    _case("odd K, V: scalar column tails everywhere, decode", 2, 1, 1, 2, 5, 7),
    _case("odd K, V: scalar tails in every GEMM and the substitution", 2, 130, 1, 2, 5, 7),
    _case("V = 2 vectors + 4 scalars, K = 1 vector + 4: 1-vector and scalar paths", 2, 1, 2, 4, 12, 20),
    _case("V = 2 vectors + 4 scalars in the chunked GEMM tiles", 2, 70, 2, 4, 12, 20),
    _case("fp16 inputs/output, decode", 2, 1, 2, 4, 128, 128, torch.float16),
    _case("fp16 inputs/output, chunked", 2, 130, 2, 4, 128, 128, torch.float16),
    _case("bf16 inputs/output, decode", 2, 1, 2, 4, 128, 128, torch.bfloat16),
    _case("bf16 inputs/output, chunked", 2, 130, 2, 4, 128, 128, torch.bfloat16),
    _case("no in-kernel l2norm, decode", 2, 1, 2, 4, 128, 128, l2=False),
    _case("no in-kernel l2norm, chunked", 2, 130, 2, 4, 128, 128, l2=False),
    _case("weak decay (alpha ~ 1): long memory, decode", 2, 1, 2, 4, 128, 128, gate="weak"),
    _case("weak decay: chunk-level exp(gamma) ~ 1", 2, 130, 2, 4, 128, 128, gate="weak"),
    _case("strong decay: exp(gamma) underflows inside a chunk", 2, 130, 2, 4, 128, 128, gate="strong"),
    _case("strong decay, decode", 2, 1, 2, 4, 128, 128, gate="strong"),
]


def _check(qrt, B, T, Hk, Hv, K, V, dtype, gate, l2):
    q, k, v, g, beta, state0 = make_inputs(B, T, Hk, Hv, K, V, dtype=dtype, gate=gate, l2norm=l2)
    state = state0.clone()
    out = torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, state, l2)
    ref_out, ref_state = reference(q, k, v, g, beta, state0, use_qk_l2norm=l2)
    assert out.dtype == v.dtype and out.shape == (B, T, Hv, V)
    tol = LOWP_OUT_TOL.get(dtype, dict(atol=FP32_ATOL, rtol=FP32_RTOL))
    assert_close(out, ref_out, what="output", **tol)
    assert state.dtype == torch.float32
    assert_close(state, ref_state, atol=FP32_ATOL, rtol=FP32_RTOL, what="final state")


@pytest.mark.parametrize("B,T,Hk,Hv,K,V,dtype,gate,l2", CASES)
def test_eager_matches_fp64_reference(qrt, B, T, Hk, Hv, K, V, dtype, gate, l2):
    _check(qrt, B, T, Hk, Hv, K, V, dtype, gate, l2)


# The portable (NEON-shaped, 4-wide) code path is the one aarch64 builds take; run it on the host too.
PORTABLE_CASES = [c for c in CASES if c.id in {
    "B2-T1-HK2-HV4-K128", "B2-T130-HK2-HV4-K128", "B2-T130-HK1-HV2-K5-V7", "B2-T70-HK2-HV4-K12-V20",
    "B2-T130-HK2-HV4-K128-bfloat16"}]


@pytest.mark.parametrize("B,T,Hk,Hv,K,V,dtype,gate,l2", PORTABLE_CASES)
def test_portable_path_matches_fp64_reference(qrt, portable_isa, B, T, Hk, Hv, K, V, dtype, gate, l2):
    assert qrt.isa_name() in ("portable", "neon")
    _check(qrt, B, T, Hk, Hv, K, V, dtype, gate, l2)


@pytest.mark.parametrize("chunk", [1, 16, 32, 64])
def test_every_chunk_size_matches_reference(qrt, chunk):
    """The tuned chunk size is a free parameter; every choice (1 = pure recurrence) must be exact."""
    q, k, v, g, beta, state0 = make_inputs(1, 100, 2, 4, 32, 32)
    ref_out, ref_state = reference(q, k, v, g, beta, state0)
    qrt.set_chunk_size(chunk)
    try:
        state = state0.clone()
        out = torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, state)
    finally:
        qrt.set_chunk_size(0)
    assert_close(out, ref_out, FP32_ATOL, FP32_RTOL, f"output, chunk {chunk}")
    assert_close(state, ref_state, FP32_ATOL, FP32_RTOL, f"state, chunk {chunk}")


@pytest.mark.parametrize("split", [(1, 1), (70, 60), (64, 66), (1, 129)], ids=lambda s: f"T{s[0]}+T{s[1]}")
def test_state_carried_across_calls(qrt, split):
    """Two calls that carry the state equal one reference run over the concatenated sequence."""
    T1, T2 = split
    q, k, v, g, beta, state0 = make_inputs(2, T1 + T2, 2, 4, 128, 128, seed=3)
    ref_out, ref_state = reference(q, k, v, g, beta, state0)
    state = state0.clone()
    o1 = torch.ops.qwen35.gated_delta_rule(q[:, :T1], k[:, :T1], v[:, :T1], g[:, :T1], beta[:, :T1], state)
    o2 = torch.ops.qwen35.gated_delta_rule(q[:, T1:], k[:, T1:], v[:, T1:], g[:, T1:], beta[:, T1:], state)
    assert_close(torch.cat([o1, o2], dim=1), ref_out, FP32_ATOL, FP32_RTOL, "output")
    assert_close(state, ref_state, FP32_ATOL, FP32_RTOL, "final state")


def test_out_variant_and_strided_inputs(qrt):
    """The .out overload writes into the caller's buffer; non-contiguous q/k/v/g/beta views (as the
    model produces by splitting the conv output) are accepted."""
    B, T, Hk, Hv, K, V = 1, 9, 2, 4, 16, 16
    q, k, v, g, beta, state0 = make_inputs(B, T, Hk, Hv, K, V, seed=5)
    packed = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1)  # [B, T, conv_dim]
    qs = packed[..., : Hk * K].view(B, T, Hk, K)
    ks = packed[..., Hk * K : 2 * Hk * K].view(B, T, Hk, K)
    vs = packed[..., 2 * Hk * K :].view(B, T, Hv, V)
    assert not qs.is_contiguous()
    out = torch.empty(B, T, Hv, V)
    state = state0.clone()
    ret = torch.ops.qwen35.gated_delta_rule.out(qs, ks, vs, g, beta, state, True, out=out)
    assert ret.data_ptr() == out.data_ptr()
    ref_out, ref_state = reference(q, k, v, g, beta, state0)
    assert_close(out, ref_out, FP32_ATOL, FP32_RTOL, "output")
    assert_close(state, ref_state, FP32_ATOL, FP32_RTOL, "final state")


def test_respects_torch_thread_count(qrt):
    """torch.get_num_threads() caps how many slabs the (batch, head) tasks are split into (the native library counts
    them), and the split changes no bit of the results."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    from qwen_mobile.runtime import ops

    q, k, v, g, beta, state0 = make_inputs(2, 65, 2, 4, 32, 32, seed=7)  # 2 x 4 = 8 (batch, head) tasks
    outs, slabs = {}, {}
    prev = torch.get_num_threads()
    try:
        for n in (1, 2, 8):
            torch.set_num_threads(n)
            s = state0.clone()
            outs[n] = (torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, s), s)
            slabs[n] = ops.last_run_slabs()
    finally:
        torch.set_num_threads(prev)
    pool = _threadpool_get_thread_count()  # ExecuTorch's pool, the kernel's threads
    if pool < 2:
        pytest.skip(f"ExecuTorch's thread pool has {pool} thread here: nothing to split")
    for n in (1, 2, 8):
        threads = min(n, pool)
        per_slab = -(-8 // threads)  # ceil: the kernel's grain
        want = -(-8 // per_slab)  # 1, 2, 2 with this machine's pool of 2; 1, 2, 8 with a pool of 8
        assert slabs[n] == want, f"{n} torch threads, pool {pool}: {slabs[n]} slabs, expected {want}"
    for n in (2, 8):
        assert torch.equal(outs[1][0], outs[n][0]) and torch.equal(outs[1][1], outs[n][1]), f"{n} threads"
