"""Logits for the last positions only: prefill needs just the next token's, and skipping the other T-1 rows saves
most of the vocabulary matmul (the 0.8B head is 248,320 x 1,024)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from qwen_mobile.models.qwen35 import Qwen35ForCausalLM, Qwen35RMSNorm

from .swap import adopt


class LastPositionsNorm(Qwen35RMSNorm):
    """The final norm reading only its input's last `keep` positions: x [B,T,h] -> [B,keep,h]. The first module after
    the layers, so the norm and lm_head behind it see `keep` rows."""

    keep: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, -self.keep:])  # [B,keep,h]


@contextmanager
def last_position_logits(model: Qwen35ForCausalLM, keep: int = 1):
    """Inside the block the model returns logits [B,keep,vocab] for the last `keep` positions (the same values as
    forward's last rows); on exit the final norm is the model's own again."""
    if keep < 1:
        raise ValueError(f"last_position_logits: keep={keep}; expected >= 1")
    norm = model.model.norm
    last = adopt(norm, LastPositionsNorm)
    last.keep = keep
    model.model.norm = last
    try:
        yield model
    finally:
        model.model.norm = norm
