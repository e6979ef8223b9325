"""Image + text prompts end to end: our tower, M-RoPE positions and text decoder (models/vision_language.py) vs
transformers' Qwen3_5ForConditionalGeneration, prefill logits and 16 decode steps through its own cache."""

import copy

import pytest
import torch

from test_vision_parity import hf_vlm, random_patches  # noqa: F401 (hf_vlm: a fixture shared with that file)
from qwen_mobile.models.vision_language import Qwen35VisionLanguage, mrope_positions

LOGITS_ATOL = 1e-4  # fp32 logits, as the text model's parity tests. Measured <= 3.3e-6.
DECODE_STEPS = 16

# (tower, head regime, tied, image grids, text runs around the images). Grids are (1, patch rows, patch columns):
# non-square ones make the H and W rows differ; 10 x 12 patches give 30 image tokens, so that prompt (72 tokens)
# crosses the delta rule's 64-token chunk; "image-first" starts the prompt with an image.
PROMPTS = [
    pytest.param("A", "hv1x", True, [(1, 4, 6)], [5, 7], id="A-hv1x-one-4x6"),
    pytest.param("A", "hv2x", False, [(1, 10, 12)], [30, 10], id="A-hv2x-one-10x12-long"),
    pytest.param("B", "hv1x", True, [(1, 8, 4), (1, 6, 6)], [3, 4, 6], id="B-hv1x-two-8x4-6x6"),
    pytest.param("B", "hv2x", True, [(1, 2, 12)], [0, 9], id="B-hv2x-image-first-2x12"),
]


