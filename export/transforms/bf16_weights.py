"""bf16-stored weights (`keep_bf16` loading, models/weights.py) run as the fp32 model of the same values.

The exporter's eager reference runs under this: the releases store bf16, bf16 -> fp32 is exact, and the model never
has to exist in fp32 whole (4B: 8.4 GB instead of 16.8 GB).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from qwen_mobile.models.qwen35 import Qwen35ForCausalLM

HEAD_ROWS_PER_CHUNK = 16384  # vocab rows of a bf16 lm_head upcast at a time (the 4B table is 2.5 GB in fp32)


@contextmanager
def fp32_compute(model: Qwen35ForCausalLM, upcast_whole_below: int = 0):
    """Run a model whose weights are partly stored in bfloat16 (`keep_bf16` loading) as the fp32 model of the same
    values: bf16 -> fp32 is exact, so inside this block it computes what the model loaded in fp32 computes, while only
    one layer's weights exist in fp32 at a time. Activations and state must be fp32 (load with dtype=float32).

    Each decoder layer and the final norm upcast their bf16 parameters on entry and put the stored tensors back on
    exit. The embedding gathers bf16 rows and upcasts them (exact). A bf16 lm_head runs as an fp32 matmul over
    HEAD_ROWS_PER_CHUNK vocab rows at a time, so the tied table is never upcast whole.

    upcast_whole_below: when the fp32 copy of every bf16 parameter is smaller than this many bytes, upcast them all
    once on entry instead (a step then costs no conversions: the 0.8B gate runs 33 steps at 3 GB each).
    """
    low = [p for p in model.parameters() if p.dtype == torch.bfloat16]
    if not low:
        yield model
        return
    if sum(p.numel() for p in low) * 4 < upcast_whole_below:
        kept = [(p, p.data) for p in low]
        try:
            for p, data in kept:
                p.data = data.float()
            yield model
        finally:
            for p, data in kept:
                p.data = data
        return
    stored: dict[nn.Module, list[tuple[nn.Parameter, torch.Tensor]]] = {}

    def restore(module):
        for p, data in stored.pop(module, ()):
            p.data = data

    def upcast(module, args):
        restore(module)
        stored[module] = [(p, p.data) for p in module.parameters() if p.dtype == torch.bfloat16]
        for p, data in stored[module]:
            p.data = data.float()

    handles = []
    for module in (*model.model.layers, model.model.norm):
        handles.append(module.register_forward_pre_hook(upcast))
        handles.append(module.register_forward_hook(lambda m, args, out: restore(m)))
    handles.append(model.model.embed_tokens.register_forward_hook(lambda m, args, out: out.float()))
    head = model.lm_head
    if head.weight.dtype == torch.bfloat16:
        def head_fp32(x: torch.Tensor) -> torch.Tensor:  # x [..., h] -> [..., vocab]
            w = head.weight  # [vocab, h]
            out = x.new_empty(*x.shape[:-1], w.shape[0])
            for r in range(0, w.shape[0], HEAD_ROWS_PER_CHUNK):
                out[..., r:r + HEAD_ROWS_PER_CHUNK] = F.linear(x, w[r:r + HEAD_ROWS_PER_CHUNK].float())
            return out if head.bias is None else out + head.bias.float()

        head.forward = head_fp32  # an instance attribute: shadows nn.Linear.forward until deleted below
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module in list(stored):
            restore(module)
        head.__dict__.pop("forward", None)
