"""``qwen35::linear_wq``, ``linear_wq_a8`` and ``embedding_wq``: weight-only int8 / int4 ops (schema, fake and eager
kernels).

Contract (also in ``kernels/wq.h`` and ``runtime/README.md``, "Weight-only ops")::

    qwen35::linear_wq(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size) -> Tensor
    qwen35::linear_wq_a8(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size) -> Tensor
    qwen35::embedding_wq(Tensor qweight, Tensor scales, Tensor indices, int bits, int group_size) -> Tensor

    x         [..., K]        float32
    qweight   bits=8: int8  [N, K]
              bits=4: uint8 [N, K/2]; byte j of a row holds element 2j in its low nibble and 2j+1 in its high
              nibble, each offset binary: q = nibble - 8, in [-8, 7] (our quantizer only writes [-7, 7])
    scales    [N, K/group_size]  float32 or float16; w[n, k] = q[n, k] * scales[n, k // group_size] (symmetric)
    indices   [...] int64 in [0, N)
    linear_wq    -> [..., N] float32 = x @ w.T
    linear_wq_a8 -> [..., N] float32 = x8 @ w.T with x8 = x quantized to int8 per row and per group of group_size along
                    K (the weight scales' groups), symmetric, round half to even:
                        sx[m, g] = max_{k in g} |x[m, k]| / 127           (fp32)
                        qx[m, k] = clamp(round(x[m, k] / sx[m, g]), -127, 127), and 0 where sx == 0
                        y[m, n]  = sum_g sx[m, g] * scales[n, g] * sum_{k in g} qx[m, k] * q[n, k]
                    the inner sum exact (int32), the outer one fp32; inf / NaN in a group of x gives NaN outputs.
    embedding_wq -> [..., K] float32 = w[indices]

group_size divides K (group_size == K: per channel); for bits=4, K and group_size are even. Accumulation is fp32.
The tied embedding table and lm_head call embedding_wq and a linear op on the SAME qweight / scales tensors, so a
bundle stores the table once. The head is linear_wq_a8 in the 8da recipes (int8 activations like their other linears,
integer dot products; why per group and half-to-even: ``kernels/wq.h``) and linear_wq in the weight-only ones.
``.out`` overloads are what ExecuTorch runs (``qwen35::linear_wq.out``, ``linear_wq_a8.out``, ``embedding_wq.out``,
registered by the same native library as ``qwen35::gated_delta_rule.out``); eager torch calls the same C++ core
through ctypes.
"""

from __future__ import annotations

import ctypes

import torch

from .library import load_library

__all__ = ["LINEAR_OP", "LINEAR_A8_OP", "EMBEDDING_OP", "ET_KERNEL_NAMES", "WeightOnlyArgumentError", "validate_linear",
           "validate_embedding", "packed_cols"]

LINEAR_OP = "qwen35::linear_wq"
LINEAR_A8_OP = "qwen35::linear_wq_a8"
EMBEDDING_OP = "qwen35::embedding_wq"
ET_KERNEL_NAMES = ("qwen35::linear_wq.out", "qwen35::linear_wq_a8.out", "qwen35::embedding_wq.out")

_SCHEMAS = (
    "linear_wq(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size) -> Tensor",
    "linear_wq.out(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size, *, Tensor(a!) out) "
    "-> Tensor(a!)",
    "linear_wq_a8(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size) -> Tensor",
    "linear_wq_a8.out(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size, *, Tensor(a!) out) "
    "-> Tensor(a!)",
    "embedding_wq(Tensor qweight, Tensor scales, Tensor indices, int bits, int group_size) -> Tensor",
    "embedding_wq.out(Tensor qweight, Tensor scales, Tensor indices, int bits, int group_size, *, Tensor(a!) out) "
    "-> Tensor(a!)",
)
_SCALE_CODES = {torch.float32: 0, torch.float16: 1}


class WeightOnlyArgumentError(ValueError):
    """A bad argument to qwen35::linear_wq / linear_wq_a8 / embedding_wq; the message names the argument."""


