"""Bundles from a checkpoint with a vision tower (runtime/CONTRACT.md, "Images"): the program's image methods against
our eager tower and eager `Qwen35VisionLanguage` (which tests/models/test_vision_parity.py holds to transformers), an
image question run through the methods exactly as CONTRACT.md's steps say, the manifest's vision section, the 8da4w
gate, and the flags. Tiny random VLM checkpoints written by transformers; one bundle per fixture, shared by the module.

Exporting a tiny VLM bundle for other tests or tools (a checkpoint folder and a bundle):

    .venv/bin/python tests/export/test_vision_bundle.py OUT_DIR [--vision A|B] [--preset xnnpack-fp32]
        [--image-sizes 128,64x128,96x32]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "models"), str(TESTS)]  # test_vision_parity's tiny VLM builder and its checkpoints.py
from test_vision_parity import hf_vlm, make_hf_vlm  # noqa: E402,F401 (hf_vlm: a fixture shared with that file)

from qwen_mobile.export import export  # noqa: E402
from qwen_mobile.models.vision import Qwen35VisionModel  # noqa: E402
from qwen_mobile.models.vision_language import Qwen35VisionLanguage, mrope_positions  # noqa: E402
from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, normalize, patchify  # noqa: E402
from qwen_mobile.runtime import bundle as bundles, contract  # noqa: E402
from qwen_mobile.runtime.errors import UsageError  # noqa: E402

SMALL = dict(max_seq_len=96, max_prefill_chunk=16, progress=False)
# Tower B: 4-pixel patches, merge 2 -> sides in multiples of 8; 32x32 = 8x8 patches = 16 tokens, 32x48 = 24 tokens
# (a wide image: its H and W rotary rows differ). Tower A: 16-pixel patches -> multiples of 32.
B_SIZES = "32,32x48"
# encode_image (.pte, uint8 in) vs vision_preprocess.normalize + patchify + the eager tower, relative to
# max(1, max|ref|): measured 4.4e-6 on tower B (2e-6 of it the one-ulp difference of the in-graph x * rescale_factor,
# amplified by B's x50 query/key weights) and 4.8e-7 on tower A. With XNNPACK's own tanh-GELU it was 1.2e-5
# (vision_export.gelu_tanh).
ENCODE_RELATIVE_ATOL = 1e-5
# fp32 logits of the bundle vs eager Qwen35VisionLanguage, relative to max(1, max |logit|): the text gate's bound
# (verify.FP32_MAX_ABS_LOGIT_DIFF); the export's own image gate measured 8.6e-7 on this model.
LOGITS_RELATIVE_ATOL = 1e-4
GENERATED = 16


# The text model's matrices scaled from transformers' init (std 0.02) to std ~0.1: at 0.02 the greedy answer is one
# token repeated (measured: 16 x token 120), which would feed decode one input only (as test_export_bundle.py's
# VARIED_GREEDY_INIT).
TEXT_WEIGHT_SCALE = 5.0


def vlm_checkpoint(tmp_path_factory, vision: str) -> Path:
    return write_vlm_checkpoint(tmp_path_factory.mktemp(f"vlm-src-{vision}"), vision)


def write_vlm_checkpoint(folder: Path, vision: str) -> Path:
    """The tiny random VLM saved as an HF folder, its text weights scaled so greedy tokens are not near-ties."""
    model = make_hf_vlm(vision)
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            if p.dim() >= 2:
                p.mul_(TEXT_WEIGHT_SCALE)
    model.save_pretrained(folder)
    return folder


def export_quietly(src, out, **options) -> dict:
    with pytest.warns(UserWarning, match="no tokenizer.json"):
        return export(str(src), out, **{**SMALL, **options})


@pytest.fixture(scope="module")
def fp32_b(vlm_b_fp32):
    """tests/conftest.py's shared tower-B fp32 bundle (exported with a word-level tokenizer, B_SIZES and SMALL)."""
    return vlm_b_fp32


def load_program(bundle: Path):
    """All methods from one Program (their state buffers are shared only within one), our kernels registered."""
    from executorch.runtime import Runtime

    from qwen_mobile.runtime.library import load_library

    load_library()
    return Runtime.get().load_program(str(bundle / contract.PROGRAM))


