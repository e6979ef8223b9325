"""Qwen3.5 vision tower (ViT), one readable file shaped for export.

Attribute names follow transformers' `Qwen3_5VisionModel`, so `model.visual.<name>` checkpoint keys map to `<name>`
here (weights.py). The one layout change: the patch embedding is a 3-D convolution whose kernel equals its stride,
i.e. one matrix per flattened patch, so it is an `nn.Linear` over [C * temporal * patch * patch] values (the loader
reshapes the conv kernel [D, C, tp, p, p] to [D, C*tp*p*p], the same memory order the image processor flattens in).

One frame of h x w patches (h, w even: the preprocessor resizes to multiples of patch * merge):

  patches [h*w, C*tp*p*p] ──patch_embed──► x [h*w, D]
  x += learned positions: the square [side, side, D] table bilinearly resized to [h, w] (align_corners=True)
  for each block:  x += attn(norm1(x))      full bidirectional attention within the frame, 2-D RoPE on q and k
                   x += mlp(norm2(x))       linear_fc1 ─► gelu(tanh) ─► linear_fc2
  merger: norm(x) viewed [h*w/4, 4D] ─► linear_fc1 ─► gelu(erf) ─► linear_fc2 ─► [h*w/4, out_hidden (text width)]

Patches arrive in spatial-merge-block order (the image processor's order): the 4 patches of each 2 x 2 block are
consecutive, blocks run row-major. Positions (learned and rotary) are laid out in that order too, and the merger's
view folds each block into one text token.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import Qwen35VisionConfig

LAYER_NORM_EPS = 1e-6  # transformers hard-codes it for every vision LayerNorm


def merge_block_order(grid: torch.Tensor, merge: int) -> torch.Tensor:
    """[h, w, ...] in raster order -> [h*w, ...] in spatial-merge-block order (block row, block col, row, col)."""
    h, w = grid.shape[:2]
    rest = grid.shape[2:]
    blocks = grid.reshape(h // merge, merge, w // merge, merge, *rest)  # [h/m, m, w/m, m, ...]
    return blocks.transpose(1, 2).reshape(h * w, *rest)  # [h/m, w/m, m, m, ...] -> [h*w, ...]


def bilinear_taps(size: int, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resampling `side` learned positions to `size` with align_corners=True: for output i the source is
    i * (side-1) / (size-1); returns its lower tap, upper tap (clamped to the table) and the upper tap's weight."""
    src = torch.arange(size, dtype=torch.float32) * (side - 1) / max(size - 1, 1)  # [size]
    lo = src.floor()
    frac = src - lo  # weight of the upper tap
    lo = lo.long()
    return lo, (lo + 1).clamp(max=side - 1), frac


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Qwen35VisionLayerNorm(nn.Module):
    """nn.LayerNorm's math (affine, eps 1e-6, statistics in fp32) with its mean and variance taken over a [1, N, D, 1]
    view: XNNPACK delegates mean.dim only over dims (2, 3) of a 4-D tensor (as qwen35.rms_scale) and does not take
    native_layer_norm, which split the exported tower around every norm (10 -> 5 delegate calls at depth 2)."""

    def __init__(self, dim: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.float().reshape(1, -1, x.shape[-1], 1)  # [1,N,D,1]
        centred = v - v.mean((2, 3), keepdim=True)
        var = (centred * centred).mean((2, 3), keepdim=True)  # [1,N,1,1]
        y = (centred * torch.rsqrt(var + self.eps)).reshape(x.shape)  # [...,D]
        return (y * self.weight.float() + self.bias.float()).to(x.dtype)


class Qwen35VisionPatchEmbed(nn.Module):
    def __init__(self, config: Qwen35VisionConfig):
        super().__init__()
        self.proj = nn.Linear(config.patch_dim, config.hidden_size, bias=True)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj(patches.to(self.proj.weight.dtype))  # [N, C*tp*p*p] -> [N, D]


class Qwen35VisionAttention(nn.Module):
    """Bidirectional multi-head attention over one frame's patches, 2-D RoPE over the whole head dim."""

    def __init__(self, config: Qwen35VisionConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim)  # [N,3,H,d]: q | k | v, heads inside each
        q, k, v = qkv.unbind(1)  # [N,H,d] each
        # Rotation in fp32 as transformers does; cos/sin [N,d] broadcast over heads.
        q = (q.float() * cos[:, None] + rotate_half(q.float()) * sin[:, None]).to(x.dtype)
        k = (k.float() * cos[:, None] + rotate_half(k.float()) * sin[:, None]).to(x.dtype)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H,N,d]
        scores = torch.bmm(q, k.transpose(1, 2)) * self.head_dim ** -0.5  # [H,N,N]
        attn = torch.bmm(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)  # [H,N,d]
        return self.proj(attn.transpose(0, 1).reshape(n, self.num_heads * self.head_dim))  # [N,D]


class Qwen35VisionMLP(nn.Module):
    def __init__(self, config: Qwen35VisionConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate="tanh"))