def packed_cols(K: int, bits: int) -> int:
    return K // 2 if bits == 4 else K


def _check_table(op: str, qweight, scales, bits: int, group_size: int, K: int) -> int:
    def fail(msg):
        raise WeightOnlyArgumentError(f"{op}: {msg}")

    for name, t in (("qweight", qweight), ("scales", scales)):
        if not isinstance(t, torch.Tensor):
            fail(f"argument '{name}' must be a Tensor, got {type(t).__name__}")
    if bits not in (4, 8):
        fail(f"argument 'bits' must be 4 or 8, got {bits}")
    want = torch.int8 if bits == 8 else torch.uint8
    if qweight.dtype != want:
        fail(f"argument 'qweight' must be {want} for bits={bits}, got {qweight.dtype}")
    if qweight.dim() != 2:
        fail(f"argument 'qweight' must be 2D [N, {'K' if bits == 8 else 'K/2'}], got {qweight.dim()}D")
    if K < 1 or (bits == 4 and K % 2):
        fail(f"argument 'qweight': K={K} must be {'positive and even for bits=4' if bits == 4 else 'positive'}")
    if qweight.shape[1] != packed_cols(K, bits):
        fail(f"argument 'qweight' has shape {list(qweight.shape)}, must be [N, {packed_cols(K, bits)}] for K={K} "
             f"and bits={bits}")
    if group_size < 1 or K % group_size or (bits == 4 and group_size % 2):
        fail(f"argument 'group_size'={group_size} must divide K={K}{' and be even' if bits == 4 else ''}")
    if scales.dtype not in _SCALE_CODES:
        fail(f"argument 'scales' must be float32 or float16, got {scales.dtype}")
    N = qweight.shape[0]
    if tuple(scales.shape) != (N, K // group_size):
        fail(f"argument 'scales' has shape {list(scales.shape)}, must be [N, K/group_size] = {[N, K // group_size]}")
    for name, t in (("qweight", qweight), ("scales", scales)):
        if t.device.type not in ("cpu", "meta"):
            fail(f"argument '{name}' must be on the CPU, got {t.device}")
    return N


def validate_linear(x, qweight, scales, bits: int, group_size: int, out=None,
                    op: str = LINEAR_OP) -> tuple[int, int, int]:
    """Checks the linear_wq (and linear_wq_a8: op=LINEAR_A8_OP) contract; returns (M, N, K). Works on real, fake and
    meta tensors."""
    if not isinstance(x, torch.Tensor):
        raise WeightOnlyArgumentError(f"{op}: argument 'x' must be a Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise WeightOnlyArgumentError(f"{op}: argument 'x' must be float32, got {x.dtype}")
    if x.dim() < 1:
        raise WeightOnlyArgumentError(f"{op}: argument 'x' must be at least 1D [..., K], got 0D")
    if x.device.type not in ("cpu", "meta"):
        raise WeightOnlyArgumentError(f"{op}: argument 'x' must be on the CPU, got {x.device}")
    K = x.shape[-1]
    if bits == 4 and isinstance(qweight, torch.Tensor) and qweight.dim() == 2 and qweight.shape[1] * 2 != K:
        raise WeightOnlyArgumentError(f"{op}: argument 'qweight' has shape {list(qweight.shape)}, must be [N, K/2] = "
                                      f"[N, {K // 2}] for x's K={K}")
    N = _check_table(op, qweight, scales, bits, group_size, K)
    if out is not None:
        if out.dtype != torch.float32:
            raise WeightOnlyArgumentError(f"{op}: argument 'out' must be float32, got {out.dtype}")
        if tuple(out.shape) != (*x.shape[:-1], N):
            raise WeightOnlyArgumentError(f"{op}: argument 'out' has shape {list(out.shape)}, must be "
                                          f"{[*x.shape[:-1], N]}")
        if not out.is_contiguous():
            raise WeightOnlyArgumentError(f"{op}: argument 'out' must be contiguous")
    return x.numel() // K if K else 0, N, K


def validate_embedding(qweight, scales, indices, bits: int, group_size: int, out=None) -> tuple[int, int, int]:
    """Checks the embedding_wq contract (not the index range: that needs data, the C++ core checks it)."""
    op = EMBEDDING_OP
    if not isinstance(qweight, torch.Tensor) or qweight.dim() != 2:
        raise WeightOnlyArgumentError(f"{op}: argument 'qweight' must be a 2D Tensor [N, K or K/2]")
    K = qweight.shape[1] * (2 if bits == 4 else 1)
    N = _check_table(op, qweight, scales, bits, group_size, K)
    if not isinstance(indices, torch.Tensor):
        raise WeightOnlyArgumentError(f"{op}: argument 'indices' must be a Tensor, got {type(indices).__name__}")
    if indices.dtype != torch.int64:
        raise WeightOnlyArgumentError(f"{op}: argument 'indices' must be int64, got {indices.dtype}")
    if out is not None:
        if out.dtype != torch.float32:
            raise WeightOnlyArgumentError(f"{op}: argument 'out' must be float32, got {out.dtype}")
        if tuple(out.shape) != (*indices.shape, K):
            raise WeightOnlyArgumentError(f"{op}: argument 'out' has shape {list(out.shape)}, must be "
                                          f"{[*indices.shape, K]}")
        if not out.is_contiguous():
            raise WeightOnlyArgumentError(f"{op}: argument 'out' must be contiguous")
    return indices.numel(), N, K


# ----------------------------------------------------------------------------------------------- native --

_configured = False


def _lib() -> ctypes.CDLL:
    global _configured
    lib = load_library()
    if not _configured:
        for fn in (lib.qwen35_linear_wq, lib.qwen35_linear_wq_a8, lib.qwen35_embedding_wq):
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.POINTER(ctypes.c_int64), ctypes.c_int32, ctypes.c_int64,
                                                   ctypes.c_int32, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
        lib.qwen35_wq_et_kernels_registered.restype = ctypes.c_int32
        _configured = True
    return lib


def _run_linear(x, qweight, scales, bits, group_size, out, op: str = LINEAR_OP) -> None:
    M, N, K = validate_linear(x, qweight, scales, bits, group_size, out, op=op)
    if out.numel() == 0:
        return
    x, qweight, scales = x.contiguous(), qweight.contiguous(), scales.contiguous()
    err = ctypes.create_string_buffer(512)
    fn = _lib().qwen35_linear_wq_a8 if op == LINEAR_A8_OP else _lib().qwen35_linear_wq
    rc = fn(x.data_ptr(), qweight.data_ptr(), scales.data_ptr(), out.data_ptr(),
            (ctypes.c_int64 * 3)(M, N, K), bits, group_size, _SCALE_CODES[scales.dtype], torch.get_num_threads(),
            err, len(err))
    if rc != 0:
        raise WeightOnlyArgumentError(err.value.decode(errors="replace"))


def _run_embedding(qweight, scales, indices, bits, group_size, out) -> None:
    n, N, K = validate_embedding(qweight, scales, indices, bits, group_size, out)
    if out.numel() == 0:
        return
    qweight, scales, indices = qweight.contiguous(), scales.contiguous(), indices.contiguous()
    err = ctypes.create_string_buffer(512)
    rc = _lib().qwen35_embedding_wq(qweight.data_ptr(), scales.data_ptr(), indices.data_ptr(), out.data_ptr(),
                                    (ctypes.c_int64 * 3)(n, N, K), bits, group_size, _SCALE_CODES[scales.dtype],
                                    torch.get_num_threads(), err, len(err))
    if rc != 0:
        raise WeightOnlyArgumentError(err.value.decode(errors="replace"))


def et_kernels_registered() -> bool:
    """True if this process's copy of the library registered the weight-only ExecuTorch kernels."""
    return bool(_lib().qwen35_wq_et_kernels_registered())


# --------------------------------------------------------------------------------------------- torch ops --


def _define_ops() -> None:
    ns = getattr(torch.ops, "qwen35")
    if hasattr(ns, "linear_wq"):
        return  # defined already (e.g. this file imported under a second module name)
    lib = torch.library.Library("qwen35", "FRAGMENT")  # the namespace is DEF-ined by ops.py
    for schema in _SCHEMAS:
        lib.define(schema)

    def linear_eager(x, qweight, scales, bits, group_size):
        M, N, K = validate_linear(x, qweight, scales, bits, group_size)
        out = torch.empty((*x.shape[:-1], N), dtype=torch.float32)
        _run_linear(x, qweight, scales, bits, group_size, out)
        return out

    def linear_out_eager(x, qweight, scales, bits, group_size, *, out):
        _run_linear(x, qweight, scales, bits, group_size, out)
        return out

    def linear_a8_eager(x, qweight, scales, bits, group_size):
        _, N, _ = validate_linear(x, qweight, scales, bits, group_size, op=LINEAR_A8_OP)
        out = torch.empty((*x.shape[:-1], N), dtype=torch.float32)
        _run_linear(x, qweight, scales, bits, group_size, out, op=LINEAR_A8_OP)
        return out

    def linear_a8_out_eager(x, qweight, scales, bits, group_size, *, out):
        _run_linear(x, qweight, scales, bits, group_size, out, op=LINEAR_A8_OP)
        return out

    def embedding_eager(qweight, scales, indices, bits, group_size):
        n, N, K = validate_embedding(qweight, scales, indices, bits, group_size)
        out = torch.empty((*indices.shape, K), dtype=torch.float32)
        _run_embedding(qweight, scales, indices, bits, group_size, out)
        return out

    def embedding_out_eager(qweight, scales, indices, bits, group_size, *, out):
        _run_embedding(qweight, scales, indices, bits, group_size, out)
        return out

    lib.impl("linear_wq", linear_eager, "CompositeExplicitAutograd")
    lib.impl("linear_wq.out", linear_out_eager, "CompositeExplicitAutograd")
    lib.impl("linear_wq_a8", linear_a8_eager, "CompositeExplicitAutograd")
    lib.impl("linear_wq_a8.out", linear_a8_out_eager, "CompositeExplicitAutograd")
    lib.impl("embedding_wq", embedding_eager, "CompositeExplicitAutograd")
    lib.impl("embedding_wq.out", embedding_out_eager, "CompositeExplicitAutograd")

    @torch.library.register_fake("qwen35::linear_wq", lib=lib)
    def _(x, qweight, scales, bits, group_size):
        _, N, _ = validate_linear(x, qweight, scales, bits, group_size)
        return x.new_empty((*x.shape[:-1], N))

    @torch.library.register_fake("qwen35::linear_wq.out", lib=lib)
    def _(x, qweight, scales, bits, group_size, *, out):
        validate_linear(x, qweight, scales, bits, group_size, out)
        return out

    @torch.library.register_fake("qwen35::linear_wq_a8", lib=lib)
    def _(x, qweight, scales, bits, group_size):
        _, N, _ = validate_linear(x, qweight, scales, bits, group_size, op=LINEAR_A8_OP)
        return x.new_empty((*x.shape[:-1], N))

    @torch.library.register_fake("qwen35::linear_wq_a8.out", lib=lib)
    def _(x, qweight, scales, bits, group_size, *, out):
        validate_linear(x, qweight, scales, bits, group_size, out, op=LINEAR_A8_OP)
        return out

    @torch.library.register_fake("qwen35::embedding_wq", lib=lib)
    def _(qweight, scales, indices, bits, group_size):
        _, _, K = validate_embedding(qweight, scales, indices, bits, group_size)
        return scales.new_empty((*indices.shape, K), dtype=torch.float32)

    @torch.library.register_fake("qwen35::embedding_wq.out", lib=lib)
    def _(qweight, scales, indices, bits, group_size, *, out):
        validate_embedding(qweight, scales, indices, bits, group_size, out)
        return out

    globals()["_torch_library"] = lib  # keep the registrations alive


_define_ops()
