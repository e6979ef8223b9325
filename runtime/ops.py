"""``qwen35::gated_delta_rule``: schema, argument checks, fake kernel and eager kernel.

Contract (also in ``kernels/gated_delta_rule.h`` and ``runtime/README.md``)::

    qwen35::gated_delta_rule(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta,
                             Tensor(a!) state, bool use_qk_l2norm=True) -> Tensor

    q, k   [B, T, Hk, K]   float32 / float16 / bfloat16
    v      [B, T, Hv, V]   float32 / float16 / bfloat16; Hv a multiple of Hk, value head j
                           reads key head j // (Hv // Hk) (repeat_interleave, never tiled)
    g      [B, T, Hv]      log-decay (<= 0); exp(g) is applied inside the kernel
    beta   [B, T, Hv]      write strength (already sigmoid-ed)
    state  [B, Hv, K, V]   float32, contiguous, updated in place
    return [B, T, Hv, V]   dtype of v

Semantics: transformers' ``torch_recurrent_gated_delta_rule(q', k', v, g, beta,
initial_state=state, output_final_state=True, use_qk_l2norm_in_kernel=use_qk_l2norm)`` with q', k'
the head-repeated q, k: l2norm (``x * rsqrt(sum(x^2) + 1e-6)``) when asked, then q / sqrt(K);
accumulation and state in float32. T == 1 runs the fused decode step, T > 1 the chunked (WY) form.

The ``.out`` overload (``*, Tensor(b!) out``) is what ExecuTorch's ``ToOutVarPass`` maps the op to;
the native kernel registered for ExecuTorch is ``qwen35::gated_delta_rule.out``.

Both the eager torch kernel and the ExecuTorch kernel run the same C++ core
(``kernels/gated_delta_rule.cpp``); eager torch calls it through ctypes on contiguous tensors. Defining the op needs
no native code: the library (library.py) is built and loaded on the first eager call, not at import.
"""

from __future__ import annotations

import ctypes

import torch

from .library import load_library

__all__ = [
    "OP_NAME",
    "ET_KERNEL_NAME",
    "GatedDeltaRuleArgumentError",
    "isa_name",
    "chunk_size",
    "set_chunk_size",
    "force_portable",
    "validate_args",
]

OP_NAME = "qwen35::gated_delta_rule"
ET_KERNEL_NAME = "qwen35::gated_delta_rule.out"

_SCHEMA = (
    "gated_delta_rule(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor(a!) state, "
    "bool use_qk_l2norm=True) -> Tensor"
)
_SCHEMA_OUT = (
    "gated_delta_rule.out(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor(a!) state, "
    "bool use_qk_l2norm=True, *, Tensor(b!) out) -> Tensor(b!)"
)

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class GatedDeltaRuleArgumentError(ValueError):
    """A bad argument to qwen35::gated_delta_rule; the message names the argument."""


# --------------------------------------------------------------------------------- validation --


def _fail(msg: str):
    raise GatedDeltaRuleArgumentError(f"{OP_NAME}: {msg}")


def validate_args(q, k, v, g, beta, state, out=None) -> tuple[int, int, int, int, int, int]:
    """Checks the contract; raises GatedDeltaRuleArgumentError naming the argument.

    Returns (B, T, Hk, Hv, K, V). Works on real, fake and meta tensors (no data access).
    """
    named = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "state": state}
    if out is not None:
        named["out"] = out
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            _fail(f"argument '{name}' must be a Tensor, got {type(t).__name__}")
    for name in ("q", "k", "v", "g", "beta"):
        if named[name].dtype not in _DTYPE_CODES:
            _fail(f"argument '{name}' must be float32, float16 or bfloat16, got {named[name].dtype}")
    if state.dtype != torch.float32:
        _fail(f"argument 'state' must be float32, got {state.dtype}")
    if out is not None and out.dtype != v.dtype:
        _fail(f"argument 'out' must have v's dtype {v.dtype}, got {out.dtype}")
    for name, rank, layout in (
        ("q", 4, "[B, T, Hk, K]"),
        ("k", 4, "[B, T, Hk, K]"),
        ("v", 4, "[B, T, Hv, V]"),
        ("g", 3, "[B, T, Hv]"),
        ("beta", 3, "[B, T, Hv]"),
        ("state", 4, "[B, Hv, K, V]"),
    ):
        if named[name].dim() != rank:
            _fail(f"argument '{name}' must be {rank}D {layout}, got {named[name].dim()}D")
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    if tuple(k.shape) != tuple(q.shape):
        _fail(f"argument 'k' has shape {list(k.shape)}, must equal q's {list(q.shape)} [B, T, Hk, K]")
    if v.shape[0] != B or v.shape[1] != T:
        _fail(f"argument 'v' has shape {list(v.shape)}, its B, T must match q's ({B}, {T})")
    if Hv < 1 or V < 1 or Hv % Hk != 0:
        _fail(f"argument 'v' has Hv={Hv} value heads, must be a positive multiple of Hk={Hk}")
    for name in ("g", "beta"):
        if tuple(named[name].shape) != (B, T, Hv):
            _fail(f"argument '{name}' has shape {list(named[name].shape)}, must be [B, T, Hv] = {[B, T, Hv]}")
    if tuple(state.shape) != (B, Hv, K, V):
        _fail(f"argument 'state' has shape {list(state.shape)}, must be [B, Hv, K, V] = {[B, Hv, K, V]}")
    if out is not None and tuple(out.shape) != (B, T, Hv, V):
        _fail(f"argument 'out' has shape {list(out.shape)}, must be [B, T, Hv, V] = {[B, T, Hv, V]}")
    # state is updated in place, so it cannot be silently copied to a contiguous buffer.
    if not state.is_contiguous():
        _fail("argument 'state' must be contiguous")
    if out is not None and not out.is_contiguous():
        _fail("argument 'out' must be contiguous")
    for name, t in named.items():
        if t.device.type not in ("cpu", "meta"):
            _fail(f"argument '{name}' must be on the CPU, got {t.device}")
    if out is not None and out.device.type == "cpu" and state.device.type == "cpu":
        try:  # fake/functional tensors have no data pointer; real ones are checked here
            s0, o0 = state.data_ptr(), out.data_ptr()
        except RuntimeError:
            s0 = o0 = None
        if s0 is not None and o0 is not None:
            s1 = s0 + state.numel() * state.element_size()
            o1 = o0 + out.numel() * out.element_size()
            if out.numel() and state.numel() and o0 < s1 and s0 < o1:
                _fail("argument 'out' must not alias 'state'")
    return B, T, Hk, Hv, K, V