def build_prompt(vlm, grids, text_runs, seed):
    """text run, image, text run, image, ..., text run; text ids avoid the vision special ids (150..153)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = []
    for k, run in enumerate(text_runs):
        tokens += torch.randint(0, 150, (run,), generator=gen).tolist()
        if k < len(grids):
            tokens += vlm.image_placeholder(grids[k])
    return tokens


@pytest.fixture(scope="module")
def case(hf_vlm):
    cache = {}

    def get(vision, regime, tied):
        key = (vision, regime, tied)
        if key not in cache:
            folder, hf = hf_vlm(vision, regime, tied)
            cache[key] = (Qwen35VisionLanguage.from_pretrained(folder, max_seq_len=160, gdn_impl="reference"), hf)
        return cache[key]

    return get


def hf_inputs(vlm, tokens, pixels, grids):
    ids = torch.tensor([tokens])
    # An explicit all-ones mask: without one, generate() masks every prompt token equal to pad_token_id.
    return dict(input_ids=ids, pixel_values=pixels, image_grid_thw=torch.tensor(grids),
                mm_token_type_ids=(ids == vlm.image_token_id).int(), attention_mask=torch.ones_like(ids))


@pytest.mark.parametrize("impl", ["reference", "op"])
@pytest.mark.parametrize("vision,regime,tied,grids,text_runs", PROMPTS)
def test_prefill_and_decode_match_transformers(case, vision, regime, tied, grids, text_runs, impl):
    vlm, hf = case(vision, regime, tied)
    vlm.text.set_gdn_impl(impl)
    tokens = build_prompt(vlm, grids, text_runs, seed=len(text_runs))
    pixels = random_patches(grids, vlm.visual.config.patch_dim, seed=sum(text_runs))
    inputs = hf_inputs(vlm, tokens, pixels, grids)
    with torch.no_grad():
        ref_prefill = hf(**inputs, use_cache=False).logits
        # transformers' own incremental path: get_rope_index at prefill, then rope_deltas for every decoded token.
        out = hf.generate(**inputs, max_new_tokens=DECODE_STEPS + 1, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    generated = out.sequences[0, len(tokens):].tolist()

    got = vlm.prefill(tokens, pixels, grids)
    torch.testing.assert_close(got, ref_prefill, atol=LOGITS_ATOL, rtol=0, msg=lambda m: f"prefill: {m}")
    torch.testing.assert_close(got[:, -1], out.logits[0], atol=LOGITS_ATOL, rtol=0)
    for step in range(DECODE_STEPS):
        got = vlm.decode(generated[step])
        torch.testing.assert_close(got[:, 0], out.logits[step + 1], atol=LOGITS_ATOL, rtol=0,
                                   msg=lambda m: f"decode step {step}: {m}")


def test_greedy_generation_matches_transformers(case):
    vlm, hf = case("B", "hv1x", True)
    grids = [(1, 4, 8)]
    tokens = build_prompt(vlm, grids, [6, 5], seed=11)
    pixels = random_patches(grids, vlm.visual.config.patch_dim, seed=12)
    with torch.no_grad():
        ref = hf.generate(**hf_inputs(vlm, tokens, pixels, grids), max_new_tokens=20, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(tokens):].tolist()
    assert vlm.generate(tokens, pixels, grids, max_new_tokens=20) == ref


def test_positions_match_get_rope_index(hf_vlm):
    """Our positions and the decode offset vs transformers' get_rope_index on prompts with one and two images."""
    _, hf = hf_vlm("A")
    for grids, runs in [([(1, 4, 6)], [3, 2]), ([(1, 8, 2), (1, 2, 6)], [0, 5, 1]), ([(1, 6, 6)], [4, 0])]:
        tokens = []
        for k, run in enumerate(runs):
            tokens += [7] * run
            if k < len(grids):
                _, h, w = grids[k]
                tokens += [152] + [150] * (h * w // 4) + [153]
        ids = torch.tensor([tokens])
        ref, delta = hf.model.get_rope_index(ids, (ids == 150).int(), image_grid_thw=torch.tensor(grids))
        got, next_pos = mrope_positions(tokens, grids, image_token_id=150, merge=2)
        assert torch.equal(got, ref[:, 0]), (grids, runs)
        assert next_pos - len(tokens) == int(delta)  # the first decoded token's position is its slot + delta


def test_text_only_embeddings_equal_token_forward(case):
    """With all three rows equal to the slots, forward_embeddings is forward(tokens): bit-equal logits, because the
    M-RoPE tables are the 1-D tables' fp32 products."""
    vlm, _ = case("A", "hv1x", True)
    text = vlm.text.set_gdn_impl("reference")
    ids = torch.randint(0, 150, (1, 21), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(21)
    with torch.no_grad():
        text.reset()
        by_tokens = text(ids, pos)
        text.reset()
        by_embeds = text.forward_embeddings(text.model.embed_tokens(ids), pos, pos.expand(3, -1))
    assert torch.equal(by_tokens, by_embeds)


def test_bad_prompts_are_named(case):
    vlm, _ = case("A", "hv1x", True)
    grids = [(1, 4, 6)]
    pixels = random_patches(grids, vlm.visual.config.patch_dim, seed=0)
    tokens = [1, 2] + vlm.image_placeholder(grids[0]) + [3]
    with pytest.raises(ValueError, match="has 5 tokens; its image grid"):
        vlm.prefill([t for k, t in enumerate(tokens) if k != 3], pixels, grids)
    with pytest.raises(ValueError, match="more image-token runs than images"):
        vlm.prefill(tokens + vlm.image_placeholder(grids[0]), pixels, grids)
    with pytest.raises(ValueError, match="2 images given but the prompt has fewer image-token runs"):
        vlm.prefill(tokens, torch.cat([pixels, pixels]), grids * 2)
    with pytest.raises(ValueError, match=r"forward_embeddings\(embeds \[B,T,64\], input_pos \[T\], rope_pos \[3,T\]\)"):
        vlm.text.forward_embeddings(torch.zeros(1, 4, 64), torch.arange(4), torch.zeros(1, 4, dtype=torch.long))


def test_image_file_to_tokens_matches_transformers(case, tmp_path):
    """A PNG on disk end to end: our decode + preprocessing + tower + decoder vs transformers' image processor on the
    same decoded image + Qwen3_5ForConditionalGeneration.generate; greedy tokens equal. The image sits on the
    32-pixel grid, where both preprocessings agree to the bit (test_vision_preprocess.py)."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, decode_image, preprocess_file

    vlm, hf = case("A", "hv1x", True)
    rgb = torch.randint(0, 256, (64, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    Image.fromarray(rgb.numpy()).save(tmp_path / "photo.png")
    config = ImageProcessorConfig(min_pixels=32 * 32, max_pixels=128 * 128)
    image = preprocess_file(tmp_path / "photo.png", config)
    theirs = Qwen2VLImageProcessorPil(patch_size=16, image_mean=config.image_mean, image_std=config.image_std,
                                      size={"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels})
    ref = theirs(images=[Image.fromarray(decode_image(tmp_path / "photo.png").permute(1, 2, 0).numpy())],
                 return_tensors="pt")
    assert image.grid_thw == tuple(ref["image_grid_thw"][0].tolist()) == (1, 4, 6)
    tokens = [3, 4] + vlm.image_placeholder(image.grid_thw) + [5, 6, 7]
    with torch.no_grad():
        expected = hf.generate(**hf_inputs(vlm, tokens, ref["pixel_values"], [image.grid_thw]), max_new_tokens=12,
                               do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(tokens):].tolist()
    assert vlm.generate(tokens, image.pixel_values, [image.grid_thw], max_new_tokens=12) == expected


def test_vision_token_ids_outside_the_vocabulary_are_named(case):
    import dataclasses

    from qwen_mobile.models.config import ConfigError

    vlm, _ = case("A", "hv1x", True)
    visual = copy.copy(vlm.visual)
    visual.config = dataclasses.replace(vlm.visual.config, image_token_id=248056)  # the releases' id, vocab 160 here
    with pytest.raises(ConfigError, match=r"config field 'image_token_id' is 248056, outside the text model's "
                                          r"vocabulary 0\.\.159"):
        Qwen35VisionLanguage(vlm.text, visual)
