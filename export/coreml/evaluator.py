"""A numpy evaluator for the MIL programs our Core ML export writes, reading the saved `.mlpackage` itself.

`MLModel.predict` needs macOS. On Linux this runs the package's own program: the saved protobuf and weight blob are
loaded back into MIL (coremltools' milproto loader), then every operation is computed by a numpy implementation
written here from the MIL op definitions (not by coremltools' value inference), in float64 and rounded to the dtype
the op declares. An fp32 program therefore matches eager fp32 to round-off, and an fp16 program rounds every
intermediate tensor to fp16 as Core ML stores it; how the Neural Engine or GPU accumulate inside one op is not
modelled, so fp16 numbers here approximate the device and the final word is `scripts/verify_coreml_on_mac.py`.

An op type without an implementation raises `UnsupportedMILOp` naming it: nothing is ever skipped.

    model = MILModel("bundle/model.mlpackage")
    state = model.new_state()                      # zeros, as fp16 arrays
    out = model.run("decode", {"tokens": ..., "input_pos": ...}, state)   # dict of outputs; state updated in place
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


class UnsupportedMILOp(NotImplementedError):
    """The program holds an operation this evaluator does not implement."""


_DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int32": np.int32, "int64": np.int64,
           "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "int4": np.int8,
           "uint4": np.uint8, "uint16": np.uint16}


def _np_dtype(mil_dtype) -> type:
    from coremltools.converters.mil.mil import types

    name = types.builtin_to_string(mil_dtype)
    if name not in _DTYPES:
        raise UnsupportedMILOp(f"MIL dtype {name!r} is not handled by the numpy evaluator")
    return _DTYPES[name]


class MILModel:
    """The functions, inputs, outputs and states of a saved ML program (`.mlpackage`)."""

    def __init__(self, path: str | Path):
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

        self.path = Path(path)
        self.spec = ct.models.MLModel(str(self.path), skip_model_load=True).get_spec()
        weights = self.path / "Data" / "com.apple.CoreML" / "weights"
        self.program = load_milproto(self.spec, self.spec.specificationVersion, str(weights))
        self.functions = dict(self.program.functions)

    def state_specs(self) -> dict[str, tuple[tuple[int, ...], type]]:
        """name -> (shape, dtype) of every state a function declares (the union over functions)."""
        from coremltools.converters.mil.mil import types

        specs = {}
        for fn in self.functions.values():
            for name, var in fn.inputs.items():
                if types.is_state(var.sym_type):
                    wrapped = var.sym_type.wrapped_type()
                    specs[name] = (tuple(int(d) for d in wrapped.get_shape()), _np_dtype(wrapped.get_primitive()))
        return specs

    def new_state(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape, dtype) for name, (shape, dtype) in self.state_specs().items()}

    def op_histogram(self, function: str | None = None) -> dict[str, int]:
        hist: dict[str, int] = {}
        for name, fn in self.functions.items():
            if function is None or name == function:
                for op in fn.operations:
                    hist[op.op_type] = hist.get(op.op_type, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: -kv[1]))

    def run(self, function: str, inputs: dict[str, np.ndarray], state: dict[str, np.ndarray] | None = None
            ) -> dict[str, np.ndarray]:
        """Evaluate one function; `state` arrays are read and overwritten in place, as Core ML's MLState."""
        from coremltools.converters.mil.mil import types

        if function not in self.functions:
            raise KeyError(f"{self.path.name} has no function {function!r}; it has {sorted(self.functions)}")
        fn = self.functions[function]
        env: dict[str, object] = {}
        for name, var in fn.inputs.items():
            if types.is_state(var.sym_type):
                if state is None or name not in state:
                    raise KeyError(f"function {function!r} needs state {name!r}")
                env[name] = _StateRef(state, name)
                continue
            if name not in inputs:
                raise KeyError(f"function {function!r} needs input {name!r}")
            arr = np.asarray(inputs[name])
            want = tuple(int(d) for d in var.shape)
            if arr.shape != want:
                raise ValueError(f"input {name!r}: shape {arr.shape}, the function declares {want}")
            env[name] = arr.astype(_np_dtype(var.dtype))
        for op in fn.operations:
            _run_op(op, env)
        return {var.name: env[var.name] for var in fn.outputs}


