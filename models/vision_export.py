"""The vision tower as exportable `encode_image` methods, one fixed image size per program method.

A fixed size makes every position-dependent table (the resized learned positions, the 2-D rotary angles) a function of
constants, so the exported graph holds only the pixel preparation, the patch embedding, the blocks and the merger over
a static input. A bundle carries one method per supported size (e.g. 224 x 224 pixels, 7 x 7 merged tokens) and lists
them in its manifest; the caller resizes an image to one of them (runtime/CONTRACT.md, "Images").

  EncodeImage      patches [gh*gw, C*tp*p*p] float32 (the preprocessor's output) -> embeddings
  EncodeImageRGB   rgb [H, W, 3] uint8 -> embeddings: rescaling, normalization and patching run in the graph, so a
                   phone app hands over its decoded, resized pixels as they are
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .vision import Qwen35VisionModel
from .vision_preprocess import ImageProcessorConfig


class EncodeImage(nn.Module):
    """forward(patches [gh*gw, C*tp*p*p] float32, merge-block order) -> image embeddings [gh*gw/4, out_hidden]."""

    def __init__(self, visual: Qwen35VisionModel, grid_h: int, grid_w: int):
        super().__init__()
        merge = visual.config.spatial_merge_size
        if grid_h % merge or grid_w % merge or grid_h < merge or grid_w < merge:
            raise ValueError(f"encode_image grid {grid_h}x{grid_w}: both sides must be positive multiples of "
                             f"spatial_merge_size={merge}")
        self.visual = visual
        self.grid_h, self.grid_w = grid_h, grid_w
        # The grid's position tables, computed once: exported, their gathers, pow and cat ran outside XNNPACK on every
        # call (9 ops), and the whole learned table (2304 x 768 for the 0.8B) was shipped to be resampled on the phone.
        with torch.no_grad():
            positions = visual.position_embeddings(grid_h, grid_w)  # [N,D]
            cos, sin = visual.rotary_cos_sin(grid_h, grid_w)  # [N,d] fp32
        self.register_buffer("positions", positions.detach().clone(), persistent=False)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.grid_h * self.grid_w, self.visual.config.patch_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Qwen35VisionModel.encode_frame with the position tables above and the blocks' GELU in sigmoid form."""
        visual = self.visual
        x = visual.patch_embed(patches)  # [N,D]
        x = x + self.positions.to(x.dtype)
        for block in visual.blocks:  # Qwen35VisionBlock.forward, its MLP spelled out for gelu_tanh below
            x = x + block.attn(block.norm1(x), self.rope_cos, self.rope_sin)
            x = x + block.mlp.linear_fc2(gelu_tanh(block.mlp.linear_fc1(block.norm2(x))))
        return visual.merger(x)  # [N/4, out]


GELU_TANH_SCALE = 2 * math.sqrt(2 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """F.gelu(x, approximate="tanh") as x * sigmoid(2c(x + 0.044715 x^3)), c = sqrt(2/pi) (0.5 (1 + tanh z) =
    sigmoid(2z)). XNNPACK's own tanh-GELU is an approximation: measured max |error| 4.7e-4 (1.0e-4 relative) on
    [196, 3072] inputs of std 3, which took a random 0.8B-shape fp32 tower to 1.6e-4 relative from eager; this form
    lowers into the same delegate and stays within 5e-7 (2.9e-8 relative)."""
    return x * torch.sigmoid(GELU_TANH_SCALE * (x + 0.044715 * x * x * x))


def image_grid(height: int, width: int, visual_config) -> tuple[int, int, int]:
    """Pixels -> the patch grid (1, gh, gw); the sides must be positive multiples of patch_size * spatial_merge_size."""
    factor = visual_config.patch_size * visual_config.spatial_merge_size
    if height < factor or width < factor or height % factor or width % factor:
        raise ValueError(f"image size {height}x{width}: both sides must be positive multiples of patch_size * "
                         f"spatial_merge_size = {factor}")
    return 1, height // visual_config.patch_size, width // visual_config.patch_size


class EncodeImageRGB(nn.Module):
    """forward(rgb [H, W, 3] uint8, rows top to bottom, R G B) -> image embeddings [H*W/(p*m)^2, out_hidden].

    The same numbers as vision_preprocess.normalize + patchify + the tower, with one difference: x * rescale_factor is
    taken in float32 here (the preprocessor multiplies in float64 and rounds), at most one ulp apart per pixel.
    """

    def __init__(self, visual: Qwen35VisionModel, height: int, width: int, processor: ImageProcessorConfig):
        super().__init__()
        _, gh, gw = image_grid(height, width, visual.config)
        self.encode = EncodeImage(visual, gh, gw)
        self.height, self.width = height, width
        self.patch, self.merge, self.temporal = (visual.config.patch_size, visual.config.spatial_merge_size,
                                                 visual.config.temporal_patch_size)
        self.rescale = float(processor.rescale_factor)
        self.register_buffer("mean", torch.tensor(processor.image_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(processor.image_std, dtype=torch.float32), persistent=False)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.height, self.width, 3, dtype=torch.uint8)

    def patches(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb [H,W,3] uint8 -> patches [gh*gw, C*tp*p*p] float32, merge-block order (vision_preprocess.patchify)."""
        p, m, tp = self.patch, self.merge, self.temporal
        gh, gw = self.height // p, self.width // p
        x = (rgb.to(torch.float32) * self.rescale - self.mean) / self.std  # [H,W,C], channel last
        # Two 5-D permutes, not preprocess's one 7-D: XNNPACK takes at most 6 dims (a 7-D one passed the partitioner
        # and failed at load, xnn_status_unsupported_parameter).
        x = x.reshape(gh, p, gw, p, 3).permute(0, 2, 4, 1, 3)  # [gh, gw, C, p(y), p(x)]: patches in raster order
        x = x.reshape(gh // m, m, gw // m, m, 3 * p * p).permute(0, 2, 1, 3, 4)  # [gh/m, gw/m, m(row), m(col), C*p*p]
        x = x.reshape(gh * gw, 3, 1, p * p).expand(gh * gw, 3, tp, p * p)  # one frame in every temporal slot
        return x.reshape(gh * gw, 3 * tp * p * p)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.encode(self.patches(rgb))


def export_encode_image(visual: Qwen35VisionModel, grid_h: int, grid_w: int) -> torch.export.ExportedProgram:
    """torch.export of `encode_image` over patches for one grid (static shapes)."""
    entry = EncodeImage(visual, grid_h, grid_w).eval()
    with torch.no_grad():
        return torch.export.export(entry, (entry.example_input(),), strict=False)


def export_encode_image_rgb(visual: Qwen35VisionModel, height: int, width: int,
                            processor: ImageProcessorConfig) -> torch.export.ExportedProgram:
    """torch.export of `encode_image_<H>x<W>` over uint8 RGB pixels (static shapes)."""
    entry = EncodeImageRGB(visual, height, width, processor).eval()
    with torch.no_grad():
        return torch.export.export(entry, (entry.example_input(),), strict=False)
