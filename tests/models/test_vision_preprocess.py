"""Our PyTorch image preprocessing (models/vision_preprocess.py) vs transformers' Qwen2VL image processor (the one
Qwen3.5 uses; the Pillow backend, as transformers picks without torchvision) on the same decoded RGB image."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_mobile.models import ConfigError
from qwen_mobile.models.config import Qwen35VisionConfig
from qwen_mobile.models.vision_preprocess import (ImageProcessorConfig, decode_image, preprocess, preprocess_file,
                                                  resize_bicubic, smart_resize)

# Resize tolerance: Pillow's and torch's antialiased bicubic kernels round in fixed point differently, so a resized
# uint8 pixel may differ by one level; after normalization that is 1 / (255 * std). Measured: at most one level, in
# under 1 % of the values (MAX_DIFFERING); without a resize the output is bit-exact.
ONE_LEVEL = 1 / (255 * 0.5)
MAX_DIFFERING = 0.01


def transformers_processor(config: ImageProcessorConfig):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=config.patch_size, temporal_patch_size=config.temporal_patch_size,
                                    merge_size=config.merge_size, image_mean=config.image_mean,
                                    image_std=config.image_std,
                                    size={"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels})


def photo_like(height: int, width: int, seed: int) -> torch.Tensor:
    """uint8 [3,H,W]: smooth colour fields plus noise and a hard edge, so the resize has both detail and overshoot."""
    gen = np.random.default_rng(seed)
    coarse = (gen.random((max(2, height // 8), max(2, width // 8), 3)) * 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR)).astype(np.int32)
    smooth = smooth + gen.integers(-25, 26, smooth.shape)
    smooth[:, width // 3] = 255
    return torch.from_numpy(np.clip(smooth, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


def reference(image: torch.Tensor, config: ImageProcessorConfig):
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    out = transformers_processor(config)(images=[pil], return_tensors="pt")
    return out["pixel_values"], tuple(out["image_grid_thw"][0].tolist())


SMALL = dict(min_pixels=32 * 32, max_pixels=96 * 128)  # bounds that keep the cases small

# (height, width, processor bounds): on the grid already (no resize); downscaled by the max_pixels bound; upscaled by
# min_pixels; one side up and one down; a 1:12 strip; bigger than the bounds in both sides.
CASES = [
    pytest.param(64, 96, SMALL, id="on-grid-no-resize"),
    pytest.param(300, 400, SMALL, id="down-max-pixels"),
    pytest.param(20, 30, dict(min_pixels=128 * 128, max_pixels=256 * 256), id="up-min-pixels"),
    pytest.param(97, 211, dict(min_pixels=32 * 32, max_pixels=512 * 512), id="mixed-up-down"),
    pytest.param(40, 480, dict(min_pixels=32 * 32, max_pixels=64 * 512), id="strip-1x12"),
    pytest.param(1000, 700, dict(min_pixels=32 * 32, max_pixels=448 * 448), id="large-down"),
    pytest.param(600, 100, dict(min_pixels=32 * 32, max_pixels=64 * 512), id="tall-rows-first"),
]


@pytest.mark.parametrize("height,width,bounds", CASES)
def test_patches_match_transformers(height, width, bounds):
    config = ImageProcessorConfig(**bounds)
    image = photo_like(height, width, seed=height)
    ref, ref_grid = reference(image, config)
    got = preprocess(image, config)
    assert got.grid_thw == ref_grid
    assert got.pixel_values.shape == ref.shape and got.pixel_values.dtype == torch.float32
    diff = (got.pixel_values - ref).abs()
    if ref_grid[1] * config.patch_size == height and ref_grid[2] * config.patch_size == width:
        assert torch.equal(got.pixel_values, ref)  # no resize: the same float32 arithmetic, bit for bit
    else:
        assert diff.max().item() <= ONE_LEVEL + 1e-6
        assert (diff > 0).float().mean().item() < MAX_DIFFERING


@pytest.mark.parametrize("height,width", [(300, 400), (97, 211), (20, 3900), (4000, 4000), (33, 33), (48, 16)])
def test_smart_resize_matches_transformers(height, width):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference_resize

    for lo, hi in [(65536, 16777216), (32 * 32, 96 * 128), (128 * 128, 256 * 256)]:
        assert smart_resize(height, width, 32, lo, hi) == reference_resize(height, width, 32, lo, hi)


def test_extreme_aspect_ratio_is_refused_like_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference_resize

    with pytest.raises(ValueError, match="aspect ratio"):
        reference_resize(17, 4000, 32, 65536, 16777216)
    with pytest.raises(ValueError, match="image of 4000x17 pixels: aspect ratio above 200 is not supported"):
        smart_resize(17, 4000, 32, 65536, 16777216)


def test_resize_follows_pillows_pass_order():
    """Noise is where the pass order shows (up to 20 levels when wrong): random sizes, both orders, both directions;
    within one level of Pillow's own resize."""
    gen = np.random.default_rng(0)
    for _ in range(24):
        height, width, new_h, new_w = (int(v) for v in gen.integers(8, 160, 4))
        noise = gen.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(noise).resize((new_w, new_h), Image.BICUBIC)).astype(np.int32)
        got = resize_bicubic(torch.from_numpy(noise).permute(2, 0, 1).contiguous(), new_h, new_w)
        diff = np.abs(got.permute(1, 2, 0).numpy().astype(np.int32) - ref)
        assert diff.max() <= 1, (height, width, new_h, new_w)


