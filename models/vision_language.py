"""Image + text prompts: the vision tower's embeddings in the prompt's image slots, the three-row M-RoPE positions,
and a small eager runner (prefill, decode, greedy generate) over `Qwen35ForCausalLM.forward_embeddings`.

A prompt holds each image as `<|vision_start|>` + `<|image_pad|>` x N + `<|vision_end|>`, N = h*w/4 for an image of
h x w patches (one token per 2 x 2 block, in the tower's merge-block order). Positions (transformers' get_rope_index):

  text token            T = H = W = p, then p += 1
  image of gh x gw      token (r, c) of the gh/2 x gw/2 merged grid: T = p, H = p + r, W = p + c;
  merged tokens         then p += max(gh, gw) / 2       (not by the token count: the rotary position runs slower)

Cache slots do not follow: they advance by one per token. After the prompt, a decoded token at slot s takes rotary
position s + delta in all three rows, delta = (largest prompt position + 1) - prompt length (rope_deltas).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from qwen_mobile.runtime.images import Grid, image_token_count, mrope_positions, splice_image_embeddings

from .config import ConfigError
from .qwen35 import Qwen35ForCausalLM
from .vision import Qwen35VisionModel


class Qwen35VisionLanguage(nn.Module):
    """The text decoder and its vision tower, batch 1. `prefill` starts a new sequence (state reset); `decode` appends
    one token; the runner tracks the next cache slot and rotary position."""

    def __init__(self, text: Qwen35ForCausalLM, visual: Qwen35VisionModel):
        super().__init__()
        if visual.config.out_hidden_size != text.config.hidden_size:
            raise ConfigError(f"vision_config field 'out_hidden_size' is {visual.config.out_hidden_size}, but the text "
                              f"decoder's hidden_size is {text.config.hidden_size}")
        vocab = text.config.vocab_size
        for key in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
            if not 0 <= getattr(visual.config, key) < vocab:
                raise ConfigError(f"config field '{key}' is {getattr(visual.config, key)}, outside the text model's "
                                  f"vocabulary 0..{vocab - 1}")
        if text.max_batch_size != 1:
            raise ValueError("Qwen35VisionLanguage runs batch 1; build the text model with max_batch_size=1")
        self.text = text
        self.visual = visual
        self.next_slot = 0
        self.next_rope = 0

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, max_seq_len: int | None = None,
                        gdn_impl: str = "op") -> "Qwen35VisionLanguage":
        text = Qwen35ForCausalLM.from_pretrained(path, dtype=dtype, max_seq_len=max_seq_len, gdn_impl=gdn_impl)
        return cls(text, Qwen35VisionModel.from_pretrained(path, dtype=dtype))

    @property
    def image_token_id(self) -> int:
        return self.visual.config.image_token_id

    def image_placeholder(self, grid: Grid) -> list[int]:
        """The token ids one image occupies in a prompt: vision_start, N image tokens, vision_end."""
        cfg = self.visual.config
        n = image_token_count(grid, cfg.spatial_merge_size)
        return [cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id]

    def embed(self, tokens: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """tokens [1,T] -> embeddings [1,T,h], image tokens replaced in order by image_embeds [N,h]."""
        x = self.text.model.embed_tokens(tokens)  # [1,T,h]
        return splice_image_embeddings(x[0], tokens[0].tolist(), image_embeds, self.image_token_id)[None]  # [1,T,h]

    @torch.no_grad()
    def prefill(self, tokens: Sequence[int], pixel_values: torch.Tensor | None = None,
                grid_thw: Sequence[Grid] = ()) -> torch.Tensor:
        """A new sequence: prompt token ids (with image placeholders) and its images' patches -> logits [1,T,vocab]."""
        grids = [tuple(int(v) for v in g) for g in grid_thw]
        image_embeds = self.visual(pixel_values, grids) if grids else None  # [N,h]
        ids = torch.tensor([list(tokens)])  # [1,T]
        rope_pos, next_rope = mrope_positions(ids[0].tolist(), grids, self.image_token_id,
                                              self.visual.config.spatial_merge_size)
        self.text.reset()
        logits = self.text.forward_embeddings(self.embed(ids, image_embeds), torch.arange(ids.shape[1]), rope_pos)
        self.next_slot, self.next_rope = ids.shape[1], next_rope
        return logits

    @torch.no_grad()
    def decode(self, token: int) -> torch.Tensor:
        """One text token after the prompt -> logits [1,1,vocab]."""
        rope_pos = torch.full((3, 1), self.next_rope)  # [3,1]: text after the prompt, all rows equal
        embeds = self.text.model.embed_tokens(torch.tensor([[token]]))  # [1,1,h]
        logits = self.text.forward_embeddings(embeds, torch.tensor([self.next_slot]), rope_pos)
        self.next_slot += 1
        self.next_rope += 1
        return logits

    @torch.no_grad()
    def generate(self, tokens: Sequence[int], pixel_values: torch.Tensor | None = None, grid_thw: Sequence[Grid] = (),
                 max_new_tokens: int = 32, stop_ids: tuple[int, ...] = ()) -> list[int]:
        """Greedy generation from a fresh state: one prefill, then one decode per token."""
        if len(tokens) + max_new_tokens > self.text.max_seq_len:
            raise ValueError(f"prompt ({len(tokens)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_seq_len={self.text.max_seq_len}")
        logits = self.prefill(tokens, pixel_values, grid_thw)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt in stop_ids:
                break
            logits = self.decode(nxt)
        return out
