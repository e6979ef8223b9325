"""Weight quantization with torchao, as pure `module -> module` transforms.

Linear schemes (flag `--qlinear`, names as in optimum-executorch):
    fp32   no quantization
    8da4w  int8 dynamic per-token activations, int4 symmetric group-wise weights (XNNPACK qd8-f32-qb4w)
    8da8w  int8 dynamic activations, int8 per-channel weights (qd8-f32-qc8w)
    8w     int8 per-channel weight-only
    4w     int4 group-wise weight-only
Embedding schemes (`--qembedding`): none, 8w (int8 per-row), 4w (int4 group-wise).

The delta-net's tiny projections (in_proj_b, in_proj_a: [n_v, h]) are quantized like every other linear whose input
width is a multiple of the group size; anything else stays fp32 and is listed in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

QLINEAR = ("fp32", "8da4w", "8da8w", "8w", "4w")
QEMBEDDING = ("none", "8w", "4w")
GROUP_SIZES = (32, 64, 128)


@dataclass
class QuantReport:
    qlinear: str
    qembedding: str
    group_size: int
    quantized_linears: int = 0
    skipped_linears: list[str] = field(default_factory=list)
    embedding: str = "fp32"
    tied_table_copies: int = 1


def _linear_config(scheme: str, group_size: int):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    if scheme == "8da8w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if scheme == "8w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if scheme == "4w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    raise ValueError(f"--qlinear {scheme!r}: expected one of {QLINEAR}")


def _embedding_config(scheme: str, group_size: int):
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if scheme == "4w":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    raise ValueError(f"--qembedding {scheme!r}: expected one of {QEMBEDDING}")


@torch.no_grad()
def quantize_model(model: nn.Module, qlinear: str, qembedding: str, group_size: int) -> QuantReport:
    """Quantize `model` in place and return what was done."""
    from torchao.quantization import quantize_
    from torchao.utils import unwrap_tensor_subclass

    if qlinear not in QLINEAR:
        raise ValueError(f"--qlinear {qlinear!r}: expected one of {QLINEAR}")
    if qembedding not in QEMBEDDING:
        raise ValueError(f"--qembedding {qembedding!r}: expected one of {QEMBEDDING}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"--group-size {group_size}: expected one of {GROUP_SIZES}")
    report = QuantReport(qlinear, qembedding, group_size)
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    tied = lm_head is not None and embed is not None and lm_head.weight is embed.weight

    if qlinear != "fp32":
        grouped = qlinear in ("8da4w", "4w")

        def take_linear(module: nn.Module, fqn: str) -> bool:
            if not isinstance(module, nn.Linear):
                return False
            if grouped and module.in_features % group_size:
                report.skipped_linears.append(f"{fqn} (in_features {module.in_features} % group {group_size})")
                return False
            report.quantized_linears += 1
            return True

        quantize_(model, _linear_config(qlinear, group_size), filter_fn=take_linear)
    if qembedding != "none":
        quantize_(model, _embedding_config(qembedding, group_size),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Embedding))
        report.embedding = qembedding
    if tied and (qlinear != "fp32" or qembedding != "none"):
        # Quantizing either side gives each its own tensor: the table is now stored twice (in two formats).
        report.tied_table_copies = 2
    unwrap_tensor_subclass(model)
    return report
