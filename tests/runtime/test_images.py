"""runtime/images.py: the host's half of CONTRACT.md "Images" (size rule, placeholder expansion, M-RoPE positions)."""

import pytest
import torch

from qwen_mobile.runtime.images import (bundle_image, choose_image_size, expand_image_tokens, mrope_positions,
                                        parse_size)

SQUARES = [(224, 224), (448, 448)]


@pytest.mark.parametrize("image,sizes,expected", [
    ((800, 1000), SQUARES, (448, 448)),  # both squares equally far in shape; 448x448 does not upscale it
    ((300, 300), SQUARES, (224, 224)),  # 448x448 would upscale a 300x300 image
    ((100, 100), SQUARES, (224, 224)),  # everything upscales: the smallest
    ((400, 900), SQUARES + [(224, 448)], (224, 448)),  # wide image: the wide size, whatever its pixel count
    ((900, 400), SQUARES + [(224, 448)], (448, 448)),  # tall image: squares are closer in shape than the wide one
], ids=["big-photo", "mid", "tiny", "wide", "tall"])
def test_size_rule(image, sizes, expected):
    assert choose_image_size(*image, sizes) == expected


def test_parse_size():
    assert parse_size("448") == (448, 448)
    assert parse_size("224x448") == (224, 448)
    with pytest.raises(ValueError, match="--image-size 'big'"):
        parse_size("big")


def test_positions_by_hand():
    # text 5 | a 4x4-patch image (2x2 merged tokens) | text 6, from CONTRACT.md's rule worked out by hand:
    # text at p=0; image tokens (T, H, W) = (1, 1+r, 1+c); p += max(2, 2) -> 3; text at 3.
    rope, nxt = mrope_positions([5, 9, 9, 9, 9, 6], [(1, 4, 4)], image_token_id=9, merge=2)
    assert rope.tolist() == [[0, 1, 1, 1, 1, 3], [0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 2, 3]]
    assert nxt == 4


def test_positions_continue_from_start():
    ids, grids = [5, 9, 9, 9, 9, 9, 9, 6, 7], [(1, 4, 6)]
    whole, end = mrope_positions(ids, grids, 9, 2)
    head, mid = mrope_positions(ids[:7], grids, 9, 2)
    tail, end2 = mrope_positions(ids[7:], [], 9, 2, start=mid)
    assert torch.equal(torch.cat([head, tail], dim=1), whole) and end == end2


def test_expand_and_errors():
    vision = {"images": [{"method": "encode_image_8x8", "height": 8, "width": 8, "grid_thw": [1, 2, 2],
                          "tokens": 1}, {"method": "encode_image_16x16", "height": 16, "width": 16,
                                         "grid_thw": [1, 4, 4], "tokens": 4}]}
    image = bundle_image(torch.zeros(3, 40, 40, dtype=torch.uint8), vision)
    assert image.method == "encode_image_16x16" and image.rgb.shape == (16, 16, 3)
    assert expand_image_tokens([1, 8, 9, 8, 2], [image], 9) == [1, 8, 9, 9, 9, 9, 8, 2]
    with pytest.raises(ValueError, match="marks 0 image place"):
        expand_image_tokens([1, 2], [image], 9)
    with pytest.raises(ValueError, match="--image-size 32x32: this bundle encodes images of 8x8, 16x16"):
        bundle_image(torch.zeros(3, 40, 40, dtype=torch.uint8), vision, size=(32, 32))
