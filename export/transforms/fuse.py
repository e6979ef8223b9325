"""Fused projections: the linears that read the same input become one (delta-net in_proj_{qkv,z,b,a}, attention
q/k/v, MLP gate/up).

For export: the 0.8B layers' 186 linears become 96 (lm_head aside), so the graph has fewer quantize and GEMM nodes to
lower and run. The math is unchanged (fuse_linears); loading and the transformers names are unaffected because fusion
happens after loading. Each fused module is a subclass of the model's that only changes `project` (or the MLP's
forward), over one linear named in_proj, qkv_proj or gate_up_proj.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qwen_mobile.models.qwen35 import Qwen35Attention, Qwen35ForCausalLM, Qwen35GatedDeltaNet, Qwen35MLP

from .swap import adopt


def fuse_linears(*linears: nn.Linear) -> nn.Linear:
    """One Linear whose output rows are the given linears' rows, in order (same input, no bias).

    Exact under every quantization scheme we use: int4 groups and int8 channels run along each output row's inputs,
    so a row is quantized the same wherever it sits. The exported graph gets one GEMM, one activation quantization
    and one delegate op where it had several.
    """
    if any(m.bias is not None for m in linears) or len({m.in_features for m in linears}) != 1:
        raise ValueError("fuse_linears: expected bias-free linears over one input width")
    fused = nn.Linear(linears[0].in_features, sum(m.out_features for m in linears), bias=False)
    fused.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears], dim=0), requires_grad=False)
    return fused


class FusedMLP(Qwen35MLP):
    """gate_proj|up_proj as gate_up_proj [2I, h]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [B,T,2I]
        i = self.intermediate
        return self.down_proj(F.silu(gate_up[..., :i]) * gate_up[..., i:])


class FusedGatedDeltaNet(Qwen35GatedDeltaNet):
    """in_proj_qkv|z|b|a as in_proj [conv_dim + Hv*V + 2*Hv, h]."""

    def project(self, x: torch.Tensor):
        y = self.in_proj(x)  # [B,T,conv_dim + Hv*V + 2*Hv]
        c, zv, hv = self.conv_dim, self.value_dim, self.num_v_heads
        return y[..., :c], y[..., c:c + zv], y[..., c + zv:c + zv + hv], y[..., c + zv + hv:]


class FusedAttention(Qwen35Attention):
    """q_proj|k_proj|v_proj as qkv_proj [Hq*2D + 2*Hkv*D, h]."""

    def project(self, x: torch.Tensor):
        y = self.qkv_proj(x)  # [B,T,Hq*2D + 2*Hkv*D]
        nq, nkv = self.num_heads * self.head_dim * 2, self.num_kv_heads * self.head_dim
        return y[..., :nq], y[..., nq:nq + nkv], y[..., nq + nkv:]


# module class -> (fused class, fused linear's name, the linears it replaces, in row order)
FUSIONS = {
    Qwen35MLP: (FusedMLP, "gate_up_proj", ("gate_proj", "up_proj")),
    Qwen35GatedDeltaNet: (FusedGatedDeltaNet, "in_proj", ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")),
    Qwen35Attention: (FusedAttention, "qkv_proj", ("q_proj", "k_proj", "v_proj")),
}


def fuse_module(module: nn.Module) -> nn.Module:
    """The fused twin of one MLP, delta-net or attention module (sharing every other parameter and buffer)."""
    cls, name, parts = FUSIONS[type(module)]
    fused = adopt(module, cls)
    setattr(fused, name, fuse_linears(*(getattr(module, part) for part in parts)))  # registered last, as export expects
    for part in parts:
        delattr(fused, part)
    return fused


@torch.no_grad()
def fuse_projections(model: Qwen35ForCausalLM) -> Qwen35ForCausalLM:
    """Swap every layer's mixer and MLP for its fused twin, in place; already fused modules are left alone."""
    for layer in model.model.layers:
        mixer = "linear_attn" if layer.layer_type == "linear_attention" else "self_attn"
        for name in (mixer, "mlp"):
            module = getattr(layer, name)
            if type(module) in FUSIONS:
                setattr(layer, name, fuse_module(module))
    return model
