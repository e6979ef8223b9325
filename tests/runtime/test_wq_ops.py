"""qwen35::linear_wq / embedding_wq: kernels vs an fp64 dequantize-then-matmul reference on every ISA path, the
quantizer's math, argument errors that name the argument, export keeping the nodes, and the .pte running our kernel.

The reference unpacks the bytes itself (low nibble = element 2j, high = 2j+1, value = nibble - 8) and never calls the
op or the quantizer's packing, so a layout bug on either side shows up as a mismatch.
"""

from __future__ import annotations

import pytest
import torch

from qwen_mobile.export.quantize import EmbeddingWQ, LinearWQ, quantize_weight

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


@pytest.mark.parametrize("name,arg,args", _bad_linear_cases(), ids=[c[0] for c in _bad_linear_cases()])
def test_linear_bad_argument_is_named(qrt, name, arg, args):
    from qwen_mobile.runtime.wq import WeightOnlyArgumentError

    with pytest.raises(WeightOnlyArgumentError, match=f"qwen35::linear_wq: argument {arg}"):
        torch.ops.qwen35.linear_wq(*args)
    with pytest.raises(WeightOnlyArgumentError, match=f"argument {arg}"):  # the fake kernel checks the same
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fakes = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            torch.ops.qwen35.linear_wq(*fakes)


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


# ------------------------------------------------------------------------------------- export and .pte --


class TiedBlock(torch.nn.Module):
    """embedding -> linear -> relu -> tied head over the same packed table (what the model does when tied)."""

    def __init__(self, vocab=96, hidden=64, bits=4, gs=32):
        super().__init__()
        torch.manual_seed(1)
        table = torch.randn(vocab, hidden) * 0.1
        qweight, scales = quantize_weight(table, bits, gs)
        self.embed = EmbeddingWQ(qweight, scales, bits, gs)
        self.mid = LinearWQ(*quantize_weight(torch.randn(hidden, hidden) * 0.1, bits, gs), bits, gs)
        self.head = LinearWQ(qweight, scales, bits, gs)  # same tensors as self.embed

    def forward(self, tokens):
        return self.head(torch.relu(self.mid(self.embed(tokens))))


def _count(ep, op):
    return sum(1 for n in ep.graph.nodes if n.op == "call_function" and f"qwen35.{op}" in str(n.target))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dim-seq"])
def test_export_keeps_one_node_per_module(qrt, dynamic):
    from torch.export import Dim

    shapes = ({1: Dim("seq", min=1, max=64)},) if dynamic else None
    ep = torch.export.export(TiedBlock(), (torch.zeros(1, 4, dtype=torch.long),), dynamic_shapes=shapes, strict=False)
    assert _count(ep, "linear_wq") == 2 and _count(ep, "embedding_wq") == 1


@pytest.fixture(scope="module")
def tied_pte(qrt):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import Dim

    model = TiedBlock().eval()
    with torch.no_grad():
        ep = torch.export.export(model, (torch.zeros(1, 4, dtype=torch.long),),
                                 dynamic_shapes=({1: Dim("seq", min=1, max=64)},), strict=False)
    et = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    targets = [str(n.target) for n in et.exported_program().graph.nodes if n.op == "call_function"]
    assert targets.count("qwen35.linear_wq.out") == 2 and targets.count("qwen35.embedding_wq.out") == 1, targets
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
