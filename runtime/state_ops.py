"""The state ops (schema, fake and eager kernels): ``qwen35::kv_cache_update`` writes T new rows into a static KV
cache in place; ``qwen35::reset_state`` zeroes a state buffer in place when a sequence starts.

Contract (also in ``kernels/state_ops.h`` and ``runtime/README.md``, "State ops")::

    qwen35::kv_cache_update(Tensor(a!) cache, Tensor values, Tensor input_pos) -> Tensor

    cache      [B, H, S, D]  float32 / float16 / bfloat16; updated in place
    values     [B, H, T, D]  cache's dtype
    input_pos  [T] int64, each in [0, S)
    cache[b, h, input_pos[t], :] = values[b, h, t, :]; returns a [1] tensor of cache's dtype holding 0

    qwen35::reset_state(Tensor(a!) state, Tensor input_pos) -> Tensor

    state      any shape, float32 / float16 / bfloat16
    input_pos  [T] int64, T >= 1
    if input_pos[0] == 0 every element of state becomes +0.0 (NaN and inf too); returns [1] zeros like above

Why: the attention's ``cache.index_copy_(2, pos, v)`` exports as a functional ``index_put`` that ExecuTorch runs into a
fresh whole-cache tensor and then copies back into the buffer, two whole-cache copies per layer and token. A mutating
custom op keeps the write in place (``kernels/state_ops.h``). The exporter switches the attention layers to this op
(``export/transforms/kv_cache.py``: ``kv_cache_op``); eager runs keep ``index_copy_``, which is also the tests' reference.
The returned [1] tensor is there because ExecuTorch's out-variant pass needs a tensor result; nothing reads it.
``reset_state`` replaces ``buf.copy_(torch.where(input_pos[:1] == 0, 0, buf))`` in the exported ``forward``, which ran
a broadcasting portable ``where`` over every state buffer into a new tensor, plus a copy back, on every prefill chunk;
the op writes only when the chunk starts a sequence, in place (``export/lowering.py: PrefillEntry``).
"""

from __future__ import annotations

import ctypes

import torch

from .library import load_library

__all__ = ["OP_NAME", "RESET_OP_NAME", "ET_KERNEL_NAMES", "KvCacheArgumentError", "StateArgumentError",
           "validate_kv_cache_update", "validate_reset_state"]

OP_NAME = "qwen35::kv_cache_update"
RESET_OP_NAME = "qwen35::reset_state"
ET_KERNEL_NAMES = ("qwen35::kv_cache_update.out", "qwen35::reset_state.out")
_SCHEMAS = (
    "kv_cache_update(Tensor(a!) cache, Tensor values, Tensor input_pos) -> Tensor",
    "kv_cache_update.out(Tensor(a!) cache, Tensor values, Tensor input_pos, *, Tensor(b!) out) -> Tensor(b!)",
    "reset_state(Tensor(a!) state, Tensor input_pos) -> Tensor",
    "reset_state.out(Tensor(a!) state, Tensor input_pos, *, Tensor(b!) out) -> Tensor(b!)",
)
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class StateArgumentError(ValueError):
    """A bad argument to qwen35::kv_cache_update or qwen35::reset_state; the message names the argument."""


KvCacheArgumentError = StateArgumentError  # the name the KV op's callers know


def _failer(op: str):
    def fail(msg):
        raise StateArgumentError(f"{op}: {msg}")

    return fail


def _check_cpu_tensors(fail, **tensors) -> None:
    """Every argument is a Tensor on the CPU (or meta, under export)."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            fail(f"argument '{name}' must be a Tensor, got {type(t).__name__}")
        if t.device.type not in ("cpu", "meta"):
            fail(f"argument '{name}' must be on the CPU, got {t.device}")


def validate_reset_state(state, input_pos) -> tuple[int, int]:
    """Checks reset_state's contract (shapes and dtypes); returns (numel, T). Works on real, fake and meta tensors."""
    fail = _failer(RESET_OP_NAME)
    _check_cpu_tensors(fail, state=state, input_pos=input_pos)
    if state.dtype not in _DTYPE_CODES:
        fail(f"argument 'state' must be float32, float16 or bfloat16, got {state.dtype}")
    if not state.is_contiguous():
        fail("argument 'state' must be contiguous")
    if input_pos.dtype != torch.int64:
        fail(f"argument 'input_pos' must be int64, got {input_pos.dtype}")
    if input_pos.dim() != 1 or input_pos.shape[0] < 1:
        fail(f"argument 'input_pos' has shape {list(input_pos.shape)}, must be [T] with T >= 1")
    return state.numel(), input_pos.shape[0]