def test_image_methods_and_manifest(fp32_b):
    src, out, manifest = fp32_b
    methods = manifest["program"]["methods"]
    images = ["encode_image_32x32", "encode_image_32x48"]
    assert set(methods) == {*contract.TOKEN_METHODS, contract.STATE_READ_METHOD, contract.STATE_WRITE_METHOD,
                            *contract.IMAGE_TEXT_METHODS, *images}
    assert set(load_program(out).method_names) >= set(methods)
    # Sizes, grids and token counts from the fixture's geometry (patch 4, merge 2), not from the exporter.
    vision = manifest["vision"]
    assert [(i["method"], i["height"], i["width"], i["grid_thw"], i["tokens"]) for i in vision["images"]] == [
        ("encode_image_32x32", 32, 32, [1, 8, 8], 16), ("encode_image_32x48", 32, 48, [1, 8, 12], 24)]
    assert (vision["image_token_id"], vision["vision_start_token_id"], vision["vision_end_token_id"]) == (150, 152, 153)
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (4, 2, 2)
    assert vision["pixels"] == {"dtype": "uint8", "layout": "HWC-RGB", "rescale_factor": 1 / 255,
                                "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    assert vision["methods"] == {"embed": "embed_tokens", "prefill": "prefill_embeddings",
                                 "decode": "decode_token_rope"}
    hidden = json.loads((src / "config.json").read_text())["text_config"]["hidden_size"]
    assert methods["encode_image_32x48"]["outputs"][0]["shape"] == [24, hidden]
    assert methods[contract.EMBEDDINGS_PREFILL_METHOD]["max_tokens"] == SMALL["max_prefill_chunk"]
    assert manifest["verification"]["image"]["passed"] and manifest["verification"]["image"]["greedy_identical"]
    # The schema and the one manifest builder accept it as written, and refuse it without the vision section.
    on_disk = json.loads((out / contract.MANIFEST).read_text())
    bundles.validate_manifest(on_disk)
    sections = {k: v for k, v in on_disk.items() if k not in ("schema_version", "format", "files")}
    contract.build_manifest(**sections)
    del sections["vision"]
    with pytest.raises(ValueError, match="image methods .* but no vision section"):
        contract.build_manifest(**sections)


@pytest.mark.parametrize("size", [(32, 32), (32, 48)], ids=["32x32", "32x48"])
def test_encode_image_matches_preprocess_and_eager_tower(fp32_b, size):
    src, out, _ = fp32_b
    visual = Qwen35VisionModel.from_pretrained(src)
    processor = ImageProcessorConfig.from_pretrained(src, visual.config)
    rgb = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))  # [H,W,3]
    patches, gh, gw = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)  # the preprocessor's [3,H,W]
    with torch.no_grad():
        ref = visual.encode_frame(patches, gh, gw)
    got = load_program(out).load_method(contract.image_method(*size)).execute([rgb])[0]
    err = (got - ref).abs().max().item()
    bound = ENCODE_RELATIVE_ATOL * max(1.0, ref.abs().max().item())
    assert got.shape == ref.shape and err <= bound, f"{size}: max |pte - eager| = {err:.2e} > {bound:.2e}"


