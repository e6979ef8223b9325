"""Export-time rewrites of a loaded `Qwen35ForCausalLM`, kept out of the model file. The first three swap modules for
subclasses sharing the original's parameters and names (swap.adopt), as quantize.py swaps in weight-only linears;
fp32_compute hooks the layers for the length of a block.

    fuse_projections(model)            in place: one linear per shared input (fuse.py)
    with kv_cache_op(model): ...       KV writes through qwen35::kv_cache_update (kv_cache.py)
    with last_position_logits(model):  logits for the last position only (last_logits.py)
    with fp32_compute(model): ...      bf16-stored weights computed as fp32 (bf16_weights.py)

Every one leaves the eager logits unchanged (tests/export/test_transforms.py).
"""

from .bf16_weights import fp32_compute
from .fuse import fuse_linears, fuse_projections
from .kv_cache import kv_cache_op
from .last_logits import last_position_logits

__all__ = ["fp32_compute", "fuse_linears", "fuse_projections", "kv_cache_op", "last_position_logits"]