class _StateRef:
    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name


def _value(var, env):
    if var.name in env:
        return env[var.name]
    if var.val is not None:
        return np.asarray(var.val)
    raise RuntimeError(f"MIL var {var.name!r} has no value (not computed yet and not a constant)")


def _run_op(op, env) -> None:
    if op.op_type == "const":
        env[op.outputs[0].name] = np.asarray(op.outputs[0].val)
        return
    impl = _OPS.get(op.op_type)
    if impl is None:
        raise UnsupportedMILOp(f"MIL op {op.op_type!r} (op {op.name!r}) has no numpy implementation in "
                               f"export/coreml/evaluator.py; add one before trusting this program")
    if op.blocks:
        raise UnsupportedMILOp(f"MIL op {op.op_type!r} ({op.name!r}) has nested blocks (control flow)")
    args = {}
    for name, var in op.inputs.items():
        args[name] = [_value(v, env) for v in var] if isinstance(var, (list, tuple)) else _value(var, env)
    result = impl(**args)
    results = result if isinstance(result, tuple) else (result,)
    if len(results) != len(op.outputs):
        raise RuntimeError(f"{op.op_type} ({op.name}): {len(results)} results for {len(op.outputs)} outputs")
    for var, value in zip(op.outputs, results):
        value = np.asarray(value)
        dtype = _np_dtype(var.dtype)
        expect = tuple(var.shape)
        if value.shape != expect and all(isinstance(d, (int, np.integer)) for d in expect):
            raise RuntimeError(f"{op.op_type} ({op.name}): computed shape {value.shape}, declared {expect}")
        env[var.name] = value.astype(dtype)


# ------------------------------------------------------------------------------------------- op semantics --
# Float math runs in float64; _run_op rounds to the declared output dtype.

def _f(x):
    x = np.asarray(x)
    return x.astype(np.float64) if x.dtype.kind == "f" else x


def _binary(fn):
    return lambda x, y: fn(_f(x), _f(y))


def _axes(axes, rank):
    return None if axes is None else tuple(int(a) % rank for a in np.atleast_1d(axes))


def _reduce(fn):
    def run(x, axes=None, keep_dims=False):
        x = _f(x)
        return fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims))
    return run


def _matmul(x, y, transpose_x=False, transpose_y=False):
    x, y = _f(x), _f(y)
    if transpose_x:
        x = np.swapaxes(x, -1, -2)
    if transpose_y:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _linear(x, weight, bias=None):
    out = np.matmul(_f(x), _f(weight).T)
    return out if bias is None else out + _f(bias)


def _reshape(x, shape):
    shape = [int(s) for s in np.atleast_1d(shape)]
    if len(shape) == np.ndim(x):
        shape = [np.shape(x)[i] if s == 0 else s for i, s in enumerate(shape)]  # 0 inherits the input dim
    return np.reshape(x, shape)


def _slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    rank = np.ndim(x)
    stride = np.ones(rank, int) if stride is None else np.asarray(stride)
    begin_mask = np.zeros(rank, bool) if begin_mask is None else np.asarray(begin_mask)
    end_mask = np.zeros(rank, bool) if end_mask is None else np.asarray(end_mask)
    squeeze_mask = np.zeros(rank, bool) if squeeze_mask is None else np.asarray(squeeze_mask)
    index = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(int(begin[i]))
            continue
        b = None if begin_mask[i] else int(begin[i])
        e = None if end_mask[i] else int(end[i])
        index.append(slice(b, e, int(stride[i])))
    return np.asarray(x)[tuple(index)]


def _squeeze(x, axes=None):
    x = np.asarray(x)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=_axes(axes, x.ndim))


def _expand_dims(x, axes):
    x = np.asarray(x)
    out_rank = x.ndim + len(np.atleast_1d(axes))
    return np.expand_dims(x, tuple(int(a) % out_rank for a in np.atleast_1d(axes)))