def test_image_question_through_the_contract_steps_equals_eager(fp32_b):
    """CONTRACT.md, "Images", steps 1-5 with executorch.runtime, greedy, against Qwen35VisionLanguage.generate."""
    src, out, manifest = fp32_b
    vision = manifest["vision"]
    image = next(i for i in vision["images"] if (i["height"], i["width"]) == (32, 48))
    max_tokens = manifest["program"]["methods"][vision["methods"]["prefill"]]["max_tokens"]
    rows = torch.arange(32)[:, None].expand(32, 48)
    cols = torch.arange(48)[None, :].expand(32, 48)
    rgb = torch.stack([rows * 8, cols * 5, ((rows // 4 + cols // 4) % 2) * 255], dim=-1).to(torch.uint8)  # [H,W,3]

    # 1. tokens: text, the image's span, text (longer than one chunk: 5 + 26 + 6 = 37 > 16).
    span = [vision["vision_start_token_id"]] + [vision["image_token_id"]] * image["tokens"] + [
        vision["vision_end_token_id"]]
    prompt = [11, 42, 7, 99, 3] + span + [5, 17, 23, 64, 8, 120]
    program = load_program(out)
    method = program.load_method
    image_embeds = method(image["method"]).execute([rgb])[0]  # [N,hidden]
    # 2. embeddings in chunks of at most max_tokens; row k of the image's embeddings over its k-th image token.
    embeds = torch.cat([method(contract.EMBED_METHOD).execute([torch.tensor([prompt[i:i + max_tokens]])])[0][0]
                        for i in range(0, len(prompt), max_tokens)])  # [T,hidden]
    slots = torch.tensor(prompt) == vision["image_token_id"]
    embeds[slots] = image_embeds
    # 3. positions; 4. prefill chunk by chunk from slot 0.
    rope_pos, p = mrope_positions(prompt, [tuple(image["grid_thw"])], vision["image_token_id"],
                                  vision["spatial_merge_size"])
    prefill = method(contract.EMBEDDINGS_PREFILL_METHOD)
    for i in range(0, len(prompt), max_tokens):
        logits = prefill.execute([embeds[None, i:i + max_tokens].contiguous(),
                                  torch.arange(i, min(i + max_tokens, len(prompt))),
                                  rope_pos[:, i:i + max_tokens].contiguous()])[0]
    # 5. decode: the k-th generated token at slot T + k, rotary position p + k.
    decode = method(contract.ROPE_DECODE_METHOD)
    got_tokens, got_logits = [], [logits[0, -1]]
    for k in range(GENERATED):
        got_tokens.append(int(got_logits[-1].argmax()))
        if k + 1 < GENERATED:
            got_logits.append(decode.execute([torch.tensor([[got_tokens[-1]]]), torch.tensor([len(prompt) + k]),
                                              torch.tensor([p + k])])[0][0, -1])

    eager = Qwen35VisionLanguage.from_pretrained(src, max_seq_len=SMALL["max_seq_len"])
    processor = ImageProcessorConfig.from_pretrained(src, eager.visual.config)
    patches, _, _ = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)
    want_tokens = eager.generate(prompt, patches, [tuple(image["grid_thw"])], max_new_tokens=GENERATED)
    want_logits = [eager.prefill(prompt, patches, [tuple(image["grid_thw"])])[0, -1]]
    for token in want_tokens[:-1]:
        want_logits.append(eager.decode(token)[0, -1])
    assert p < len(prompt)  # the image moved the rotary position behind the slot: decode_token would be wrong here
    assert len(set(want_tokens)) >= 3, f"a degenerate greedy run proves little: {want_tokens}"
    assert got_tokens == want_tokens
    want, got = torch.stack(want_logits), torch.stack(got_logits)
    err, bound = (got - want).abs().max().item(), LOGITS_RELATIVE_ATOL * max(1.0, want.abs().max().item())
    assert err <= bound, f"max |bundle - eager| logit = {err:.2e} > {bound:.2e}"


def test_8da4w_bundle_passes_the_image_gate(hf_vlm, tmp_path):
    """Tower A: every linear but the kept patch embedding is a multiple of the group size, so 8da4w reaches them."""
    src, _ = hf_vlm("A")
    manifest = export_quietly(src, tmp_path / "vlm-a-8da4w", preset="xnnpack-8da4w", image_sizes="32,64",
                              quality_gate=True)
    image = manifest["verification"]["image"]
    assert image["passed"] and image["method"] == "encode_image_32x32" and image["steps"] > 16
    q = manifest["vision"]["quantization"]
    assert q["qlinear"] == "8da4w" and q["kept_fp32"][0].startswith("patch_embed.proj ")
    assert q["quantized_linears"] == 2 * 4 + 2 and not q["skipped_linears"]  # depth 2 x (qkv, proj, fc1, fc2) + merger


def test_text_only_source_and_no_vision(hf_vlm, hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("causal", "hv1x", True)
    text = export_quietly(src, tmp_path / "text", preset="xnnpack-fp32")
    vlm_src, _ = hf_vlm("A")
    no_vision = export_quietly(vlm_src, tmp_path / "no-vision", preset="xnnpack-fp32", vision=False)
    for manifest, bundle in ((text, tmp_path / "text"), (no_vision, tmp_path / "no-vision")):
        names = set(load_program(bundle).method_names)
        assert not names & {*contract.IMAGE_TEXT_METHODS} and not any(contract.is_image_method(n) for n in names)
        assert "vision" not in manifest and "image" not in manifest["verification"]
        assert set(manifest["program"]["methods"]) == {*contract.TOKEN_METHODS, contract.STATE_READ_METHOD,
                                                       contract.STATE_WRITE_METHOD}


@pytest.mark.parametrize("sizes,message", [
    ("30", "--image-sizes 30x30: both sides must be positive multiples of 8"),
    ("32x36", "--image-sizes 32x36: both sides must be positive multiples of 8"),
    ("abc", "--image-sizes 'abc': expected S or HxW"),
    ("32,0", "--image-sizes '0': expected S or HxW"),
    ("32,96x96", "--image-sizes 96x96: one image takes 144 tokens (plus its two markers), more than the context, "
                 "--max-seq-len 96"),
], ids=["not-multiple", "width-not-multiple", "not-a-size", "zero", "past-the-context"])
def test_bad_image_sizes_name_the_flag(hf_vlm, tmp_path, capsys, sizes, message):
    from qwen_mobile.export.cli import main

    src, _ = hf_vlm("B")
    out = tmp_path / "bundle"
    assert main(["export", str(src), "--out", str(out), "--image-sizes", sizes, "--no-progress", "--max-seq-len",
                 str(SMALL["max_seq_len"]), "--max-prefill-chunk", str(SMALL["max_prefill_chunk"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not out.exists()
    with pytest.raises(UsageError, match="--image-sizes"):
        export(str(src), out, image_sizes=sizes, **SMALL)


def test_vision_flags_are_xnnpack_and_coreml_only(hf_vlm, tmp_path, capsys):
    """coreml-pte bundles hold the text model only (the coreml recipe's vision package: tests/coreml/)."""
    from qwen_mobile.export.cli import main

    src, _ = hf_vlm("B")
    assert main(["export", str(src), "--out", str(tmp_path / "b"), "--recipe", "coreml-pte", "--no-vision"]) == 2
    assert "--no-vision applies to --recipe xnnpack and coreml only" in capsys.readouterr().err


def test_gate_image_prompt_is_a_chatml_user_turn_with_the_span():
    """verify.image_prompt with a tokenizer (nano's holds Qwen's special tokens): the image's span inside the user turn
    before the question, as Qwen's chat template writes it; without one, random text around exactly one span."""
    from tokenizers import Tokenizer

    from qwen_mobile.export.source import SHIPPED_MODELS
    from qwen_mobile.export.verify import IMAGE_QUESTION, image_prompt
    from qwen_mobile.models.config import Qwen35VisionConfig

    tokenizer = Tokenizer.from_file(str(SHIPPED_MODELS["nano"] / "tokenizer.json"))
    ids = {name: tokenizer.token_to_id(f"<|{name}|>") for name in ("vision_start", "image_pad", "vision_end")}
    vision = Qwen35VisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                image_token_id=ids["image_pad"], vision_start_token_id=ids["vision_start"],
                                vision_end_token_id=ids["vision_end"])
    prompt = image_prompt(vision, 3, tokenizer.get_vocab_size(), tokenizer)
    assert tokenizer.decode(prompt, skip_special_tokens=False) == (
        "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 3 + "<|vision_end|>" + IMAGE_QUESTION
        + "<|im_end|>\n<|im_start|>assistant\n")
    plain = image_prompt(vision, 3, tokenizer.get_vocab_size())
    start = plain.index(ids["vision_start"])
    assert plain[start:start + 5] == [ids["vision_start"]] + [ids["image_pad"]] * 3 + [ids["vision_end"]]
    assert plain.count(ids["image_pad"]) == 3 and plain.count(ids["vision_start"]) == 1 and len(plain) > 10


def random_tower_0_8b() -> Qwen35VisionModel:
    """A random tower of the 0.8B release's shape (qwen35-architecture.md: depth 12, 768 wide, 12 heads, MLP 3072,
    out 1024, patch 16): torch's default init, norms and biases perturbed, learned positions of std 0.5."""
    from qwen_mobile.models.config import Qwen35VisionConfig

    torch.manual_seed(0)
    config = Qwen35VisionConfig(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12, out_hidden_size=1024)
    tower = Qwen35VisionModel(config).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            elif name == "pos_embed.weight":
                p.normal_(0, 0.5, generator=gen)
    return tower


@pytest.mark.slow
@pytest.mark.parametrize("scheme,bound", [("fp32", 1e-5), ("8da8w", 0.05), ("8da4w", 0.3)])
def test_tower_0_8b_shape_encode_error_and_size(scheme, bound):
    """export/README.md, "Images": encode_image_224x224 of a random 0.8B-shape tower, quantized as the recipe does,
    lowered alone: .pte size, time, and relative error of its embeddings vs the eager fp32 tower (printed; -s).
    Measured: fp32 1.9e-6 (396 MB), 8da8w 1.8e-2 (104 MB), 8da4w 1.7e-1 (61 MB); bounds ~2-5x those."""
    import copy
    import time

    from executorch.runtime import Runtime

    from qwen_mobile.export.lowering import lower_to_executorch
    from qwen_mobile.export.quantize import quantize_model
    from qwen_mobile.export.recipes.xnnpack import VISION_KEEP_FP32
    from qwen_mobile.models.vision_export import export_encode_image_rgb
    from qwen_mobile.runtime.images import synthetic_image

    tower, processor = random_tower_0_8b(), ImageProcessorConfig()
    rgb = synthetic_image(224, 224).permute(1, 2, 0).contiguous()  # [H,W,3]
    patches, gh, gw = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)
    with torch.no_grad():
        ref = tower.encode_frame(patches, gh, gw)
    quantized = copy.deepcopy(tower)
    if scheme != "fp32":
        quantize_model(quantized, scheme, "none", 32, keep=VISION_KEEP_FP32)
    start = time.perf_counter()
    et, _ = lower_to_executorch({"encode": export_encode_image_rgb(quantized, 224, 224, processor)}, {})
    seconds = time.perf_counter() - start
    got = Runtime.get().load_program(et.buffer).load_method("encode").execute([rgb])[0]
    rel = ((got - ref).norm() / ref.norm()).item()
    print(f"\n{scheme}: {len(et.buffer) / 1e6:.1f} MB, export+lower {seconds:.0f} s, relative error {rel:.2e}")
    assert rel <= bound


def _export_tiny_vlm_bundle(argv: list[str]) -> None:
    """A tiny random VLM checkpoint (test_vision_parity.make_hf_vlm) and its bundle, for tests and tools elsewhere."""
    import argparse

    parser = argparse.ArgumentParser(description=_export_tiny_vlm_bundle.__doc__)
    parser.add_argument("out", type=Path, help="folder to create: OUT/checkpoint and OUT/bundle")
    parser.add_argument("--vision", choices=["A", "B"], default="A", help="tower A: patch 16; B: patch 4")
    parser.add_argument("--preset", default="xnnpack-fp32")
    parser.add_argument("--image-sizes", default="128,64x128,96x32")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--max-prefill-chunk", type=int, default=32)
    parser.add_argument("--text-weight-scale", type=float, default=TEXT_WEIGHT_SCALE,
                        help="scale of the text model's matrices (1: transformers' init, whose greedy text repeats "
                             "one token)")
    args = parser.parse_args(argv)
    model = make_hf_vlm(args.vision)
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            if p.dim() >= 2:
                p.mul_(args.text_weight_scale)
    model.save_pretrained(args.out / "checkpoint")
    export(str(args.out / "checkpoint"), args.out / "bundle", preset=args.preset, image_sizes=args.image_sizes,
           max_seq_len=args.max_seq_len, max_prefill_chunk=args.max_prefill_chunk, force=True)
    print(args.out / "bundle")


if __name__ == "__main__":
    _export_tiny_vlm_bundle(sys.argv[1:])