def test_token_count_is_the_processors(tmp_path):
    config = ImageProcessorConfig(**SMALL)
    got = preprocess(photo_like(300, 400, seed=1), config)
    expected = transformers_processor(config).get_number_of_image_patches(300, 400) // 4
    assert got.num_tokens == expected


@pytest.mark.parametrize("mode,suffix", [("RGB", "png"), ("RGBA", "png"), ("RGB", "jpg"), ("L", "png"), ("P", "png")])
def test_decoding_matches_transformers_load_image(tmp_path, mode, suffix):
    """Our decode vs what transformers' image processor does with the opened file (EXIF rotation applied as its
    load_image does, then its RGB conversion: transparency composited on white, as qwen-vl-utils does too; load_image
    itself would drop the alpha channel first), on files with an EXIF rotation (JPEG), transparency or a palette."""
    from PIL import ImageOps
    from transformers.image_transforms import convert_to_rgb

    rgb = photo_like(48, 80, seed=7).permute(1, 2, 0).numpy()
    im = Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (48, 1))
        im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode in ("L", "P"):
        im = im.convert(mode)
    path = tmp_path / f"image.{suffix}"
    if suffix == "jpg":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
        im.save(path, exif=exif, quality=90)
    else:
        im.save(path)
    with Image.open(path) as opened:
        ref = torch.from_numpy(convert_to_rgb(ImageOps.exif_transpose(opened), return_numpy=True)).permute(2, 0, 1)
    got = decode_image(path)
    assert torch.equal(got, ref)
    if suffix == "jpg":
        assert got.shape == (3, 80, 48)  # the EXIF rotation was applied
    config = ImageProcessorConfig(**SMALL)
    assert torch.equal(preprocess_file(path, config).pixel_values, preprocess(ref.contiguous(), config).pixel_values)


def test_reads_preprocessor_config_saved_by_transformers(tmp_path):
    wanted = ImageProcessorConfig(min_pixels=1234, max_pixels=56789, image_mean=[0.4, 0.5, 0.6],
                                  image_std=[0.2, 0.3, 0.25])
    transformers_processor(wanted).save_pretrained(tmp_path)
    vision = Qwen35VisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    got = ImageProcessorConfig.from_pretrained(tmp_path, vision)
    assert got == wanted
    assert ImageProcessorConfig.from_pretrained(tmp_path, vision, max_pixels=4096).max_pixels == 4096


def test_bad_inputs_are_named(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"resample": 2, "patch_size": 16}))
    with pytest.raises(ConfigError, match="field 'resample' is 2; only bicubic"):
        ImageProcessorConfig.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"patch_size": 14}))
    vision = Qwen35VisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    with pytest.raises(ConfigError, match="field 'patch_size' is 14 but the vision tower's patch_size is 16"):
        ImageProcessorConfig.from_pretrained(tmp_path, vision)
    with pytest.raises(ConfigError, match="min_pixels=10 and max_pixels=5"):
        ImageProcessorConfig(min_pixels=10, max_pixels=5)
    (tmp_path / "not-an-image.png").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not-an-image.png cannot be decoded"):
        decode_image(tmp_path / "not-an-image.png")
    with pytest.raises(FileNotFoundError, match="missing.jpg does not exist"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="expected a uint8 RGB image"):
        preprocess(torch.zeros(3, 32, 32), ImageProcessorConfig())