# ------------------------------------------------------------------------------- native kernel --

_configured = False


def _lib() -> ctypes.CDLL:
    """The native library (library.py builds and loads it on the first call), with this op's entry points bound."""
    global _configured
    lib = load_library()
    if not _configured:
        lib.qwen35_gated_delta_rule.restype = ctypes.c_int
        lib.qwen35_gated_delta_rule.argtypes = [ctypes.c_void_p] * 7 + [
            ctypes.POINTER(ctypes.c_int32),
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.qwen35_isa_name.restype = ctypes.c_char_p
        lib.qwen35_chunk_size.restype = ctypes.c_int64
        lib.qwen35_set_chunk_size.argtypes = [ctypes.c_int64]
        lib.qwen35_set_isa.argtypes = [ctypes.c_int32]
        _configured = True
    return lib


def isa_name() -> str:
    """SIMD path the kernel takes on this CPU: 'avx2+fma', 'neon' or 'portable'."""
    return _lib().qwen35_isa_name().decode()


def chunk_size() -> int:
    return int(_lib().qwen35_chunk_size())


def set_chunk_size(c: int) -> None:
    """Chunk size for T > 1 (benchmarking); 0 restores the tuned default, 1 forces the recurrence."""
    _lib().qwen35_set_chunk_size(int(c))


def last_run_slabs() -> int:
    """How many parallel slabs the last gated_delta_rule call was split into (1: the calling thread alone). Tests."""
    fn = _lib().qwen35_last_run_slabs  # bound here, so a library built before this hook still loads
    fn.restype = ctypes.c_int64
    return int(fn())


def force_portable(flag: bool) -> None:
    """Use the portable/NEON path even where AVX2 is available (tests and benchmarks)."""
    _lib().qwen35_set_isa(1 if flag else 0)


# ------------------------------------------------------------------------------ torch library --


def _run_native(q, k, v, g, beta, state, out, use_qk_l2norm: bool) -> None:
    B, T, Hk, Hv, K, V = validate_args(q, k, v, g, beta, state, out)
    if out.numel() == 0:
        return
    lib = _lib()
    q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
    dtypes = (ctypes.c_int32 * 6)(*(_DTYPE_CODES[t.dtype] for t in (q, k, v, g, beta, out)))
    dims = (ctypes.c_int64 * 6)(B, T, Hk, Hv, K, V)
    err = ctypes.create_string_buffer(512)
    rc = lib.qwen35_gated_delta_rule(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        g.data_ptr(),
        beta.data_ptr(),
        state.data_ptr(),
        out.data_ptr(),
        dtypes,
        dims,
        int(bool(use_qk_l2norm)),
        torch.get_num_threads(),
        err,
        len(err),
    )
    if rc != 0:
        raise GatedDeltaRuleArgumentError(err.value.decode(errors="replace"))


def _define_ops() -> None:
    ns = getattr(torch.ops, "qwen35")
    if hasattr(ns, "gated_delta_rule"):
        return  # defined already (e.g. this file imported under a second module name)
    lib = torch.library.Library("qwen35", "DEF")
    lib.define(_SCHEMA)
    lib.define(_SCHEMA_OUT)

    def gated_delta_rule_eager(q, k, v, g, beta, state, use_qk_l2norm=True):
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        _run_native(q, k, v, g, beta, state, out, use_qk_l2norm)
        return out

    def gated_delta_rule_out_eager(q, k, v, g, beta, state, use_qk_l2norm=True, *, out):
        _run_native(q, k, v, g, beta, state, out, use_qk_l2norm)
        return out

    lib.impl("gated_delta_rule", gated_delta_rule_eager, "CompositeExplicitAutograd")
    lib.impl("gated_delta_rule.out", gated_delta_rule_out_eager, "CompositeExplicitAutograd")

    @torch.library.register_fake("qwen35::gated_delta_rule", lib=lib)
    def _(q, k, v, g, beta, state, use_qk_l2norm=True):
        validate_args(q, k, v, g, beta, state)
        return v.new_empty(v.shape)

    @torch.library.register_fake("qwen35::gated_delta_rule.out", lib=lib)
    def _(q, k, v, g, beta, state, use_qk_l2norm=True, *, out):
        validate_args(q, k, v, g, beta, state, out)
        return out

    globals()["_torch_library"] = lib  # keep the registrations alive


_define_ops()
