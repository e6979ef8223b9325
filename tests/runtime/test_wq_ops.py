"""qwen35::linear_wq / embedding_wq: kernels vs an fp64 dequantize-then-matmul reference on every ISA path, the
quantizer's math, argument errors that name the argument, export keeping the nodes, and the .pte running our kernel.
qwen35::linear_wq_a8 (int8 activations per group): vs a plain-torch reference of its exact semantics, same coverage.

The reference unpacks the bytes itself (low nibble = element 2j, high = 2j+1, value = nibble - 8) and never calls the
op or the quantizer's packing, so a layout bug on either side shows up as a mismatch.
"""

from __future__ import annotations

import pytest
import torch

from qwen_mobile.export.quantize import EmbeddingWQ, LinearWQ, LinearWQA8, quantize_weight

# fp32 accumulation vs fp64: bound the error by REL x sum_k |x_k w_k| (the scale of fp32 round-off in a dot product
# of length K is ~K * 6e-8 in the worst case; 1e-5 covers K <= 1024 with margin and still catches a wrong element).
DOT_REL = 1e-5
GATHER_ATOL = 1e-6  # dequantize only: q * scale in fp32 vs fp64, values |w| < 10
PTE_ATOL = 1e-5  # .pte vs eager, same kernel


def unpack_ref(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed bytes -> integer codes [N, K] as float64, independent of the kernel and the quantizer."""
    if bits == 8:
        return qweight.to(torch.float64)
    b = qweight.to(torch.int64)
    lo, hi = (b & 0xF) - 8, (b >> 4) - 8  # [N, K/2] each
    return torch.stack([lo, hi], dim=-1).reshape(qweight.shape[0], -1).to(torch.float64)


def dequant_ref(qweight, scales, bits, group_size) -> torch.Tensor:
    q = unpack_ref(qweight, bits)
    return q * scales.to(torch.float64).repeat_interleave(group_size, dim=1)


def random_table(N, K, bits, group_size, scale_dtype=torch.float32, seed=0):
    """Random codes over the full range (including -8 for int4) and random positive scales."""
    gen = torch.Generator().manual_seed(seed)
    if bits == 8:
        qweight = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8)
    else:
        qweight = torch.randint(0, 256, (N, K // 2), generator=gen, dtype=torch.int64).to(torch.uint8)
    scales = (torch.rand(N, K // group_size, generator=gen) * 0.02 + 1e-3).to(scale_dtype)
    return qweight, scales


def check_linear(x, qweight, scales, bits, group_size):
    y = torch.ops.qwen35.linear_wq(x, qweight, scales, bits, group_size)
    w = dequant_ref(qweight, scales, bits, group_size)  # [N, K] fp64
    ref = x.double() @ w.T
    bound = DOT_REL * (x.double().abs() @ w.abs().T) + 1e-7
    assert y.dtype == torch.float32 and y.shape == (*x.shape[:-1], qweight.shape[0])
    assert torch.isfinite(y).all()
    err = (y.double() - ref).abs()
    assert (err <= bound).all(), f"max err {float(err.max()):.3g}, worst ratio {float((err / bound).max()):.3g}"
    return float((err / (x.double().abs() @ w.abs().T + 1e-30)).max())


@pytest.fixture(params=["native", "portable"])
def isa(request, qrt):
    from qwen_mobile.runtime import ops

    if request.param == "portable":
        request.getfixturevalue("portable_isa")
        assert ops.isa_name() in ("portable", "neon")
    return ops.isa_name()


# Shapes picked for branches: M=1 is the fused GEMV; M>1 the row-dequantize path; K % 16 != 0 within a group hits the
# scalar tail; N odd and N=1 the thread split; N*K*M >= 65536 runs on the thread pool; group == K is per channel.
LINEAR_CASES = [
    # id, bits, leading dims of x, N, K, group_size
    ("4w-decode-M1-N37-K64-g32", 4, (1,), 37, 64, 32),
    ("4w-decode-M1-N1-K128-g128", 4, (1,), 1, 128, 128),
    ("4w-tail-M1-N19-K72-g24", 4, (1,), 19, 72, 24),
    ("4w-prefill-M3-N37-K64-g32", 4, (3,), 37, 64, 32),
    ("4w-prefill-B2T5-N33-K96-g32", 4, (2, 5), 33, 96, 32),
    ("4w-threads-M1-N4099-K256-g64", 4, (1,), 4099, 256, 64),
    ("4w-threads-M17-N515-K256-g32", 4, (17,), 515, 256, 32),
    ("8w-decode-M1-N37-K64-perchannel", 8, (1,), 37, 64, 64),
    ("8w-tail-M1-N21-K40-perchannel", 8, (1,), 21, 40, 40),
    ("8w-prefill-M5-N37-K80-g16", 8, (5,), 37, 80, 16),
    ("8w-threads-M1-N2053-K512-perchannel", 8, (1,), 2053, 512, 512),
    ("8w-threads-B1T9-N700-K1024-perchannel", 8, (1, 9), 700, 1024, 1024),
]


@pytest.mark.parametrize("bits,lead,N,K,gs", [c[1:] for c in LINEAR_CASES], ids=[c[0] for c in LINEAR_CASES])
def test_linear_matches_fp64_reference(isa, bits, lead, N, K, gs):
    qweight, scales = random_table(N, K, bits, gs, seed=N + K)
    x = torch.randn(*lead, K, generator=torch.Generator().manual_seed(K))
    check_linear(x, qweight, scales, bits, gs)


@pytest.mark.parametrize("bits", [4, 8])
def test_linear_fp16_scales(isa, bits):
    qweight, scales = random_table(45, 64, bits, 32, scale_dtype=torch.float16, seed=3)
    check_linear(torch.randn(2, 64), qweight, scales, bits, 32)


def test_isa_paths_agree(qrt):
    """AVX2 and portable give the same numbers up to fp32 summation order."""
    from qwen_mobile.runtime import ops

    qweight, scales = random_table(257, 256, 4, 32, seed=9)
    x = torch.randn(3, 256)
    fast = torch.ops.qwen35.linear_wq(x, qweight, scales, 4, 32)
    ops.force_portable(True)
    try:
        slow = torch.ops.qwen35.linear_wq(x, qweight, scales, 4, 32)
    finally:
        ops.force_portable(False)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits,K,gs", [(4, 64, 32), (4, 72, 24), (8, 40, 40), (8, 64, 16)],
                         ids=["4w-K64-g32", "4w-tail-K72-g24", "8w-tail-K40", "8w-K64-g16"])
def test_embedding_matches_fp64_reference(isa, bits, K, gs):
    qweight, scales = random_table(53, K, bits, gs, seed=K)
    idx = torch.tensor([[0, 52, 7], [7, 1, 30]])  # repeats, first and last row
    e = torch.ops.qwen35.embedding_wq(qweight, scales, idx, bits, gs)
    ref = dequant_ref(qweight, scales, bits, gs)[idx]
    assert e.shape == (2, 3, K) and e.dtype == torch.float32
    torch.testing.assert_close(e.double(), ref, atol=GATHER_ATOL, rtol=0)


# ------------------------------------------------------------------------------- linear_wq_a8 (int8 activations) --

# The kernel's activation codes equal the reference's bit for bit (same fp32 division, same tie rule) and each group's
# dot product is an exact integer; what is left is fp32 rounding of sx * scale * isum and of the sum over groups: ~G
# ulps of the largest partial sum. Bound it by A8_REL x sum_g sx * s * sum_k |qx * q| (a wrong code of one element in
# K = 64..1024 moves y by ~1/K of that, 100x the bound).
A8_REL = 1e-5


def quantize_act_ref(x: torch.Tensor, group_size: int):
    """x [M, K] fp32 -> (codes [M, G, gs] fp64, sx [M, G] fp32): symmetric int8 per group, round half to even.

    Written from the contract (kernels/wq.h), not from the kernel: fp32 amax / 127, fp32 x / sx, torch.round (half to
    even), clamp to [-127, 127], code 0 where sx == 0.
    """
    M, K = x.shape
    xg = x.float().reshape(M, K // group_size, group_size)  # [M, G, gs]
    sx = xg.abs().amax(-1) / 127  # [M, G] fp32
    q = torch.round(xg / sx[..., None]).clamp(-127, 127)
    q = torch.where(sx[..., None] > 0, q, torch.zeros_like(q))
    return q.double(), sx


def a8_reference(x, qweight, scales, bits, group_size):
    """(y, mag) in fp64: y = sum_g sx * s * (qx . q)_g with the dot product exact; mag bounds its fp32 rounding."""
    lead, K = x.shape[:-1], x.shape[-1]
    q, sx = quantize_act_ref(x.reshape(-1, K), group_size)  # [M, G, gs], [M, G]
    codes = unpack_ref(qweight, bits).reshape(qweight.shape[0], K // group_size, group_size)  # [N, G, gs]
    isum = torch.einsum("mgk,ngk->mng", q, codes)  # [M, N, G], integers < 2^53: exact
    iabs = torch.einsum("mgk,ngk->mng", q.abs(), codes.abs())
    both = sx.double()[:, None, :] * scales.double()[None]  # [M, N, G]
    y, mag = (isum * both).sum(-1), (iabs * both).sum(-1)  # [M, N]
    return y.reshape(*lead, -1), mag.reshape(*lead, -1)


def check_linear_a8(x, qweight, scales, bits, group_size):
    y = torch.ops.qwen35.linear_wq_a8(x, qweight, scales, bits, group_size)
    ref, mag = a8_reference(x, qweight, scales, bits, group_size)
    assert y.dtype == torch.float32 and y.shape == (*x.shape[:-1], qweight.shape[0])
    assert torch.isfinite(y).all()
    err = (y.double() - ref).abs()
    bound = A8_REL * mag + 1e-7
    assert (err <= bound).all(), f"max err {float(err.max()):.3g}, worst ratio {float((err / bound).max()):.3g}"
    return float((err / (mag + 1e-30)).max())


# bits x group 32/64/128 x odd N x M=1 and M>1 x fp32/fp16 scales, on the AVX2 and the portable path (the NEON one
# runs in wq_selftest.cpp under qemu). K = 256 holds several 32-blocks per group for g64/g128.
A8_CASES = [(bits, gs, lead, sd) for bits in (4, 8) for gs in (32, 64, 128) for lead in ((1,), (2, 3))
            for sd in (torch.float32, torch.float16)]


@pytest.mark.parametrize("bits,gs,lead,scale_dtype", A8_CASES,
                         ids=[f"{b}w-g{g}-M{'x'.join(map(str, l))}-{str(d)[6:]}" for b, g, l, d in A8_CASES])
def test_linear_a8_matches_torch_reference(isa, bits, gs, lead, scale_dtype):
    N, K = 37, 256
    qweight, scales = random_table(N, K, bits, gs, scale_dtype=scale_dtype, seed=gs + bits)
    x = torch.randn(*lead, K, generator=torch.Generator().manual_seed(gs))
    check_linear_a8(x, qweight, scales, bits, gs)


# Branches beyond the grid above: group not a multiple of the 32-block (scalar integer tails, gs < 32 is all tail),
# per-channel int8 (one group of K), N = 1, and the thread split (N * K * M >= 65536).
A8_SHAPES = [
    ("4w-tail-M1-N19-K72-g24", 4, (1,), 19, 72, 24),
    ("4w-tail-M3-N21-K160-g80", 4, (3,), 21, 160, 80),
    ("8w-tail-M2-N9-K80-g40", 8, (2,), 9, 80, 40),
    ("8w-perchannel-M1-N33-K1024", 8, (1,), 33, 1024, 1024),
    ("4w-N1-M1-K128-g128", 4, (1,), 1, 128, 128),
    ("4w-threads-M1-N4099-K256-g32", 4, (1,), 4099, 256, 32),
    ("4w-threads-B1T9-N515-K1024-g32", 4, (1, 9), 515, 1024, 32),
    ("8w-threads-M1-N2053-K512-perchannel", 8, (1,), 2053, 512, 512),
    # int4 with group 32, 64 or 128 takes the paired 8-blocks-at-a-time AVX2 body when K % 256 == 0 (the grid above
    # runs it at K = 256) and the per-group one otherwise
    ("4w-g32-paired-M2-N65-K512", 4, (2,), 65, 512, 32),
    ("4w-g32-unpaired-G10-M2-N33-K320", 4, (2,), 33, 320, 32),
    ("4w-g64-unpaired-M1-N17-K192", 4, (1,), 17, 192, 64),
    ("4w-g128-paired-M3-N9-K768", 4, (3,), 9, 768, 128),
]


@pytest.mark.parametrize("bits,lead,N,K,gs", [c[1:] for c in A8_SHAPES], ids=[c[0] for c in A8_SHAPES])
def test_linear_a8_shapes(isa, bits, lead, N, K, gs):
    qweight, scales = random_table(N, K, bits, gs, seed=N + K)
    x = torch.randn(*lead, K, generator=torch.Generator().manual_seed(K)) * 3
    check_linear_a8(x, qweight, scales, bits, gs)


@pytest.mark.parametrize("K", [64, 256], ids=["K64", "K256-paired"])
@pytest.mark.parametrize("bits", [4, 8])
def test_linear_a8_rounds_half_to_even_per_group(isa, bits, K):
    """Exact ties, and groups with different ranges: per-token scaling, round half away from zero, or multiplying by
    127 / amax instead of dividing would each give other codes here, and the output shows them.

    Group 0 has amax 127 (sx = 1): x = 2.5, -3.5, 0.5 sit on ties (even: 2, -4, 0; away: 3, -4, 1). Group 1's amax is
    254 (sx = 2): 5.0 -> 2.5 -> 2, 1.0 -> 0.5 -> 0. All weight codes 1, scale 1, so y is the sum of the codes.
    """
    gs = 32
    x = torch.zeros(1, K)
    x[0, :4] = torch.tensor([127.0, 2.5, -3.5, 0.5])
    x[0, 32:35] = torch.tensor([254.0, 5.0, 1.0])
    q8 = torch.ones(3, K, dtype=torch.int8)
    qweight = q8 if bits == 8 else torch.full((3, K // 2), 9 | (9 << 4), dtype=torch.uint8)  # nibble 9 = code 1
    scales = torch.ones(3, K // gs)
    y = torch.ops.qwen35.linear_wq_a8(x, qweight, scales, bits, gs)
    # group 0: 127 + 2 - 4 + 0; group 1: sx = 2, codes 127 + 2 + 0 -> 2 * 129
    assert y.tolist() == [[125.0 + 2 * 129.0] * 3], y
    ref, _ = a8_reference(x, qweight, scales, bits, gs)
    assert ref.tolist() == y.double().tolist()


@pytest.mark.parametrize("K", [64, 256], ids=["K64", "K256-paired"])
def test_linear_a8_zero_and_non_finite_groups(isa, K):
    qweight, scales = random_table(5, K, 4, 32, seed=4)
    x = torch.randn(3, K)
    x[0, :32] = 0  # all-zero group: sx = 0, no 0/0
    x[1] = 0
    y = torch.ops.qwen35.linear_wq_a8(x, qweight, scales, 4, 32)
    ref, _ = a8_reference(x[:1], qweight, scales, 4, 32)
    torch.testing.assert_close(y[:1].double(), ref, atol=1e-6, rtol=1e-5)
    assert (y[1] == 0).all()
    x[2, 40] = float("inf")
    assert torch.isnan(torch.ops.qwen35.linear_wq_a8(x, qweight, scales, 4, 32)[2]).all()


def test_linear_a8_is_not_the_fp32_path(qrt):
    """The reference tolerance is far below the int8 activation error, so the fp32-activation result would fail it."""
    qweight, scales = random_table(64, 256, 4, 32, seed=5)
    x = torch.randn(2, 256)
    ref, mag = a8_reference(x, qweight, scales, 4, 32)
    fp32 = torch.ops.qwen35.linear_wq(x, qweight, scales, 4, 32).double()
    assert ((fp32 - ref).abs() > A8_REL * mag + 1e-7).float().mean() > 0.9
    # and it stays close to it: per-group int8 activations cost ~0.4 % of a group's range
    rel = (torch.ops.qwen35.linear_wq_a8(x, qweight, scales, 4, 32).double() - fp32).norm() / fp32.norm()
    assert rel < 1e-2, rel


def test_linear_a8_isa_paths_agree(qrt):
    from qwen_mobile.runtime import ops

    for bits in (4, 8):
        qweight, scales = random_table(257, 256, bits, 32, scale_dtype=torch.float16, seed=9)
        x = torch.randn(3, 256)
        fast = torch.ops.qwen35.linear_wq_a8(x, qweight, scales, bits, 32)
        ops.force_portable(True)
        try:
            slow = torch.ops.qwen35.linear_wq_a8(x, qweight, scales, bits, 32)
        finally:
            ops.force_portable(False)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- quantizer --


@pytest.mark.parametrize("bits,gs", [(4, 32), (4, 128), (8, 64)], ids=["4w-g32", "4w-g128", "8w-perchannel"])
def test_quantize_weight_round_trip(bits, gs):
    """Symmetric RTN: every weight within half a step of its group's grid; codes in [-qmax, qmax]; extremes exact."""
    w = torch.randn(24, 64 if bits == 8 else 256) * 0.05
    w[3] = 0.0  # an all-zero row must not divide by zero
    qweight, scales = quantize_weight(w, bits, gs)
    qmax = 127 if bits == 8 else 7
    codes = unpack_ref(qweight, bits)
    assert codes.abs().max() <= qmax
    deq = dequant_ref(qweight, scales, bits, gs)
    assert scales.dtype == torch.float16  # every scale is a normal fp16 number here
    step = scales.double().repeat_interleave(gs, 1)
    # half a step, plus the clamp of the group's extreme when the fp16 scale rounded down (<= qmax * 2^-11 steps)
    assert ((deq - w.double()).abs() <= step * (0.5 + qmax * 2.0 ** -11) + 1e-9).all()
    assert (deq[3] == 0).all()
    # the largest |w| of each group sits on +-qmax (up to the fp16 scale's rounding, 2^-11 relative)
    amax = w.double().reshape(24, -1, gs).abs().amax(-1)
    nonzero = torch.arange(24) != 3  # the zero row keeps scale 1 (any scale gives q = 0)
    torch.testing.assert_close(scales.double()[nonzero] * qmax, amax[nonzero], atol=1e-9, rtol=2.0 ** -11)


def test_quantize_weight_keeps_fp32_scales_out_of_fp16_range():
    w = torch.randn(4, 64) * 1e-6  # scales ~1e-7: subnormal in fp16
    qweight, scales = quantize_weight(w, 4, 32)
    assert scales.dtype == torch.float32
    deq = dequant_ref(qweight, scales, 4, 32)
    assert ((deq - w.double()).abs() <= scales.double().repeat_interleave(32, 1) / 2 + 1e-15).all()


def test_modules_match_nn_within_quantization_error():
    torch.manual_seed(0)
    lin, emb = torch.nn.Linear(64, 40, bias=True), torch.nn.Embedding(30, 64)
    ql = LinearWQ(*quantize_weight(lin.weight, 8, 64), 8, 64, bias=lin.bias)
    qe = EmbeddingWQ(*quantize_weight(emb.weight, 4, 32), 4, 32)
    x, idx = torch.randn(5, 64), torch.tensor([1, 29, 3])
    with torch.no_grad():
        torch.testing.assert_close(ql(x), lin(x), atol=0.02, rtol=0)  # int8: ~0.4% of |w| per weight
        torch.testing.assert_close(qe(idx), emb(idx), atol=0.3, rtol=0)  # int4: half a step of max|row| / 7


# ---------------------------------------------------------------------------------------- bad arguments --


def _table4():
    return random_table(8, 64, 4, 32)


def _bad_linear_cases():
    q4, s4 = _table4()
    q8, s8 = random_table(8, 64, 8, 64)
    x = torch.randn(2, 64)
    return [
        ("x-dtype", "'x'", (x.double(), q4, s4, 4, 32)),
        ("bits", "'bits'", (x, q4, s4, 5, 32)),
        ("qweight-dtype", "'qweight'", (x, q4.to(torch.int8), s4, 4, 32)),
        ("qweight-K", "'qweight'", (torch.randn(2, 60), q4, s4, 4, 32)),
        ("qweight-rank", "'qweight'", (x, q8.reshape(-1), s8, 8, 64)),
        ("group-size", "'group_size'", (x, q4, s4, 4, 24)),
        ("scales-shape", "'scales'", (x, q4, s4[:, :1], 4, 32)),
        ("scales-dtype", "'scales'", (x, q4, s4.double(), 4, 32)),
    ]


@pytest.mark.parametrize("op", ["linear_wq", "linear_wq_a8"])
@pytest.mark.parametrize("name,arg,args", _bad_linear_cases(), ids=[c[0] for c in _bad_linear_cases()])
def test_linear_bad_argument_is_named(qrt, op, name, arg, args):
    from qwen_mobile.runtime.wq import WeightOnlyArgumentError

    fn = getattr(torch.ops.qwen35, op)
    with pytest.raises(WeightOnlyArgumentError, match=f"qwen35::{op}: argument {arg}"):
        fn(*args)
    with pytest.raises(WeightOnlyArgumentError, match=f"qwen35::{op}: argument {arg}"):  # the fake kernel checks it
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fakes = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fn(*fakes)


@pytest.mark.parametrize("bits,group_size,scale_code,arg", [(5, 32, 0, "'bits'"), (4, 24, 0, "'group_size'"),
                                                             (4, 32, 3, "'scales'")], ids=["bits", "group", "scales"])
def test_linear_a8_cpp_core_names_the_argument(qrt, bits, group_size, scale_code, arg):
    """The C entry point (what the ExecuTorch kernel also runs) validates on its own, with the a8 op's name."""
    import ctypes

    from qwen_mobile.runtime.wq import _lib

    q4, s4 = _table4()
    x, out = torch.randn(2, 64), torch.empty(2, 8)
    err = ctypes.create_string_buffer(512)
    rc = _lib().qwen35_linear_wq_a8(x.data_ptr(), q4.data_ptr(), s4.data_ptr(), out.data_ptr(),
                                    (ctypes.c_int64 * 3)(2, 8, 64), bits, group_size, scale_code, 1, err, len(err))
    assert rc == 1 and f"qwen35::linear_wq_a8: argument {arg}" in err.value.decode(), err.value


def test_embedding_index_out_of_range_is_named_by_the_cpp_core(qrt):
    from qwen_mobile.runtime.wq import WeightOnlyArgumentError

    q4, s4 = _table4()
    with pytest.raises(WeightOnlyArgumentError, match=r"qwen35::embedding_wq: argument 'indices' holds 8"):
        torch.ops.qwen35.embedding_wq(q4, s4, torch.tensor([0, 8]), 4, 32)
    with pytest.raises(WeightOnlyArgumentError, match=r"argument 'indices' holds -1"):
        torch.ops.qwen35.embedding_wq(q4, s4, torch.tensor([-1]), 4, 32)
    with pytest.raises(WeightOnlyArgumentError, match=r"argument 'indices' must be int64"):
        torch.ops.qwen35.embedding_wq(q4, s4, torch.tensor([0], dtype=torch.int32), 4, 32)


def test_out_variant_checks_out(qrt):
    from qwen_mobile.runtime.wq import WeightOnlyArgumentError

    q4, s4 = _table4()
    x = torch.randn(2, 64)
    out = torch.empty(2, 8)
    torch.ops.qwen35.linear_wq.out(x, q4, s4, 4, 32, out=out)
    torch.testing.assert_close(out, torch.ops.qwen35.linear_wq(x, q4, s4, 4, 32))
    with pytest.raises(WeightOnlyArgumentError, match="argument 'out' has shape"):
        torch.ops.qwen35.linear_wq.out(x, q4, s4, 4, 32, out=torch.empty(2, 9))
    out8 = torch.empty(2, 8)
    torch.ops.qwen35.linear_wq_a8.out(x, q4, s4, 4, 32, out=out8)
    torch.testing.assert_close(out8, torch.ops.qwen35.linear_wq_a8(x, q4, s4, 4, 32), atol=0, rtol=0)
    with pytest.raises(WeightOnlyArgumentError, match="qwen35::linear_wq_a8: argument 'out' has shape"):
        torch.ops.qwen35.linear_wq_a8.out(x, q4, s4, 4, 32, out=torch.empty(3, 8))


# ------------------------------------------------------------------------------------- export and .pte --


class TiedBlock(torch.nn.Module):
    """embedding -> linear -> relu -> tied head over the same packed table (what the model does when tied). a8: the head
    is linear_wq_a8, as in the 8da recipes."""

    def __init__(self, vocab=96, hidden=64, bits=4, gs=32, a8=False):
        super().__init__()
        torch.manual_seed(1)
        table = torch.randn(vocab, hidden) * 0.1
        qweight, scales = quantize_weight(table, bits, gs)
        self.embed = EmbeddingWQ(qweight, scales, bits, gs)
        self.mid = LinearWQ(*quantize_weight(torch.randn(hidden, hidden) * 0.1, bits, gs), bits, gs)
        self.head = (LinearWQA8 if a8 else LinearWQ)(qweight, scales, bits, gs)  # same tensors as self.embed

    def forward(self, tokens):
        return self.head(torch.relu(self.mid(self.embed(tokens))))


def _count(ep, op):  # exact op names: "qwen35.linear_wq" is a prefix of "qwen35.linear_wq_a8"
    return sum(1 for n in ep.graph.nodes if n.op == "call_function" and str(n.target).startswith(f"qwen35.{op}."))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dim-seq"])
def test_export_keeps_one_node_per_module(qrt, dynamic):
    from torch.export import Dim

    shapes = ({1: Dim("seq", min=1, max=64)},) if dynamic else None
    ep = torch.export.export(TiedBlock(), (torch.zeros(1, 4, dtype=torch.long),), dynamic_shapes=shapes, strict=False)
    assert _count(ep, "linear_wq") == 2 and _count(ep, "embedding_wq") == 1
    ep = torch.export.export(TiedBlock(a8=True), (torch.zeros(1, 4, dtype=torch.long),), dynamic_shapes=shapes,
                             strict=False)
    assert _count(ep, "linear_wq") == 1 and _count(ep, "linear_wq_a8") == 1 and _count(ep, "embedding_wq") == 1


@pytest.fixture(scope="module", params=[False, True], ids=["fp32-head", "a8-head"])
def tied_pte(qrt, request):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import Dim

    a8 = request.param
    model = TiedBlock(a8=a8).eval()
    with torch.no_grad():
        ep = torch.export.export(model, (torch.zeros(1, 4, dtype=torch.long),),
                                 dynamic_shapes=({1: Dim("seq", min=1, max=64)},), strict=False)
    et = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    targets = [str(n.target) for n in et.exported_program().graph.nodes if n.op == "call_function"]
    linears = {"qwen35.linear_wq.out": 1 if a8 else 2, "qwen35.linear_wq_a8.out": 1 if a8 else 0}
    assert {t: targets.count(t) for t in linears} == linears, targets
    assert targets.count("qwen35.embedding_wq.out") == 1, targets
    return model, et.buffer


def test_pte_matches_eager_and_runs_our_kernels(tied_pte, tmp_path):
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    model, buf = tied_pte
    mod = _load_for_executorch_from_buffer(buf, enable_etdump=True)
    for T in (1, 7):  # decode-shaped and prefill-shaped calls of the same dynamic program
        tokens = torch.randint(0, 96, (1, T), generator=torch.Generator().manual_seed(T))
        got = mod.forward([tokens])[0]
        with torch.no_grad():
            torch.testing.assert_close(got, model(tokens), atol=PTE_ATOL, rtol=0)
    path = tmp_path / "wq.etdp"
    mod.write_etdump_result_to_file(str(path))
    names = {ev.name for blk in Inspector(etdump_path=str(path)).event_blocks for ev in blk.events}
    assert {"qwen35::linear_wq.out", "qwen35::embedding_wq.out"} <= names, names
    assert ("qwen35::linear_wq_a8.out" in names) == isinstance(model.head, LinearWQA8), names


def test_pte_stores_the_tied_table_once(tied_pte):
    """The packed table (96 x 32 bytes) appears once among the program's constants, not once per op."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    _, buf = tied_pte
    program = deserialize_pte_binary(buf)
    program = getattr(program, "program", program)
    table = TiedBlock().embed.qweight.numpy().tobytes()
    data = bytes(buf)
    assert data.count(table) == 1, "the packed tied table is stored more than once"
    # the serializer agrees: every [96, 32] uint8 tensor value of every method points at one data buffer
    buffers = {v.val.data_buffer_idx for plan in program.execution_plan for v in plan.values
               if type(v.val).__name__ == "Tensor" and list(v.val.sizes) == [96, 32]}
    assert len(buffers) == 1, buffers
