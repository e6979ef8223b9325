"""qwen-bench with an image (runtime/CONTRACT.md, "Images"; runtime/runner/SERVE.md, generate's `image`): the
runner's M-RoPE positions against Python's rule, the errors a caller gets before anything runs, and, on a tiny
exported vision bundle, greedy tokens equal to the eager Qwen35VisionLanguage's for the same pixels, one-shot and
served (a second turn and a snapshot keep the rotary position behind the slot)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from native_testlib import run_bench
from qwen_mobile.runtime import native

sys.path.insert(0, str(native.RUNTIME_DIR / "scripts"))
from serve_client import ServeClient  # noqa: E402

IMAGE, START, END = 150, 152, 153  # make_hf_vlm's ids; the conftest text bundle's vocabulary is 160
# (height, width) -> grid_thw at patch 16, merge 2: square, wide and tall merged grids (4x4, 2x4, 3x1).
SIZES = {(128, 128): (1, 8, 8), (64, 128): (1, 4, 8), (96, 32): (1, 6, 2)}


def vision_section(sizes=SIZES) -> dict:
    return {"image_token_id": IMAGE, "vision_start_token_id": START, "vision_end_token_id": END, "patch_size": 16,
            "spatial_merge_size": 2, "temporal_patch_size": 2,
            "pixels": {"dtype": "uint8", "layout": "HWC-RGB"},
            "images": [{"method": f"encode_image_{h}x{w}", "height": h, "width": w, "grid_thw": list(g),
                        "tokens": g[1] * g[2] // 4} for (h, w), g in sizes.items()],
            "methods": {"embed": "embed_tokens", "prefill": "prefill_embeddings", "decode": "decode_token_rope"}}


@pytest.fixture(scope="module")
def fp32(request) -> Path:
    """conftest's text bundle; QWEN_NATIVE_TEST_FP32_BUNDLE names an exported copy (as in test_serve.py)."""
    given = os.environ.get("QWEN_NATIVE_TEST_FP32_BUNDLE")
    return Path(given) if given else request.getfixturevalue("fp32_bundle")


