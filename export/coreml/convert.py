"""torch -> Core ML: convert the prefill and decode functions, quantize, merge them into one multifunction package.

Both functions are converted from the same `CoreMLDecoder` (static T: `prefill_chunk` tokens and 1 token), quantized
with the same config, then merged by `ct.utils.save_multifunction`, which stores identical weights once. The functions
declare the same states, so one `MLState` made by the app serves both.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwen_mobile.runtime.errors import UsageError

from .graph import CoreMLDecoder, export_function, state_shapes

PRECISIONS = ("fp32", "fp16")
QLINEAR = ("fp32", "fp16", "8w", "4w")
INT4_BLOCK_SIZE = 32
# Apple: packages much above this fail to compile for the Neural Engine and silently run elsewhere.
ANE_PACKAGE_LIMIT_BYTES = int(1.4e9)
MIN_DEPLOYMENT = "iOS18"  # stateful models and multifunction packages


@dataclass
class ConversionReport:
    functions: dict = field(default_factory=dict)  # name -> {"tokens", "seconds", "ops"}
    quantize_seconds: float = 0.0
    merge_seconds: float = 0.0
    package_bytes: int = 0
    weight_bytes: int = 0


def _keep_fp32_selector(keep_gdn_fp32: bool, keep_head_fp32: bool, config):
    """op_selector for FP16ComputePrecision: True casts the op to fp16.

    keep_gdn_fp32 keeps the delta rule (every op the translation names with GDN_OP_TAG) and the recurrent state's
    whole path in fp32: the ops producing [..., Hv, K, V] tensors (the state read, its reset, per-layer slices and
    the concat that returns it). Without the second part the state would be rounded to fp16 before it reaches the op.
    """
    from .mil_gdn import GDN_OP_TAG

    state_tail = (config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim)

    def select(op) -> bool:
        if keep_gdn_fp32:
            if GDN_OP_TAG in op.name:
                return False
            if any(tuple(out.shape[-3:]) == state_tail for out in op.outputs if out.rank >= 3):
                return False
        if keep_head_fp32 and op.op_type == "linear" and op.weight.shape[0] == config.vocab_size:
            return False
        return True

    return select


def convert_function(decoder: CoreMLDecoder, tokens: int, *, precision: str, keep_gdn_fp32: bool = False,
                     keep_head_fp32: bool = False):
    """One static-T function as an in-memory MLModel (named inputs tokens/input_pos[/conv_in/rec_in])."""
    import coremltools as ct

    from .mil_gdn import register

    register()
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; expected one of {PRECISIONS}")
    ep = export_function(decoder, tokens)
    shapes = state_shapes(decoder.config, decoder.max_seq_len, decoder.layers)
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=shapes[n], dtype=np.float16), name=n)
              for n in decoder.state_names]
    # "hidden_out", not "hidden": a function's output may not share an input's name.
    outputs = ["logits" if decoder.last else "hidden_out"] + (["conv_out", "rec_out"] if decoder.has_io else [])
    if precision == "fp32":
        compute = ct.precision.FLOAT32
    else:
        compute = ct.transform.FP16ComputePrecision(
            op_selector=_keep_fp32_selector(keep_gdn_fp32, keep_head_fp32, decoder.config))
    return ct.convert(ep, outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs], states=states,
                      minimum_deployment_target=getattr(ct.target, MIN_DEPLOYMENT), compute_precision=compute,
                      skip_model_load=True)


def quantize(mlmodel, qlinear: str):
    """Weight-only quantization of every large weight: int8 per channel, or int4 per block of 32 along the input."""
    import coremltools.optimize as cto

    if qlinear in ("fp32", "fp16"):
        return mlmodel
    if qlinear == "8w":
        op_config = cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                       granularity="per_channel")
    elif qlinear == "4w":
        op_config = cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4",
                                                       granularity="per_block", block_size=INT4_BLOCK_SIZE)
    else:
        raise UsageError(f"--qlinear {qlinear!r}: not valid for recipe coreml; valid: {list(QLINEAR)}")
    return cto.coreml.linear_quantize_weights(mlmodel, cto.coreml.OptimizationConfig(global_config=op_config))


def build_package(decoder: CoreMLDecoder, out: Path, *, prefill_chunk: int, qlinear: str,
                  keep_gdn_fp32: bool = False, keep_head_fp32: bool = False,
                  progress=lambda msg: None) -> ConversionReport:
    """Write `out` (an .mlpackage) with functions "prefill" (T = prefill_chunk) and "decode" (T = 1)."""
    import coremltools as ct

    precision = "fp32" if qlinear == "fp32" else "fp16"
    report = ConversionReport()
    with tempfile.TemporaryDirectory(prefix="qwen-coreml-") as tmp:
        parts = {}
        for name, tokens in (("prefill", prefill_chunk), ("decode", 1)):
            progress(f"convert {name} (T={tokens})")
            t0 = time.perf_counter()
            mlmodel = convert_function(decoder, tokens, precision=precision, keep_gdn_fp32=keep_gdn_fp32,
                                       keep_head_fp32=keep_head_fp32)
            seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            mlmodel = quantize(mlmodel, qlinear)
            report.quantize_seconds += time.perf_counter() - t0
            parts[name] = Path(tmp) / f"{name}.mlpackage"
            mlmodel.save(str(parts[name]))
            report.functions[name] = {"tokens": tokens, "seconds": round(seconds, 2)}
            del mlmodel
        progress("merge functions")
        t0 = time.perf_counter()
        desc = ct.utils.MultiFunctionDescriptor()
        for name, path in parts.items():
            desc.add_function(str(path), src_function_name="main", target_function_name=name)
        desc.default_function_name = "decode"
        ct.utils.save_multifunction(desc, str(out))
        report.merge_seconds = time.perf_counter() - t0
    report.package_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    report.weight_bytes = sum(p.stat().st_size for p in (out / "Data" / "com.apple.CoreML" / "weights").rglob("*")
                              if p.is_file())
    return report
