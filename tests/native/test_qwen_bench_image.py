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

import numpy as np
import pytest
import torch
from native_testlib import run_bench, validate
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
    assert "--serve: --no-image-rows is a benchmark-mode option" in bench_error(
        qwen_bench, "--serve", "--bundle", fp32_bundle, "--no-image-rows")
    assert "--prompt-len: random prompts have no image token" in bench_error(
        qwen_bench, "--bundle", manifest_only_vision, "--image", rgb, "--image-size", "96x32", "--prompt-len", "8")


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


# -- a tiny exported vision bundle: the runner's tokens against the eager model ------------------------------------
# Tower B of tests/models/test_vision_parity.py (4-pixel patches, merge 2): 32x48 pixels = 8x12 patches = 24 tokens
# on a 4x6 merged grid, wide, so the H and W rotary rows differ. The prompt (5 + 26 + 6 = 37 tokens) takes three
# prefill chunks of 16.
VLM_SIZE = (32, 48)
VLM_PROMPT = [11, 42, 7, 99, 3, START, IMAGE, END, 5, 17, 23, 64, 8, 120]
VLM_GEN = 16
VLM_TURN2 = [9, 31, 77, 4]
# fp32 logits of the bundle vs eager, relative to max(1, max |logit|): tests/export/test_vision_bundle.py's bound.
LOGITS_RELATIVE_ATOL = 1e-4


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, bundle): tower B with an untied head (a tied tiny model greedily repeats one token, which would
    make the comparison trivial). QWEN_NATIVE_TEST_VLM_DIR names a folder holding both, as this fixture writes them,
    to skip the export while iterating."""
    given = os.environ.get("QWEN_NATIVE_TEST_VLM_DIR")
    if given:
        return Path(given) / "checkpoint", Path(given) / "bundle"
    import warnings

    sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "models"), str(Path(__file__).resolve().parents[1])]
    from qwen_mobile.export import export
    from test_vision_parity import make_hf_vlm

    folder = tmp_path_factory.mktemp("vlm")
    make_hf_vlm("B", "hv1x", tied=False).save_pretrained(folder / "checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tokenizer.json": the bundle runs on token ids
        export(str(folder / "checkpoint"), folder / "bundle", preset="xnnpack-fp32", image_sizes="32x48",
               max_seq_len=96, max_prefill_chunk=16, progress=False)
    return folder / "checkpoint", folder / "bundle"


def pattern_rgb() -> torch.Tensor:
    """A 32x48 image with structure (ramps and a checkerboard), uint8 [H,W,3]: exactly the bundle's size, so the
    runner and the eager model see the same pixels with no resize in between."""
    h, w = VLM_SIZE
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    return torch.stack([rows * 8, cols * 5, ((rows // 4 + cols // 4) % 2) * 255], dim=-1).to(torch.uint8)


def eager_greedy(checkpoint: Path, prompt: list[int], rgb: torch.Tensor, n: int):
    """Qwen35VisionLanguage over the prompt with its one image token expanded: greedy tokens and their logits."""
    from qwen_mobile.models.vision_language import Qwen35VisionLanguage
    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, normalize, patchify

    model = Qwen35VisionLanguage.from_pretrained(checkpoint, max_seq_len=96)
    processor = ImageProcessorConfig.from_pretrained(checkpoint, model.visual.config)
    patches, gh, gw = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)  # [H,W,3] -> [3,H,W]
    grid = (1, gh, gw)
    ids = expanded(prompt, gh * gw // 4)
    tokens = model.generate(ids, patches, [grid], max_new_tokens=n)
    logits = [model.prefill(ids, patches, [grid])[0, -1]]
    for t in tokens[:-1]:
        logits.append(model.decode(t)[0, -1])
    return tokens, torch.stack(logits)  # [n, vocab]


@pytest.mark.slow
def test_image_question_equals_eager(qwen_bench, vlm, tmp_path):
    checkpoint, bundle = vlm
    rgb = pattern_rgb()
    (tmp_path / "img.rgb").write_bytes(rgb.numpy().tobytes())
    logits_file = tmp_path / "logits.bin"
    out = tmp_path / "bench.json"
    run_bench(qwen_bench, "--bundle", bundle, "--image", tmp_path / "img.rgb", "--image-size", "32x48",
              "--prompt-ids", ",".join(map(str, VLM_PROMPT)), "--gen", VLM_GEN, "--runs", 2, "--warmup", 1,
              "--no-power", "--dump-logits", logits_file, "--json", out)
    result = json.loads(out.read_text())
    validate(result)
    res = result["results"][0]
    want, want_logits = eager_greedy(checkpoint, VLM_PROMPT, rgb, VLM_GEN)
    assert len(set(want)) >= 3, f"a degenerate greedy run proves little: {want}"
    assert eager_greedy(checkpoint, VLM_PROMPT, 255 - rgb, VLM_GEN)[0] != want, "the image should move the tokens"
    assert res["generated_ids"] == want and res["runs_identical"]
    got_logits = torch.from_numpy(np.fromfile(logits_file, dtype=np.float32)).reshape(VLM_GEN, -1)
    err = (got_logits - want_logits).abs().max().item()
    bound = LOGITS_RELATIVE_ATOL * max(1.0, want_logits.abs().max().item())
    assert err <= bound, f"max |qwen-bench - eager| logit = {err:.2e} > {bound:.2e}"
    assert res["prompt_tokens"] == len(VLM_PROMPT) - 1 + 24
    assert res["image"] == {"method": "encode_image_32x48", "height": 32, "width": 48, "tokens": 24,
                            "file": str(tmp_path / "img.rgb")}
    assert all(s["image_encode_ms"] > 0 for s in res["samples"])
    assert res["ttft_ms"]["min"] > res["image_encode_ms"]["min"] > 0  # the time to first token includes the encode
    # The bench schema's image rows, as runtime/bench.py writes them: the test card + 16 text tokens per size.
    (row,) = result["images"]
    assert (row["method"], row["height"], row["width"], row["tokens"]) == ("encode_image_32x48", 32, 48, 24)
    assert row["prompt_tokens"] == 3 - 1 + 24 + 16
    assert row["ttft_ms"]["min"] > row["encode_ms"]["min"] > 0


def rgb_field(rgb: torch.Tensor) -> dict:
    return {"width": rgb.shape[1], "height": rgb.shape[0], "rgb_base64": base64.b64encode(rgb.numpy().tobytes()).decode()}


@pytest.mark.slow
def test_serve_image_turns_and_snapshots(qwen_bench, vlm, tmp_path):
    """Served with base64 pixels: the eager tokens; a text turn after the image keeps the rotary position behind the
    slot (= one generate over the whole conversation); a snapshot carries that offset."""
    checkpoint, bundle = vlm
    rgb = pattern_rgb()
    want, _ = eager_greedy(checkpoint, VLM_PROMPT, rgb, VLM_GEN)
    argv = [str(qwen_bench), "--serve", "--bundle", str(bundle)]
    with ServeClient(argv, timeout=300) as c, ServeClient(argv, timeout=300) as fresh:
        tokens, done = c.generate(VLM_PROMPT, VLM_GEN, stop_at_stop_ids=False, image=rgb_field(rgb))
        assert tokens == want
        fed = len(VLM_PROMPT) - 1 + 24
        assert done["prompt_tokens"] == len(VLM_PROMPT) and done["image_tokens"] == 24
        assert done["position"] == fed + VLM_GEN - 1
        # Positions: 5 text, vision_start, the image's 4x6 grid advancing p by 6, vision_end and 6 text = 19 < 37.
        assert done["rope_position"] == 19 + VLM_GEN - 1
        assert done["image_encode_ms"] > 0 and done["ttft_ms"] > done["image_encode_ms"]

        turn1, _ = c.generate(VLM_PROMPT, 6, stop_at_stop_ids=False, image=rgb_field(rgb))
        saved = c.request({"op": "save", "path": str(tmp_path / "snap.safetensors")})
        assert saved["event"] == "ok", saved
        turn2, done2 = c.generate(VLM_TURN2, 8, stop_at_stop_ids=False, **{"continue": True})
        assert done2["rope_position"] == 19 + 6 + len(VLM_TURN2) + 7 and "image_tokens" not in done2
        whole, _ = fresh.generate(VLM_PROMPT + turn1 + VLM_TURN2, 8, stop_at_stop_ids=False, image=rgb_field(rgb))
        assert turn2 == whole
        want_whole, _ = eager_greedy(checkpoint, VLM_PROMPT + turn1 + VLM_TURN2, rgb, 8)
        assert turn2 == want_whole

        from safetensors import safe_open

        with safe_open(str(tmp_path / "snap.safetensors"), framework="pt") as f:
            assert f.metadata()["rope_offset"] == str((19 + 5) - (fed + 5))  # runtime/session.py's key and sign
        c.request({"op": "reset"})
        loaded = c.request({"op": "load", "path": str(tmp_path / "snap.safetensors")})
        assert loaded["position"] == fed + 5
        assert c.request({"op": "info"})["rope_position"] == 19 + 5
        assert c.generate(VLM_TURN2, 8, stop_at_stop_ids=False, **{"continue": True})[0] == turn2

        # The runner's snapshot in Python's Session, and Python's in the runner (runtime/session.py).
        from qwen_mobile.runtime.bundle import Bundle
        from qwen_mobile.runtime.images import bundle_image

        py = Bundle(bundle)
        session = py.session()
        assert session.load(tmp_path / "snap.safetensors").rope_offset == (19 + 5) - (fed + 5)
        assert session.generate(VLM_TURN2, 8, stop_ids=set()).ids == turn2
        session = py.session()
        image = bundle_image(rgb.permute(2, 0, 1).contiguous(), py.vision)  # [H,W,3] -> [3,H,W], no resize
        assert session.generate(VLM_PROMPT, 6, stop_ids=set(), images=[image]).ids == turn1
        session.save(tmp_path / "python.safetensors")
        c.request({"op": "reset"})
        assert c.request({"op": "load", "path": str(tmp_path / "python.safetensors")})["position"] == fed + 5
        assert c.generate(VLM_TURN2, 8, stop_at_stop_ids=False, **{"continue": True})[0] == turn2

        # A served bench carries the image rows too (the app's device runs), unless asked not to.
        bench = c.request({"op": "bench", "prompt_lens": [8], "gen": 2, "runs": 1, "warmup": 0})["result"]
        validate(bench)
        assert [(r["method"], r["prompt_tokens"]) for r in bench["images"]] == [("encode_image_32x48", 42)]
        bench = c.request({"op": "bench", "prompt_lens": [8], "gen": 2, "runs": 1, "warmup": 0, "images": False})
        assert "images" not in bench["result"]