def validate_kv_cache_update(cache, values, input_pos) -> tuple[int, int, int, int, int]:
    """Checks the contract's shapes and dtypes (not input_pos' values, which fake tensors do not have); returns
    (B, H, S, T, D). Works on real, fake and meta tensors."""
    fail = _failer(OP_NAME)
    _check_cpu_tensors(fail, cache=cache, values=values, input_pos=input_pos)
    if cache.dtype not in _DTYPE_CODES:
        fail(f"argument 'cache' must be float32, float16 or bfloat16, got {cache.dtype}")
    if cache.dim() != 4:
        fail(f"argument 'cache' must be 4D [B, H, S, D], got {cache.dim()}D")
    if values.dtype != cache.dtype:
        fail(f"argument 'values' must have cache's dtype {cache.dtype}, got {values.dtype}")
    B, H, S, D = cache.shape
    if values.dim() != 4 or (values.shape[0], values.shape[1], values.shape[3]) != (B, H, D):
        fail(f"argument 'values' has shape {list(values.shape)}, must be [B, H, T, D] with cache's B, H, D "
             f"(cache {list(cache.shape)})")
    T = values.shape[2]
    if input_pos.dtype != torch.int64:
        fail(f"argument 'input_pos' must be int64, got {input_pos.dtype}")
    if input_pos.dim() != 1 or input_pos.shape[0] != T:
        fail(f"argument 'input_pos' has shape {list(input_pos.shape)}, must be [T] = [{T}] (values' T)")
    if not cache.is_contiguous():
        fail("argument 'cache' must be contiguous")
    return B, H, S, T, D


_configured = False


def _lib():
    global _configured
    lib = load_library()
    if not _configured:
        lib.qwen35_kv_cache_update.restype = ctypes.c_int
        lib.qwen35_kv_cache_update.argtypes = [ctypes.c_void_p] * 3 + [ctypes.POINTER(ctypes.c_int64), ctypes.c_int32,
                                                                       ctypes.c_char_p, ctypes.c_size_t]
        lib.qwen35_reset_state.restype = ctypes.c_int
        lib.qwen35_reset_state.argtypes = [ctypes.c_void_p] * 2 + [ctypes.POINTER(ctypes.c_int64), ctypes.c_int32,
                                                                   ctypes.POINTER(ctypes.c_int32), ctypes.c_char_p,
                                                                   ctypes.c_size_t]
        lib.qwen35_state_et_kernels_registered.restype = ctypes.c_int32
        _configured = True
    return lib


def et_kernels_registered() -> bool:
    """True if this process's copy of the library registered the state ops' ExecuTorch kernels."""
    return bool(_lib().qwen35_state_et_kernels_registered())


def _run(cache, values, input_pos) -> None:
    B, H, S, T, D = validate_kv_cache_update(cache, values, input_pos)
    if cache.numel() == 0 or T == 0:
        return
    values, input_pos = values.contiguous(), input_pos.contiguous()
    err = ctypes.create_string_buffer(512)
    rc = _lib().qwen35_kv_cache_update(cache.data_ptr(), values.data_ptr(), input_pos.data_ptr(),
                                       (ctypes.c_int64 * 5)(B, H, S, T, D), _DTYPE_CODES[cache.dtype], err, len(err))
    if rc != 0:
        raise StateArgumentError(err.value.decode(errors="replace"))


def _run_reset(state, input_pos) -> None:
    numel, T = validate_reset_state(state, input_pos)
    input_pos = input_pos.contiguous()
    err = ctypes.create_string_buffer(512)
    rc = _lib().qwen35_reset_state(state.data_ptr(), input_pos.data_ptr(), (ctypes.c_int64 * 2)(numel, T),
                                   _DTYPE_CODES[state.dtype], None, err, len(err))
    if rc != 0:
        raise StateArgumentError(err.value.decode(errors="replace"))


def _define_ops() -> None:
    ns = getattr(torch.ops, "qwen35")
    if hasattr(ns, "kv_cache_update"):
        return  # defined already (e.g. this file imported under a second module name)
    lib = torch.library.Library("qwen35", "FRAGMENT")  # the namespace is DEF-ined by ops.py
    for schema in _SCHEMAS:
        lib.define(schema)

    def update_eager(cache, values, input_pos):
        _run(cache, values, input_pos)
        return cache.new_zeros(1)

    def update_out_eager(cache, values, input_pos, *, out):
        _run(cache, values, input_pos)
        return out.zero_()

    def reset_eager(state, input_pos):
        _run_reset(state, input_pos)
        return state.new_zeros(1)

    def reset_out_eager(state, input_pos, *, out):
        _run_reset(state, input_pos)
        return out.zero_()

    lib.impl("kv_cache_update", update_eager, "CompositeExplicitAutograd")
    lib.impl("kv_cache_update.out", update_out_eager, "CompositeExplicitAutograd")
    lib.impl("reset_state", reset_eager, "CompositeExplicitAutograd")
    lib.impl("reset_state.out", reset_out_eager, "CompositeExplicitAutograd")

    @torch.library.register_fake("qwen35::reset_state", lib=lib)
    def _(state, input_pos):
        validate_reset_state(state, input_pos)
        return state.new_empty(1)

    @torch.library.register_fake("qwen35::reset_state.out", lib=lib)
    def _(state, input_pos, *, out):
        validate_reset_state(state, input_pos)
        return out

    @torch.library.register_fake("qwen35::kv_cache_update", lib=lib)
    def _(cache, values, input_pos):
        validate_kv_cache_update(cache, values, input_pos)
        return cache.new_empty(1)

    @torch.library.register_fake("qwen35::kv_cache_update.out", lib=lib)
    def _(cache, values, input_pos, *, out):
        validate_kv_cache_update(cache, values, input_pos)
        return out

    globals()["_torch_library"] = lib  # keep the registrations alive


_define_ops()
