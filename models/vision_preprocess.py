"""Image -> the vision tower's patches, in PyTorch: what transformers' Qwen2VL image processor (the one Qwen3.5 uses)
computes, without numpy round trips.

  decode (Pillow: EXIF orientation applied, transparency composited on white, RGB)   uint8 [3, H, W]
  smart_resize: the nearest size whose sides are multiples of patch * merge (32) with the pixel count inside
                [min_pixels, max_pixels], aspect ratio kept as closely as possible
  resize:       bicubic with antialiasing on uint8, one axis at a time in Pillow's order, rounding between passes
  normalize:    x / 255, then (x - mean) / std per channel, float32
  patchify:     [3, h, w] -> [h/16 * w/16, 3 * 2 * 16 * 16] in spatial-merge-block order, the frame repeated over
                the 2 temporal slots (an image is a one-frame clip)

Equality with transformers (`Qwen2VLImageProcessorPil`, the processor it picks without torchvision, resizing with
Pillow 13): bit-exact when no resize is needed; otherwise the resized uint8 pixels differ from Pillow's by at most one
level in under 1 % of pixels (fixed-point rounding of the two kernels), so normalized values differ by at most
1 / (255 * std) (0.0078 for std 0.5). tests/models/test_vision_preprocess.py measures both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qwen_mobile.runtime.images import decode_image, resize_bicubic  # noqa: F401 (decode_image: part of this API)

from .config import ConfigError, Qwen35VisionConfig

PIL_BICUBIC = 3  # `resample` in preprocessor_config.json: PIL.Image.Resampling.BICUBIC


@dataclass
class ImageProcessorConfig:
    """The processor settings that change pixels. Defaults: the Qwen3-VL family's preprocessor_config.json
    (patch 16, mean = std = 0.5; pixel bounds 65,536 to 16,777,216; unverified against a Qwen3.5 release), used when
    a checkpoint folder has no preprocessor_config.json."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 65536
    max_pixels: int = 16777216
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    rescale_factor: float = 1 / 255

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ConfigError(f"image processor: min_pixels={self.min_pixels} and max_pixels={self.max_pixels} must "
                              "satisfy 0 < min_pixels <= max_pixels")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ConfigError("image processor: image_mean and image_std need one value per RGB channel")

    @property
    def factor(self) -> int:
        """Image sides are multiples of this: one merged text token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "preprocessor_config.json") -> "ImageProcessorConfig":
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if raw.get(flag) is False:
                raise ConfigError(f"{source}: field '{flag}' is false; only the full resize/rescale/normalize path "
                                  "is implemented")
        if raw.get("resample", PIL_BICUBIC) != PIL_BICUBIC:
            raise ConfigError(f"{source}: field 'resample' is {raw['resample']}; only bicubic ({PIL_BICUBIC}) is "
                              "implemented")
        kwargs = {k: raw[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
                                      "rescale_factor") if raw.get(k) is not None}
        # transformers 5 writes the bounds as size.{shortest,longest}_edge; older files as min_pixels/max_pixels.
        size = raw.get("size") or {}
        for ours, theirs in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            value = raw.get(ours, size.get(theirs))
            if value is not None:
                kwargs[ours] = value
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_pretrained(cls, folder: str | Path, vision: Qwen35VisionConfig | None = None,
                        **overrides) -> "ImageProcessorConfig":
        """The folder's preprocessor_config.json, else the defaults; `overrides` (e.g. max_pixels for a phone)
        win. With `vision`, the patch geometry must agree with the tower's."""
        path = Path(folder) / "preprocessor_config.json"
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: not valid JSON ({err})") from None
            config = cls.from_dict(raw, source=str(path))
        else:
            geometry = {} if vision is None else dict(
                patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                temporal_patch_size=vision.temporal_patch_size)
            config = cls(**geometry)
        if overrides:
            config = cls(**{**config.__dict__, **overrides})
        if vision is not None:
            for ours, theirs in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                                 ("temporal_patch_size", "temporal_patch_size")):
                if getattr(config, ours) != getattr(vision, theirs):
                    raise ConfigError(f"{path}: field '{ours}' is {getattr(config, ours)} but the vision tower's "
                                      f"{theirs} is {getattr(vision, theirs)}")
        return config


@dataclass
class ImagePatches:
    """One preprocessed image: what the tower and the prompt need."""

    pixel_values: torch.Tensor  # [grid_h * grid_w, C * temporal * patch * patch] float32
    grid_thw: tuple[int, int, int]  # (1, patch rows, patch columns)
    merge_size: int

    @property
    def num_tokens(self) -> int:
        """Image placeholder tokens in the prompt (one per merge x merge block of patches)."""
        _, h, w = self.grid_thw
        return h * w // self.merge_size ** 2


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size the processor resizes to: sides multiples of `factor`, pixels within [min_pixels, max_pixels], the
    aspect ratio kept as closely as possible. Python's round (half to even), as transformers uses."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image of {width}x{height} pixels: aspect ratio above 200 is not supported")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def normalize(image: torch.Tensor, config: ImageProcessorConfig) -> torch.Tensor:
    """uint8 [3, h, w] -> float32: x * rescale_factor (in float64, then float32, as transformers), (x - mean) / std."""
    x = (image.double() * config.rescale_factor).float()
    mean = torch.tensor(config.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(config.image_std, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def patchify(image: torch.Tensor, config: ImageProcessorConfig) -> tuple[torch.Tensor, int, int]:
    """float [C, h, w] -> patches [gh*gw, C*tp*p*p] in merge-block order, plus the patch grid (gh, gw)."""
    c, h, w = image.shape
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    gh, gw = h // p, w // p
    x = image.reshape(c, gh // m, m, p, gw // m, m, p)  # [C, gh/m, m, p, gw/m, m, p]
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m(row), m(col), C, p, p]
    x = x[:, :, :, :, :, None].expand(*x.shape[:5], tp, p, p)  # [..., C, tp, p, p]: one frame in every slot
    return x.reshape(gh * gw, c * tp * p * p), gh, gw


def preprocess(image: torch.Tensor, config: ImageProcessorConfig) -> ImagePatches:
    """uint8 RGB [3, H, W] -> the tower's input for that image."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"preprocess: expected a uint8 RGB image [3, H, W]; got {image.dtype} {tuple(image.shape)}")
    height, width = smart_resize(image.shape[1], image.shape[2], config.factor, config.min_pixels, config.max_pixels)
    pixels = normalize(resize_bicubic(image, height, width), config)
    patches, gh, gw = patchify(pixels, config)
    return ImagePatches(patches, (1, gh, gw), config.merge_size)


def preprocess_file(path: str | Path, config: ImageProcessorConfig) -> ImagePatches:
    return preprocess(decode_image(path), config)