@pytest.fixture(scope="module")
def manifest_only_vision(fp32, tmp_path_factory) -> Path:
    """The text bundle with a vision section in its manifest and no image methods in its program: enough for every
    check the runner makes before a method runs (the manifest is not among the hashed files)."""
    fp32_bundle = fp32
    copy = tmp_path_factory.mktemp("vision-manifest") / "bundle"
    shutil.copytree(fp32_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["vision"] = vision_section()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def expanded(prompt: list[int], tokens: int) -> list[int]:
    i = prompt.index(IMAGE)
    return prompt[:i] + [IMAGE] * tokens + prompt[i + 1:]


PROMPTS = [
    [START, IMAGE, END, 5, 6, 7],
    [1, 2, 3, START, IMAGE, END, 40, 41],
    [START, IMAGE, END],
]


@pytest.mark.parametrize("size", list(SIZES), ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("prompt", PROMPTS, ids=["image-first", "text-around", "image-only"])
def test_positions_follow_pythons_rule(qwen_bench, manifest_only_vision, size, prompt):
    from qwen_mobile.models.vision_language import mrope_positions

    grid = SIZES[size]
    out = json.loads(run_bench(qwen_bench, "--bundle", manifest_only_vision, "--print-positions", "--image-size",
                               f"{size[0]}x{size[1]}", "--prompt-ids", ",".join(map(str, prompt))).stdout)
    ids = expanded(prompt, grid[1] * grid[2] // 4)
    rope, next_rope = mrope_positions(ids, [grid], IMAGE, 2)
    assert out["tokens"] == ids
    assert out["rope_pos"] == rope.tolist()
    assert out["next_rope_position"] == next_rope <= len(ids)  # behind the slot, unless the merged grid is a line
    assert out["method"] == f"encode_image_{size[0]}x{size[1]}"
    begin = prompt.index(IMAGE)
    assert (out["image_begin"], out["image_end"]) == (begin, begin + grid[1] * grid[2] // 4)


def test_positions_by_hand_for_a_wide_image(qwen_bench, manifest_only_vision):
    """64x128 pixels: 4x8 patches, 2x4 merged. CONTRACT.md step 3 worked out by hand: after text (0, 1) and
    vision_start (2), token k of the image sits at (3, 3 + k//4, 3 + k%4); p then advances by max(2, 4) = 4."""
    out = json.loads(run_bench(qwen_bench, "--bundle", manifest_only_vision, "--print-positions", "--image-size",
                               "64x128", "--prompt-ids", f"9,8,{START},{IMAGE},{END},7").stdout)
    assert out["rope_pos"] == [
        [0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 7, 8],
        [0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4, 7, 8],
        [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8],
    ]
    assert out["next_rope_position"] == 9


def test_default_prompt_is_the_image_span_then_the_sample_prompt(qwen_bench, manifest_only_vision):
    manifest = json.loads((manifest_only_vision / "manifest.json").read_text())
    out = json.loads(run_bench(qwen_bench, "--bundle", manifest_only_vision, "--print-positions", "--image-size",
                               "96x32").stdout)
    assert out["tokens"] == [START] + [IMAGE] * 3 + [END] + manifest["sample_prompt"]["ids"]


def bench_error(exe, *args) -> str:
    proc = run_bench(exe, *args, check=False)
    assert proc.returncode == 1 and not proc.stdout, proc.stdout
    return proc.stderr.strip().splitlines()[-1]  # after ExecuTorch's log lines


def test_cli_errors_name_the_flag(qwen_bench, manifest_only_vision, fp32, tmp_path):
    fp32_bundle = fp32
    rgb = tmp_path / "img.rgb"
    rgb.write_bytes(bytes(96 * 32 * 3))
    prompt = ("--prompt-ids", f"{START},{IMAGE},{END},5")
    err = bench_error(qwen_bench, "--bundle", fp32_bundle, "--image", rgb, "--image-size", "96x32", *prompt)
    assert "--image:" in err and "no vision section" in err
    err = bench_error(qwen_bench, "--bundle", manifest_only_vision, "--image", rgb, "--image-size", "32x96", *prompt)
    assert "--image-size: an image of 32x96 (HxW)" in err and "128x128, 64x128, 96x32 (HxW)" in err
    err = bench_error(qwen_bench, "--bundle", manifest_only_vision, "--image", rgb, "--image-size", "64x128", *prompt)
    assert f"--image: {rgb} has 9216 bytes; --image-size 64x128 needs 24576" in err
    err = bench_error(qwen_bench, "--bundle", manifest_only_vision, "--image", rgb, "--image-size", "96x32",
                      "--prompt-ids", "5,6,7")
    assert err.startswith("qwen-bench: error: --prompt-ids: 0 image tokens (150) for one image")
    err = bench_error(qwen_bench, "--bundle", manifest_only_vision, "--image", rgb, "--image-size", "96x32",
                      "--prompt-ids", f"{START},{IMAGE},{END},{START},{IMAGE},{END}")
    assert "--prompt-ids: 2 image tokens (150) for one image" in err
    assert "--image-size: expected HxW" in bench_error(qwen_bench, "--bundle", fp32_bundle, "--image", rgb,
                                                       "--image-size", "96by32")
    assert "--image: give its size" in bench_error(qwen_bench, "--bundle", fp32_bundle, "--image", rgb)
    assert "--serve: --image is a benchmark-mode option" in bench_error(
        qwen_bench, "--serve", "--bundle", fp32_bundle, "--image", rgb, "--image-size", "96x32")


def image_field(height: int, width: int, data: bytes | None = None, **extra) -> dict:
    data = bytes(height * width * 3) if data is None else data
    return {"width": width, "height": height, "rgb_base64": base64.b64encode(data).decode(), **extra}


def test_serve_image_errors_name_the_field(qwen_bench, manifest_only_vision, fp32):
    fp32_bundle = fp32
    prompt = [START, IMAGE, END, 5]
    with ServeClient([str(qwen_bench), "--serve", "--bundle", str(manifest_only_vision)], timeout=300) as c:
        assert c.ready["image_sizes"] == [{"height": 128, "width": 128, "tokens": 16},
                                          {"height": 64, "width": 128, "tokens": 8},
                                          {"height": 96, "width": 32, "tokens": 3}]

        def error(**request) -> str:
            r = c.request(dict(op="generate", max_new_tokens=2, **request))
            assert r["event"] == "error" and r["op"] == "generate", r
            return r["message"]

        assert error(prompt_ids=prompt, image=image_field(32, 96)).startswith(
            "image: an image of 32x96 (HxW) pixels; this bundle encodes 128x128, 64x128, 96x32 (HxW) only")
        assert error(prompt_ids=prompt, image=image_field(96, 32, bytes(10))).startswith(
            "image.rgb_base64: 10 bytes; a 96x32 (HxW) RGB image has 9216")
        bad = image_field(96, 32)
        bad["rgb_base64"] = bad["rgb_base64"][:-1] + "*"
        assert error(prompt_ids=prompt, image=bad).startswith("image.rgb_base64: not base64")
        assert error(prompt_ids=prompt, image=image_field(96, 32, depth=3)).startswith("image.depth: unknown field")
        assert error(prompt_ids=prompt, image={"width": 32, "rgb_base64": ""}).startswith("image.height: required")
        assert error(prompt_ids=prompt, image="pixels").startswith("image: expected {")
        assert error(prompt_ids=[5, 6], image=image_field(96, 32)).startswith("prompt_ids: 0 image tokens (150)")
        assert error(prompt_ids=prompt + prompt, image=image_field(96, 32)).startswith(
            "prompt_ids: 2 image tokens (150)")
        assert error(prompt_ids=[START, IMAGE, END] + [5] * 90, image=image_field(128, 128)).startswith(
            "prompt_ids: 108 tokens (the image's 16 included) do not fit: position 0 + 108 > the bundle's context "
            "of 96")
        # Nothing ran: the session is where it was, and a text generate still works on this bundle.
        info = c.request({"op": "info"})
        assert info["position"] == 0 and info["rope_position"] == 0
        tokens, done = c.generate([5, 6, 7], 3, stop_at_stop_ids=False)
        assert len(tokens) == 3 and done["rope_position"] == done["position"] == 5
    with ServeClient([str(qwen_bench), "--serve", "--bundle", str(fp32_bundle)], timeout=300) as c:
        assert "image_sizes" not in c.ready
        r = c.request(dict(op="generate", prompt_ids=prompt, image=image_field(96, 32)))
        assert r["event"] == "error" and r["message"].startswith("image: this bundle has no vision section")
