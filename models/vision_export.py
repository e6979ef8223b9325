"""The vision tower as an exportable `encode_image` method, one fixed patch grid per program method.

A fixed grid makes every position-dependent table (the resized learned positions, the 2-D rotary angles) a function of
constants, so the exported graph holds only the patch embedding, the blocks and the merger over a static [gh*gw, 1536]
input. A bundle would carry one method per supported grid (e.g. 14 x 14 patches for 224 x 224 pixels) and record them
in its manifest; the caller resizes an image to one of them (vision_preprocess.smart_resize with the grid's bounds).
"""

from __future__ import annotations

import torch
from torch import nn

from .vision import Qwen35VisionModel


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

    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.grid_h * self.grid_w, self.visual.config.patch_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.visual.encode_frame(patches, self.grid_h, self.grid_w)


def export_encode_image(visual: Qwen35VisionModel, grid_h: int, grid_w: int) -> torch.export.ExportedProgram:
    """torch.export of `encode_image` for one grid (static shapes)."""
    entry = EncodeImage(visual, grid_h, grid_w).eval()
    with torch.no_grad():
        return torch.export.export(entry, (entry.example_input(),), strict=False)