class Qwen35VisionBlock(nn.Module):
    def __init__(self, config: Qwen35VisionConfig):
        super().__init__()
        self.norm1 = Qwen35VisionLayerNorm(config.hidden_size)
        self.norm2 = Qwen35VisionLayerNorm(config.hidden_size)
        self.attn = Qwen35VisionAttention(config)
        self.mlp = Qwen35VisionMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class Qwen35VisionPatchMerger(nn.Module):
    """Each 2 x 2 block of patches (consecutive rows) -> one token of the text model's width."""

    def __init__(self, config: Qwen35VisionConfig):
        super().__init__()
        self.merged_dim = config.hidden_size * config.spatial_merge_size ** 2
        self.norm = Qwen35VisionLayerNorm(config.hidden_size)  # per patch, before the fold
        self.linear_fc1 = nn.Linear(self.merged_dim, self.merged_dim, bias=True)
        self.linear_fc2 = nn.Linear(self.merged_dim, config.out_hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).reshape(-1, self.merged_dim)  # [N,D] -> [N/4, 4D]
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))  # exact (erf) GELU here, unlike the blocks


class Qwen35VisionModel(nn.Module):
    """forward(pixel_values [N, C*tp*p*p], grid_thw [images, 3]) -> image embeddings [N/4, out_hidden_size].

    `pixel_values` are the preprocessor's patches of every image, concatenated; `grid_thw` holds each image's
    (frames, patch rows, patch columns). Frames attend only within themselves (transformers' cu_seqlens), so each
    frame is encoded on its own by `encode_frame`, the unit an exported `encode_image` method runs.
    """

    def __init__(self, config: Qwen35VisionConfig):
        super().__init__()
        self.config = config
        self.merge = config.spatial_merge_size
        self.patch_embed = Qwen35VisionPatchEmbed(config)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(Qwen35VisionBlock(config) for _ in range(config.depth))
        self.merger = Qwen35VisionPatchMerger(config)

    # Positions ------------------------------------------------------------------------------------------------
    def position_embeddings(self, h: int, w: int) -> torch.Tensor:
        """The learned [side, side, D] table resized to [h, w, D] (bilinear, align_corners=True, separable: rows
        then columns), in merge-block order: [h*w, D]."""
        side = self.config.num_grid_per_side
        table = self.pos_embed.weight.reshape(side, side, -1)  # [side,side,D]
        lo, hi, frac = bilinear_taps(h, side)
        frac = frac.to(table.dtype)[:, None, None]
        rows = table[lo] * (1 - frac) + table[hi] * frac  # [h,side,D]
        lo, hi, frac = bilinear_taps(w, side)
        frac = frac.to(table.dtype)[None, :, None]
        grid = rows[:, lo] * (1 - frac) + rows[:, hi] * frac  # [h,w,D]
        return merge_block_order(grid, self.merge)  # [h*w,D]

    def rotary_cos_sin(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """2-D RoPE tables [h*w, head_dim] in merge-block order. The first quarter of the frequency slots turn with
        the patch row, the second with the column; the pair is repeated for NeoX's half split. inv_freq over
        head_dim/2 (transformers' axial RoPE): head_dim/4 frequencies per axis."""
        half = self.config.head_dim // 2
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half))  # [d/4]
        rows = torch.arange(h)[:, None].expand(h, w)  # [h,w]
        cols = torch.arange(w)[None, :].expand(h, w)
        pos = merge_block_order(torch.stack([rows, cols], dim=-1), self.merge).float()  # [h*w, 2]
        freqs = (pos[:, :, None] * inv_freq).reshape(h * w, half)  # [h*w, 2, d/4] -> [h*w, d/2]: row | col
        emb = torch.cat([freqs, freqs], dim=-1)  # [h*w, d]
        return emb.cos(), emb.sin()

    # Forward --------------------------------------------------------------------------------------------------
    def encode_frame(self, patches: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """One frame: patches [h*w, C*tp*p*p] in merge-block order -> embeddings [h*w/4, out_hidden_size]."""
        if h % self.merge or w % self.merge or patches.shape != (h * w, self.config.patch_dim):
            raise ValueError(f"encode_frame: expected patches [{h}*{w}, {self.config.patch_dim}] with h and w "
                             f"multiples of {self.merge}; got {tuple(patches.shape)} for h={h}, w={w}")
        x = self.patch_embed(patches)  # [N,D]
        x = x + self.position_embeddings(h, w).to(x.dtype)
        cos, sin = self.rotary_cos_sin(h, w)  # [N,d] fp32
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.merger(x)  # [N/4, out]

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor | list) -> torch.Tensor:
        grids = [tuple(int(v) for v in g) for g in (grid_thw.tolist() if torch.is_tensor(grid_thw) else grid_thw)]
        total = sum(t * h * w for t, h, w in grids)
        if pixel_values.dim() != 2 or pixel_values.shape[0] != total:
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; grid_thw {grids} needs "
                             f"[{total}, {self.config.patch_dim}]")
        out, start = [], 0
        for t, h, w in grids:
            for _ in range(t):
                out.append(self.encode_frame(pixel_values[start:start + h * w], h, w))
                start += h * w
        return torch.cat(out)  # [total/4, out]

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32) -> "Qwen35VisionModel":
        """The tower of a local HF folder (`model.visual.*` keys); a folder without one is an error (weights.py)."""
        from .weights import load_vision_pretrained

        return load_vision_pretrained(cls, path, dtype=dtype)