def _softmax(x, axis=-1):
    x = _f(x)
    e = np.exp(x - x.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


def _gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    if int(batch_dims):
        raise UnsupportedMILOp("gather with batch_dims > 0")
    indices = np.asarray(indices).astype(np.int64)
    size = np.shape(x)[int(axis)]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"gather: index out of range [-{size}, {size})")
    return np.take(x, indices, axis=int(axis))


def _concat(values, axis, interleave=False):
    if interleave:
        raise UnsupportedMILOp("concat with interleave=True")
    return np.concatenate(values, axis=int(axis))


def _split(x, num_splits=None, split_sizes=None, axis=0):
    axis = int(axis) % np.ndim(x)
    if split_sizes is not None:
        cuts = np.cumsum(np.asarray(split_sizes))[:-1]
    else:
        cuts = int(num_splits)
    return tuple(np.split(x, cuts, axis=axis))


def _conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    """1-D or 2-D convolution; x [N,Cin,*S], weight [Cout,Cin/groups,*K]. Enough for the depthwise causal conv."""
    x, w = _f(x), _f(weight)
    spatial = x.ndim - 2
    if spatial != 1:
        raise UnsupportedMILOp(f"conv with {spatial} spatial dims (only 1-D is implemented)")
    strides = [1] if strides is None else list(strides)
    dilations = [1] if dilations is None else list(dilations)
    if pad_type not in ("valid", "custom") or strides != [1] or dilations != [1]:
        raise UnsupportedMILOp(f"conv with pad_type={pad_type}, strides={strides}, dilations={dilations}")
    if pad_type == "custom" and pad is not None and any(int(p) for p in pad):
        x = np.pad(x, ((0, 0), (0, 0), (int(pad[0]), int(pad[1]))))
    groups = int(groups)
    n, cin, length = x.shape
    cout, cin_g, k = w.shape
    out_len = length - k + 1
    xg = x.reshape(n, groups, cin // groups, length)  # [N,G,Cin/G,L]
    wg = w.reshape(groups, cout // groups, cin_g, k)  # [G,Cout/G,Cin/G,K]
    windows = np.stack([xg[..., j:j + out_len] for j in range(k)], axis=-1)  # [N,G,Cin/G,Lout,K]
    out = np.einsum("ngclk,gock->ngol", windows, wg).reshape(n, cout, out_len)  # [N,Cout,Lout]
    return out if bias is None else out + _f(bias)[None, :, None]


def _pad(x, pad, mode="constant", constant_val=0.0):
    if mode != "constant":
        raise UnsupportedMILOp(f"pad mode {mode!r}")
    pad = np.asarray(pad).reshape(-1, 2)
    width = [(0, 0)] * (np.ndim(x) - len(pad)) + [tuple(int(v) for v in p) for p in pad]
    return np.pad(_f(x), width, constant_values=float(constant_val))


def _cast(x, dtype):
    if str(dtype) not in _DTYPES:
        raise UnsupportedMILOp(f"cast to {dtype!r}")
    return np.asarray(x).astype(_DTYPES[str(dtype)])


def _read_state(input):  # noqa: A002 (MIL's argument name)
    return input.store[input.name]


def _update_state(state, value):
    store = state.store
    store[state.name][...] = np.asarray(value).astype(store[state.name].dtype)
    return store[state.name].copy()


def _expand_blocks(arr, shape):
    """Repeat a per-block tensor (scale, offset) along every axis up to `shape` (MIL blockwise broadcasting)."""
    arr = np.asarray(arr)
    for axis, (have, want) in enumerate(zip(arr.shape, shape)):
        if want % have:
            raise ValueError(f"block tensor {arr.shape} does not tile {shape} on axis {axis}")
        arr = np.repeat(arr, want // have, axis=axis)
    return arr


def _blockwise_shift_scale(data, scale, offset=None):
    data = _f(np.asarray(data).astype(np.int64) if np.asarray(data).dtype.kind in "iu" else data)
    if offset is not None:
        data = data - _f(_expand_blocks(offset, data.shape).astype(np.float64))
    return data * _f(_expand_blocks(scale, data.shape))


def _affine_dequantize(quantized_data, zero_point, scale, axis):
    q = np.asarray(quantized_data).astype(np.float64)
    shape = [1] * q.ndim
    axis = int(axis) % q.ndim

    def along(v):
        v = np.asarray(v).astype(np.float64)
        if v.ndim == 0:
            return v
        s = list(shape)
        s[axis] = -1
        return v.reshape(s)

    return (q - along(zero_point)) * along(scale)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-_f(x)))


_erf = np.frompyfunc(math.erf, 1, 1)  # float64 erf; numpy has none, and scipy is not a dependency


def _gelu(x, mode="EXACT"):
    """MIL gelu (the vision merger's nn.GELU converts to mode EXACT)."""
    x = _f(x)
    mode = str(mode)
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    raise UnsupportedMILOp(f"gelu mode {mode!r}")


def _layer_norm(x, axes, gamma=None, beta=None, epsilon=1e-5):
    """MIL layer_norm: (x - mean) / sqrt(var + epsilon) over `axes` (biased variance), then * gamma + beta."""
    x = _f(x)
    axes = _axes(axes, x.ndim)
    centred = x - x.mean(axis=axes, keepdims=True)
    y = centred / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + float(epsilon))
    if gamma is not None:
        y = y * _f(gamma)
    return y + _f(beta) if beta is not None else y


