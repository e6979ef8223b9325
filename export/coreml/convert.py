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
    states = []
    if decoder.state_names:  # CoreMLEmbed has none
        shapes = state_shapes(decoder.config, decoder.max_seq_len, decoder.layers)
        states = [ct.StateType(wrapped_type=ct.TensorType(shape=shapes[n], dtype=np.float16), name=n)
                  for n in decoder.state_names]
    outputs = decoder.output_names
    if precision == "fp32":
        compute = ct.precision.FLOAT32
    else:
        compute = ct.transform.FP16ComputePrecision(
            op_selector=_keep_fp32_selector(keep_gdn_fp32, keep_head_fp32, decoder.config))
    return ct.convert(ep, outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs], states=states,
                      minimum_deployment_target=getattr(ct.target, MIN_DEPLOYMENT), compute_precision=compute,
                      skip_model_load=True)


def quantize(mlmodel, qlinear: str, keep_shapes=()):
    """Weight-only quantization of every large weight: int8 per channel, or int4 per block of 32 along the input.

    keep_shapes: weight shapes left unquantized (the vision tower's kept linears, found by their unique shapes)."""
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
    config = cto.coreml.OptimizationConfig(global_config=op_config)
    if keep_shapes:
        kept = [op.name for op in mlmodel._mil_program.functions["main"].operations
                if op.op_type == "const" and op.outputs[0].val is not None
                and tuple(op.outputs[0].shape) in set(keep_shapes)]
        config = cto.coreml.OptimizationConfig(global_config=op_config, op_name_configs=dict.fromkeys(kept))
    return cto.coreml.linear_quantize_weights(mlmodel, config)


def build_package(decoder: CoreMLDecoder, out: Path, *, prefill_chunk: int, qlinear: str,
                  keep_gdn_fp32: bool = False, keep_head_fp32: bool = False, extra_functions=(),
                  progress=lambda msg: None) -> ConversionReport:
    """Write `out` (an .mlpackage) with functions "prefill" (T = prefill_chunk) and "decode" (T = 1), then
    extra_functions [(name, module, tokens)] (graph.image_functions) converted and quantized the same way."""
    import coremltools as ct

    precision = "fp32" if qlinear == "fp32" else "fp16"
    report = ConversionReport()
    with tempfile.TemporaryDirectory(prefix="qwen-coreml-") as tmp:
        parts = {}
        functions = [("prefill", decoder, prefill_chunk), ("decode", decoder, 1), *extra_functions]
        for name, module, tokens in functions:
            progress(f"convert {name} (T={tokens})")
            t0 = time.perf_counter()
            mlmodel = convert_function(module, tokens, precision=precision, keep_gdn_fp32=keep_gdn_fp32,
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
    _measure(report, out)
    return report


def _measure(report: ConversionReport, out: Path) -> None:
    report.package_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    report.weight_bytes = sum(p.stat().st_size for p in (out / "Data" / "com.apple.CoreML" / "weights").rglob("*")
                              if p.is_file())


# -- the vision tower ----------------------------------------------------------------------------------------------
def _layer_norm(norm):
    """Qwen35VisionLayerNorm as one MIL layer_norm: the model spells it out for XNNPACK, which converts to seven fp16
    ops whose variance (a mean of squares) overflows fp16 once |x - mean| passes 256; Core ML's fused op is the
    Neural Engine's own. Same eps, weight and bias."""
    import torch

    def forward(x):
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)

    return forward


def vision_entry(visual, height: int, width: int, processor):
    """The tower's function for one image size: models/vision_export.EncodeImageRGB (rescale, normalize, patchify and
    the tower in the graph) with fused layer norms, over rgb [H,W,3] float32 pixel values 0..255 (Core ML arrays have
    no uint8; the values are the reader's bytes, exact in fp16 and fp32)."""
    import copy

    from qwen_mobile.models.vision import Qwen35VisionLayerNorm
    from qwen_mobile.models.vision_export import EncodeImageRGB

    tower = copy.deepcopy(visual)  # the caller's tower stays the eager reference
    for module in tower.modules():
        if isinstance(module, Qwen35VisionLayerNorm):
            module.forward = _layer_norm(module)
    return EncodeImageRGB(tower, height, width, processor).eval()


def convert_vision_function(visual, height: int, width: int, processor, *, precision: str):
    """encode_image_<H>x<W> as an in-memory MLModel: rgb [H,W,3] fp32 -> image_embeds [tokens, hidden] fp32."""
    import coremltools as ct
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; expected one of {PRECISIONS}")
    entry = vision_entry(visual, height, width, processor)
    example = entry.example_input().to(torch.float32)  # [H,W,3]
    with torch.no_grad():
        ep = torch.export.export(entry, (example,), strict=False).run_decompositions({})
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    return ct.convert(ep, inputs=[ct.TensorType(name="rgb", shape=tuple(example.shape), dtype=np.float32)],
                      outputs=[ct.TensorType(name="image_embeds", dtype=np.float32)],
                      minimum_deployment_target=getattr(ct.target, MIN_DEPLOYMENT), compute_precision=compute,
                      skip_model_load=True)


def build_vision_package(visual, processor, sizes, out: Path, *, qlinear: str, keep_fp32_weights=(),
                         progress=lambda msg: None) -> ConversionReport:
    """Write `out` (an .mlpackage) with one function per image size, named like the contract's image methods
    (encode_image_<H>x<W>), sharing the tower's weights (save_multifunction stores them once).

    keep_fp32_weights: names of tower linears ('patch_embed.proj', ...) whose weights stay unquantized (fp16 in an
    fp16 program)."""
    import coremltools as ct

    from qwen_mobile.runtime.contract import image_method

    precision = "fp32" if qlinear == "fp32" else "fp16"
    keep_shapes = {tuple(visual.get_submodule(name).weight.shape) for name in keep_fp32_weights}
    report = ConversionReport()
    with tempfile.TemporaryDirectory(prefix="qwen-coreml-vision-") as tmp:
        parts = {}
        for height, width in sizes:
            name = image_method(height, width)
            progress(f"convert {name}")
            t0 = time.perf_counter()
            mlmodel = convert_vision_function(visual, height, width, processor, precision=precision)
            seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            mlmodel = quantize(mlmodel, qlinear, keep_shapes=keep_shapes)
            report.quantize_seconds += time.perf_counter() - t0
            parts[name] = Path(tmp) / f"{name}.mlpackage"
            mlmodel.save(str(parts[name]))
            report.functions[name] = {"height": height, "width": width, "seconds": round(seconds, 2)}
            del mlmodel
        progress("merge image functions")
        t0 = time.perf_counter()
        desc = ct.utils.MultiFunctionDescriptor()
        for name, path in parts.items():
            desc.add_function(str(path), src_function_name="main", target_function_name=name)
        desc.default_function_name = next(iter(parts))
        ct.utils.save_multifunction(desc, str(out))
        report.merge_seconds = time.perf_counter() - t0
    _measure(report, out)
    return report
