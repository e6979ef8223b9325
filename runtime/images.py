"""Images into a bundle's prompt, on the host: decode, pick one of the bundle's image sizes, resize, and lay out the
prompt's tokens and three-row M-RoPE positions (runtime/CONTRACT.md, "Images", steps 1-5).

The pixel steps (decode, bicubic resize) are the image processor's, shared with models/vision_preprocess.py, which
adds the normalization and patching the bundle's `encode_image_<H>x<W>` method does in the program. The position rule
(`mrope_positions`) is transformers' `get_rope_index`, shared with models/vision_language.py's eager runner.

This module imports torch and (to decode files) Pillow, never the model or the exporter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

Grid = tuple[int, int, int]  # (frames, patch rows, patch columns) of one image
SAME_ASPECT = 0.01  # |log(aspect) - log(aspect')| below this: the sizes are the same shape (CONTRACT.md's rule)


# -- pixels --------------------------------------------------------------------------------------------------------
def decode_image(path: str | Path) -> torch.Tensor:
    """An image file -> uint8 RGB [3, H, W]: the EXIF orientation applied (as transformers' load_image), transparency
    composited onto white (as its image processor's RGB conversion and qwen-vl-utils do; load_image alone would drop
    the alpha channel, leaving whatever colour the transparent pixels hold)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if "A" in im.getbands() or im.info.get("transparency") is not None:
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            rgb = im.convert("RGB")
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            width, height = rgb.size
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image {path} cannot be decoded ({type(err).__name__}: {err})") from None
    return data.reshape(height, width, 3).permute(2, 0, 1).contiguous()  # [H,W,3] -> [3,H,W]


def resize_bicubic(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, height, width]: antialiased bicubic, one axis at a time, in Pillow's order.

    Pillow resamples one axis, rounds to uint8, then the other. Its order (Pillow 13, Resample.c): rows first when the
    height loses more than twice as many pixels as the width, else columns first. The wrong order moves pixels by up
    to 20 levels on noisy images (measured), so torch's one-call 2-D resize is not used. An axis that keeps its size
    is not resampled, as in Pillow.
    """
    x = image[None]  # [1,3,H,W]
    rows_first = 0 < image.shape[1] - height and image.shape[1] - height > 2 * (image.shape[2] - width)
    for axis in ("rows", "columns") if rows_first else ("columns", "rows"):
        size = (height, x.shape[-1]) if axis == "rows" else (x.shape[-2], width)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return x[0]


def choose_image_size(height: int, width: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bundle size (h, w) an image of height x width pixels is resized to (CONTRACT.md, "Images"): the sizes
    closest in aspect ratio; of those the largest that does not upscale the image, else the smallest."""
    if not sizes:
        raise ValueError("the bundle lists no image sizes")
    if height < 1 or width < 1:
        raise ValueError(f"image of {width}x{height} pixels is empty")

    def aspect_gap(size):
        return abs(math.log(size[1] / size[0]) - math.log(width / height))

    best = min(aspect_gap(s) for s in sizes)
    shaped = sorted((s for s in sizes if aspect_gap(s) <= best + SAME_ASPECT), key=lambda s: s[0] * s[1])
    fitting = [s for s in shaped if s[0] * s[1] <= height * width]
    return tuple(fitting[-1] if fitting else shaped[0])


def synthetic_image(height: int, width: int) -> torch.Tensor:
    """A fixed uint8 RGB [3, H, W] test card: gradients in two channels and a checkerboard in the third, so every
    patch differs from its neighbours (benchmarks and checks that must not depend on a file)."""
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None, :].expand(height, width)
    red = rows * 255 // max(height - 1, 1)
    green = cols * 255 // max(width - 1, 1)
    blue = ((rows // 8 + cols // 8) % 2) * 200 + 28
    return torch.stack([red, green, blue]).to(torch.uint8)  # [3,H,W]


def parse_size(text: str, flag: str = "--image-size") -> tuple[int, int]:
    """'448' or '448x448' (height x width) -> (h, w)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise ValueError(f"{flag} {text!r}: expected S or HxW in pixels, e.g. 448 or 448x448")
    return (values[0], values[-1])


# -- prompts -------------------------------------------------------------------------------------------------------
def image_token_count(grid: Grid, merge: int) -> int:
    t, h, w = grid
    return t * h * w // merge ** 2


def mrope_positions(tokens: Sequence[int], grids: Sequence[Grid], image_token_id: int, merge: int,
                    start: int = 0) -> tuple[torch.Tensor, int]:
    """Token ids and their images' grids (in order) -> rope_pos [3,T] int64 and the next text position.

    Positions start at `start` (the rotary position after what the state already holds). Each run of image tokens is
    one image and must hold exactly its grid's token count.
    """
    rows: list[torch.Tensor] = []
    pos, i, n, images = start, 0, len(tokens), iter(grids)
    while i < n:
        j = i
        is_image = tokens[i] == image_token_id
        while j < n and (tokens[j] == image_token_id) == is_image:
            j += 1
        if not is_image:
            rows.append(torch.arange(pos, pos + j - i).expand(3, -1))  # [3, run]
            pos += j - i
        else:
            grid = next(images, None)
            if grid is None:
                raise ValueError(f"prompt has more image-token runs than images ({len(grids)} given)")
            t, h, w = grid
            if t != 1:
                raise ValueError(f"image grid {grid}: only single-frame images are supported in a prompt")
            gh, gw = h // merge, w // merge
            if j - i != gh * gw:
                raise ValueError(f"image-token run at position {i} has {j - i} tokens; its image grid {grid} needs "
                                 f"{gh * gw}")
            r = torch.arange(gh)[:, None].expand(gh, gw).reshape(-1)  # [gh*gw], row-major over the merged grid
            c = torch.arange(gw)[None, :].expand(gh, gw).reshape(-1)
            rows.append(torch.stack([torch.zeros_like(r), r, c]) + pos)  # [3, gh*gw]
            pos += max(gh, gw)
        i = j
    if next(images, None) is not None:
        raise ValueError(f"{len(grids)} images given but the prompt has fewer image-token runs")
    if not rows:
        return torch.zeros(3, 0, dtype=torch.long), pos
    return torch.cat(rows, dim=1), pos  # [3,T]


@dataclass
class BundleImage:
    """One image resized to one of a bundle's sizes: what its `encode_image_<H>x<W>` method takes."""

    rgb: torch.Tensor  # uint8 [H, W, 3]
    method: str
    grid_thw: Grid
    tokens: int
    source: str  # where it came from, for messages
    original_size: tuple[int, int]  # (height, width) before the resize

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.rgb.shape[:2])


def bundle_image(image: torch.Tensor, vision: dict, *, source: str = "image",
                 size: tuple[int, int] | None = None) -> BundleImage:
    """uint8 RGB [3, H, W] -> the bundle's input: resized to `size` (one of vision.images) or the chosen size."""
    entries = {(e["height"], e["width"]): e for e in vision["images"]}
    if size is None:
        size = choose_image_size(image.shape[1], image.shape[2], list(entries))
    elif tuple(size) not in entries:
        listed = ", ".join(f"{h}x{w}" for h, w in entries)
        raise ValueError(f"--image-size {size[0]}x{size[1]}: this bundle encodes images of {listed} (HxW) only; "
                         "re-export with --image-sizes to add one")
    entry = entries[tuple(size)]
    resized = resize_bicubic(image, *size) if tuple(image.shape[1:]) != tuple(size) else image
    return BundleImage(resized.permute(1, 2, 0).contiguous(), entry["method"], tuple(entry["grid_thw"]),
                       entry["tokens"], source, (image.shape[1], image.shape[2]))  # [3,H,W] -> [H,W,3]


def load_image(path: str | Path, vision: dict, size: tuple[int, int] | None = None) -> BundleImage:
    return bundle_image(decode_image(path), vision, source=str(path), size=size)


def image_span(vision: dict) -> list[int]:
    """The tokens that mark one image's place before expansion: vision_start, one image token, vision_end."""
    return [vision["vision_start_token_id"], vision["image_token_id"], vision["vision_end_token_id"]]


def splice_image_embeddings(embeds: torch.Tensor, ids: Sequence[int], image_embeds: torch.Tensor | None,
                            image_token_id: int) -> torch.Tensor:
    """embeds [T, hidden] of the prompt `ids` -> a copy whose k-th image token's row is image_embeds[k] [N, hidden]
    (CONTRACT.md step 2; images in prompt order). The counts must agree."""
    slots = torch.tensor(list(ids)) == image_token_id  # [T]
    n = int(slots.sum())
    given = 0 if image_embeds is None else image_embeds.shape[0]
    if n != given:
        raise ValueError(f"prompt has {n} image tokens but the images give {given} embeddings")
    if not n:
        return embeds
    out = embeds.clone()
    out[slots] = image_embeds.to(out.dtype)
    return out


def expand_image_tokens(ids: Sequence[int], images: Sequence[BundleImage], image_token_id: int) -> list[int]:
    """A prompt with one `image_token_id` per image -> the prompt with each expanded to its image's token count."""
    marks = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(marks) != len(images):
        raise ValueError(f"the prompt marks {len(marks)} image place(s) (token {image_token_id}) for {len(images)} "
                         "image(s): give one image token per image, inside vision_start/vision_end")
    out: list[int] = []
    images = iter(images)
    for t in ids:
        out += [t] * next(images).tokens if t == image_token_id else [t]
    return out