_OPS = {
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.divide), "pow": _binary(np.power),
    "maximum": _binary(np.maximum), "minimum": _binary(np.minimum),
    "equal": _binary(np.equal), "not_equal": _binary(np.not_equal), "less": _binary(np.less),
    "less_equal": _binary(np.less_equal), "greater": _binary(np.greater), "greater_equal": _binary(np.greater_equal),
    "logical_and": _binary(np.logical_and), "logical_or": _binary(np.logical_or),
    "logical_not": lambda x: np.logical_not(x),
    "select": lambda cond, a, b: np.where(np.asarray(cond).astype(bool), _f(a), _f(b)),
    "exp": lambda x: np.exp(_f(x)),
    "log": lambda x, epsilon=1e-45: np.log(_f(x) + float(epsilon)),
    "sqrt": lambda x: np.sqrt(_f(x)),
    "rsqrt": lambda x, epsilon=1e-12: 1.0 / np.sqrt(_f(x) + float(epsilon)),
    "abs": lambda x: np.abs(_f(x)),
    "relu": lambda x: np.maximum(_f(x), 0.0),
    "sigmoid": _sigmoid,
    "silu": lambda x: _f(x) * _sigmoid(x),
    "gelu": _gelu,
    "tanh": lambda x: np.tanh(_f(x)),
    "softmax": _softmax, "layer_norm": _layer_norm,
    "reduce_sum": _reduce(np.sum), "reduce_mean": _reduce(np.mean), "reduce_max": _reduce(np.max),
    "matmul": _matmul, "linear": _linear,
    "reshape": _reshape,
    "identity": lambda x: np.asarray(x),  # what a function keeps of an input it does not use (rope_pos, no attention)
    "transpose": lambda x, perm: np.transpose(x, [int(p) for p in perm]),
    "slice_by_index": _slice_by_index,
    "squeeze": _squeeze, "expand_dims": _expand_dims,
    "concat": _concat, "split": _split,
    "stack": lambda values, axis: np.stack(values, axis=int(axis)),
    "tile": lambda x, reps: np.tile(x, [int(r) for r in reps]),
    "gather": _gather,
    "conv": _conv, "pad": _pad, "cast": _cast,
    "read_state": _read_state, "coreml_update_state": _update_state,
    "constexpr_blockwise_shift_scale": _blockwise_shift_scale,
    "constexpr_affine_dequantize": _affine_dequantize,
}

SUPPORTED_OPS = tuple(sorted(_OPS))
