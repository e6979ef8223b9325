"""Image prompts through the host runtime (runtime/session.py, runtime/images.py; CONTRACT.md "Images") and the CLI
(`run --image`, chat `/image`, bench's image rows), against eager `Qwen35VisionLanguage` (held to transformers by
tests/models/test_vision_parity.py and test_vision_pipeline.py) fed the same resized pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwen_mobile.models.vision_language import Qwen35VisionLanguage
from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, normalize, patchify
from qwen_mobile.runtime.bundle import Bundle
from qwen_mobile.runtime.images import image_span, load_image
from qwen_mobile.runtime.sampling import Sampler, SamplingConfig

# fp32 bundle vs eager fp32, relative to max(1, max |logit|): the text gate's bound (verify.FP32_MAX_ABS_LOGIT_DIFF).
LOGITS_RELATIVE_ATOL = 1e-4
GENERATED = 12


@pytest.fixture(scope="module")
def vlm(vlm_b_fp32):
    """tests/conftest.py's tiny VLM (tower B, 4-pixel patches, sizes 32x32 and 32x48) and its fp32 bundle."""
    src, out, _ = vlm_b_fp32
    return src, out


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 60 x 40 (W x H) PNG: the size rule picks 32x48 (same 3:2 shape), so the host resizes it."""
    from PIL import Image

    gen = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (40, 60, 3), generator=gen, dtype=torch.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(pixels.numpy()).save(path)
    return path


def eager_for(src: Path):
    eager = Qwen35VisionLanguage.from_pretrained(src, max_seq_len=96)
    processor = ImageProcessorConfig.from_pretrained(src, eager.visual.config)
    return eager, processor


def eager_patches(image, processor):
    """The bundle's resized uint8 pixels -> the eager tower's patches (the bundle normalizes and patches in-graph)."""
    patches, gh, gw = patchify(normalize(image.rgb.permute(2, 0, 1), processor), processor)  # [H,W,3] -> [3,H,W]
    return patches, [(1, gh, gw)]


def assert_logits_close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    bound = LOGITS_RELATIVE_ATOL * max(1.0, ref.abs().max().item())
    err = (got - ref).abs().max().item()
    assert err <= bound, f"{what}: max |bundle - eager| = {err:.2e} > {bound:.2e}"


def test_image_question_matches_eager(vlm, photo):
    src, out = vlm
    bundle = Bundle(out)
    image = load_image(photo, bundle.vision)
    assert image.size == (32, 48) and image.original_size == (40, 60)
    prompt = [5, 6] + image_span(bundle.vision) + [7, 8, 9]
    session = bundle.session()
    result = session.generate(prompt, GENERATED, Sampler(SamplingConfig()), stop_ids=set(), keep_logits=True,
                              images=[image])
    eager, processor = eager_for(src)
    patches, grids = eager_patches(image, processor)
    expanded = result.prompt_ids
    assert expanded.count(bundle.vision["image_token_id"]) == image.tokens == 24
    ref_ids = eager.generate(expanded, patches, grids, max_new_tokens=GENERATED)
    assert result.ids == ref_ids, "greedy tokens of the bundle differ from eager Qwen35VisionLanguage"
    assert len(set(ref_ids)) > 3, f"degenerate check: eager answers {ref_ids}"
    eager_first = eager.prefill(expanded, patches, grids)[0, -1]
    assert_logits_close(result.logits[0], eager_first, "first-token logits")
    assert session.rope_offset < 0  # 24 image tokens advance the rotary position by max(4, 6) = 6


def test_second_turn_and_snapshot_keep_the_rope_offset(vlm, photo, tmp_path):
    src, out = vlm
    bundle = Bundle(out)
    image = load_image(photo, bundle.vision)
    greedy = Sampler(SamplingConfig())
    first = bundle.session()
    turn1 = first.generate([5] + image_span(bundle.vision) + [7], 4, greedy, stop_ids=set(), images=[image])
    snap_file = first.save(tmp_path / "turn1.safetensors")
    offset_at_save = first.rope_offset
    turn2 = first.generate([11, 12, 13], 6, greedy, stop_ids=set(), keep_logits=True)

    # Eager: the same image prompt, its 4 tokens, then the second turn's tokens fed one by one.
    eager, processor = eager_for(src)
    patches, grids = eager_patches(image, processor)
    logits = eager.prefill(turn1.prompt_ids, patches, grids)
    # Decode fed turn 1's tokens but its last, which stayed pending and went in with turn 2's prompt.
    for token in turn1.ids + [11, 12, 13]:
        logits = eager.decode(token)
    assert_logits_close(turn2.logits[0], logits[0, -1], "second turn's first logits")

    resumed = bundle.session()
    resumed.load(snap_file)
    assert resumed.rope_offset == offset_at_save < 0
    again = resumed.generate([11, 12, 13], 6, greedy, stop_ids=set())
    assert again.ids == turn2.ids, "a snapshot lost the rotary offset"


def test_cli_run_image_json(vlm, photo, capsys):
    from qwen_mobile.export.cli import main

    src, out = vlm
    code = main(["run", str(out), "--prompt-ids", "5,6", "--image", str(photo), "--max-new-tokens", "6",
                 "--json", "-"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"][0]["encoded_hw"] == [32, 48] and doc["images"][0]["original_hw"] == [40, 60]
    bundle = Bundle(out)
    image = load_image(photo, bundle.vision)
    eager, processor = eager_for(src)
    patches, grids = eager_patches(image, processor)
    # No image token in --prompt-ids: the span goes first.
    assert doc["prompt_ids"][:2] == [bundle.vision["vision_start_token_id"], bundle.vision["image_token_id"]]
    assert doc["ids"] == eager.generate(doc["prompt_ids"], patches, grids, max_new_tokens=6)


def test_cli_image_errors(vlm, photo, nano_bundle, capsys, tmp_path):
    from qwen_mobile.export.cli import main

    _, out = vlm
    assert main(["run", str(nano_bundle), "--prompt", "x", "--image", str(photo)]) == 2
    err = capsys.readouterr().err
    assert "--image: BUNDLE" in err and "has no image methods" in err, err
    assert main(["run", str(out), "--prompt-ids", "5", "--image", str(photo), "--image-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "--image: --image-size 64x64: this bundle encodes images of 32x32, 32x48" in err, err
    missing = tmp_path / "nope.png"
    assert main(["run", str(out), "--prompt-ids", "5", "--image", str(missing)]) == 2
    assert f"image {missing} does not exist" in capsys.readouterr().err


def test_bench_reports_image_rows(vlm, capsys, tmp_path):
    from qwen_mobile.export.cli import main

    _, out = vlm
    result = tmp_path / "bench.json"
    assert main(["bench", str(out), "--prompt-lengths", "8", "--gen", "2", "--runs", "1", "--warmup", "0",
                 "--json", str(result)]) == 0
    doc = json.loads(result.read_text())
    rows = {(r["height"], r["width"]): r for r in doc["images"]}
    assert set(rows) == {(32, 32), (32, 48)}
    assert rows[(32, 48)]["tokens"] == 24 and rows[(32, 48)]["prompt_tokens"] == 24 + 2 + 16
    assert 0 < rows[(32, 48)]["encode_ms"]["median"] < rows[(32, 48)]["ttft_ms"]["median"]
    assert "image HxW" in capsys.readouterr().out


def test_chat_image_and_run_chat_image_tokenize_the_span(vlm, photo, monkeypatch, capsys):
    import io

    from qwen_mobile.export.cli import main
    from qwen_mobile.runtime.chat import ChatTemplate

    src, out = vlm
    bundle = Bundle(out)
    image = load_image(photo, bundle.vision)
    eager, processor = eager_for(src)
    patches, grids = eager_patches(image, processor)
    # What the chat sends: the user turn with Qwen's image span before the text, then the generation prompt.
    template = ChatTemplate(thinking=False)
    ids = bundle.encode(template.user("<|vision_start|><|image_pad|><|vision_end|>w5 w6"))
    assert ids.count(150) == 1 and ids[ids.index(150) - 1] == 152 and ids[ids.index(150) + 1] == 153
    expanded = ids[:ids.index(150)] + [150] * image.tokens + ids[ids.index(150) + 1:]
    reply = eager.generate(expanded, patches, grids, max_new_tokens=8, stop_ids=tuple(bundle.stop_ids))
    expected = bundle.decode([t for t in reply if t not in bundle.stop_ids])

    missing = photo.parent / "missing.png"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {missing}\n/image\n/image {photo}\nw5 w6\n/quit\n"))
    assert main(["chat", str(out), "--max-new-tokens", "8", "--no-thinking"]) == 0
    captured = capsys.readouterr()
    # A bad /image is one error line and the chat goes on (the reply below still comes, with the good image only).
    assert f"error: /image: image {missing} does not exist" in captured.err, captured.err
    assert "error: /image needs a PATH" in captured.err and "Traceback" not in captured.err
    assert "(HxW), 24 tokens; sent with your next message" in captured.err, captured.err
    assert expected.strip() and expected.strip() in captured.out, (reply, expected, captured.out)

    assert main(["run", str(out), "--chat", "--no-thinking", "--prompt", "w5 w6", "--image", str(photo),
                 "--max-new-tokens", "8", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prompt_ids"] == expanded and doc["ids"] == reply
