"""KV-cache writes through qwen35::kv_cache_update, which an ExecuTorch program runs in place.

The model writes its caches with `index_copy_` (models/qwen35.py CacheWrite); exported, that is a whole-cache
index_put plus a whole-cache copy back, per layer and token (runtime/state_ops.py says why the op exists).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from qwen_mobile.models.gated_delta import native_op
from qwen_mobile.models.qwen35 import CacheWrite, Qwen35Attention, Qwen35ForCausalLM


class KVCacheUpdate(CacheWrite):
    """cache [B,Hkv,S,D] <- new [B,Hkv,T,D] at slots input_pos [T] through qwen35::kv_cache_update."""

    def forward(self, cache: torch.Tensor, new: torch.Tensor, input_pos: torch.Tensor) -> None:
        update = native_op("kv_cache_update", "or run the model without kv_cache_op for an eager-only run")
        update(cache, new.to(cache.dtype), input_pos)


@contextmanager
def kv_cache_op(model: Qwen35ForCausalLM):
    """Inside the block every attention layer writes through qwen35::kv_cache_update; the writes it had come back on
    exit, so an eager model used for export stays the eager reference afterwards."""
    attentions = [m for m in model.modules() if isinstance(m, Qwen35Attention)]
    kept = [m.cache_write for m in attentions]
    for m in attentions:
        m.cache_write = KVCacheUpdate()
    try:
        yield model
    finally:
        for m, write in zip(attentions, kept):
            m.cache_write = write
