"""`--recipe coreml` from a checkpoint with a vision tower: `vision.mlpackage` (one function per image size) before the
text package, whose functions that take embeddings carry CONTRACT.md's five image steps. Every number here comes from
the saved packages run by the numpy MIL evaluator, compared with eager fp32 (`Qwen35VisionLanguage`, our tower), never
with the export's own gate. Tiny random VLM (tower B: 4-pixel patches) exported once per precision for the module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "models"), str(TESTS / "export"), str(TESTS)]
from test_vision_bundle import vlm_checkpoint  # noqa: E402  (tiny VLM B, text weights scaled for varied greedy text)

from qwen_mobile.runtime import bundle as bundles, contract  # noqa: E402

SMALL = dict(max_seq_len=96, prefill_chunk=16, progress=False)
SIZES = "32,32x48"
GENERATED = 16
# fp32 program vs eager fp32 with fp16 attention caches (the state dtype Core ML imposes), relative to
# max(1, max |logit|): the recipe's fp32 gate bound (plan.FP32_REL_TOL); measured 6.9e-6 (2.2e-5 of max |logit| 3.2).
FP32_LOGITS_REL = 1e-4
# fp16 program (fp16 tower and text) vs eager fp32 on this 37-token question and 16 greedy steps: measured max
# |dlogit| 6.3e-2 of max |logit| 3.2 (2.0e-2 relative), as the text-only path's own fp16 error on a same-length
# prompt (5.7e-2); greedy tokens identical.
FP16_LOGITS_REL = 5e-2
# The fp32 vision function vs the eager tower on the preprocessor's patches, relative to max(1, max |ref|): measured
# 1.5e-5 (tower B's x50 query/key weights amplify the fused layer_norm's rounding; 0.8B shape: 4e-6 relative norm).
FP32_ENCODE_REL = 5e-5


def _export(src, out, **options) -> dict:
    from qwen_mobile.export import export

    with pytest.warns(UserWarning, match="no tokenizer.json"):
        return export(str(src), out, recipe="coreml", **{**SMALL, "image_sizes": SIZES, **options})


@pytest.fixture(scope="module")
def vlm_src(tmp_path_factory):
    return vlm_checkpoint(tmp_path_factory, "B")


@pytest.fixture(scope="module")
def fp32_bundle(vlm_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml-vlm") / "fp32"
    return out, _export(vlm_src, out, qlinear="fp32")


@pytest.fixture(scope="module")
def fp16_bundle(vlm_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml-vlm") / "fp16"
    return out, _export(vlm_src, out, qlinear="fp16")


def evaluator_runner(out: Path, manifest: dict):
    """The bundle's packages in the numpy evaluator, chained as the manifest says (CoreMLRunner, as an app would)."""
    from qwen_mobile.export.coreml.evaluator import MILModel
    from qwen_mobile.export.coreml.runner import CoreMLRunner, evaluator_call

    parts = []
    for package in manifest["program"]["packages"]:
        io = {b["name"]: tuple(b["shape"]) for b in manifest["state"]["buffers"]
              if b["storage"] == "host_io" and b["package"] == package["file"]}
        parts.append((evaluator_call(MILModel(out / package["file"])), io))
    vision = evaluator_call(MILModel(out / manifest["vision"]["package"]["file"]))
    return CoreMLRunner(prefill_chunk=manifest["program"]["methods"]["forward"]["max_tokens"], parts=parts,
                        vision=vision)


def card(h: int = 32, w: int = 48) -> torch.Tensor:
    """A 32x48 card (gradients and a checkerboard; not the gate's synthetic test card)."""
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    return torch.stack([rows * 8, cols * 5, ((rows // 4 + cols // 4) % 2) * 255], dim=-1).to(torch.uint8)  # [H,W,3]


def image_question(out: Path, manifest: dict, rgb: torch.Tensor):
    """CONTRACT.md, "Images", steps 1-5 through the Core ML functions: greedy tokens and logits per step."""
    from qwen_mobile.runtime.images import mrope_positions, splice_image_embeddings

    vision = manifest["vision"]
    image = next(i for i in vision["images"] if (i["height"], i["width"]) == tuple(rgb.shape[:2]))
    span = [vision["vision_start_token_id"]] + [vision["image_token_id"]] * image["tokens"] + [
        vision["vision_end_token_id"]]
    prompt = [11, 42, 7, 99, 3] + span + [5, 17, 23, 64, 8, 120]  # 37 tokens: two 16-token chunks and 5 one by one
    runner = evaluator_runner(out, manifest)
    embeds = splice_image_embeddings(runner.embed(prompt), prompt, runner.encode_image(image["method"], rgb),
                                     vision["image_token_id"])  # [T,hidden]
    rope_pos, p = mrope_positions(prompt, [tuple(image["grid_thw"])], vision["image_token_id"],
                                  vision["spatial_merge_size"])
    logits = [runner.prefill_embeddings(embeds, 0, rope_pos)]
    tokens = []
    for k in range(GENERATED):
        tokens.append(int(logits[-1].argmax()))
        if k + 1 < GENERATED:
            logits.append(runner.decode_rope(tokens[-1], len(prompt) + k, p + k))
    assert p < len(prompt)  # the rotary position runs behind the slot: decode without rope_pos would be wrong
    return prompt, image, tokens, torch.stack(logits)


def eager_answer(src: Path, prompt, image, rgb, *, fp16_caches: bool):
    from qwen_mobile.export.coreml.graph import fp16_kv
    from qwen_mobile.models import Qwen35ForCausalLM
    from qwen_mobile.models.vision import Qwen35VisionModel
    from qwen_mobile.models.vision_language import Qwen35VisionLanguage
    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, normalize, patchify

    text = Qwen35ForCausalLM.from_pretrained(src, max_seq_len=SMALL["max_seq_len"], gdn_impl="reference")
    visual = Qwen35VisionModel.from_pretrained(src)
    eager = Qwen35VisionLanguage(fp16_kv(text) if fp16_caches else text, visual)
    processor = ImageProcessorConfig.from_pretrained(src, visual.config)
    patches, _, _ = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)
    grid = [tuple(image["grid_thw"])]
    tokens = eager.generate(prompt, patches, grid, max_new_tokens=GENERATED)
    logits = [eager.prefill(prompt, patches, grid)[0, -1]]
    for token in tokens[:-1]:
        logits.append(eager.decode(token)[0, -1])
    return tokens, torch.stack(logits)


def test_fp32_image_question_equals_eager(fp32_bundle, vlm_src):
    out, manifest = fp32_bundle
    rgb = card()
    prompt, image, got_tokens, got = image_question(out, manifest, rgb)
    want_tokens, want = eager_answer(vlm_src, prompt, image, rgb, fp16_caches=True)
    assert len(set(want_tokens)) >= 3, f"a degenerate greedy run proves little: {want_tokens}"
    assert got_tokens == want_tokens
    err, bound = (got - want).abs().max().item(), FP32_LOGITS_REL * max(1.0, want.abs().max().item())
    assert err <= bound, f"max |Core ML - eager| logit = {err:.2e} > {bound:.2e}"


@pytest.mark.slow  # its own export: about a minute on a loaded 2-core host
def test_fp16_image_question_within_the_fp16_bound(fp16_bundle, vlm_src):
    out, manifest = fp16_bundle
    rgb = card()
    prompt, image, got_tokens, got = image_question(out, manifest, rgb)
    want_tokens, want = eager_answer(vlm_src, prompt, image, rgb, fp16_caches=False)
    assert got_tokens == want_tokens
    err, bound = (got - want).abs().max().item(), FP16_LOGITS_REL * max(1.0, want.abs().max().item())
    assert err <= bound, f"max |Core ML fp16 - eager fp32| logit = {err:.2e} > {bound:.2e}"
    assert manifest["vision"]["package"]["compute_precision"] == "fp16"
    assert manifest["verification"]["image"]["passed"]


@pytest.mark.parametrize("size", [(32, 32), (32, 48)], ids=["32x32", "32x48"])
def test_vision_function_matches_the_eager_tower(fp32_bundle, vlm_src, size):
    from qwen_mobile.export.coreml.evaluator import MILModel
    from qwen_mobile.models.vision import Qwen35VisionModel
    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, normalize, patchify

    out, manifest = fp32_bundle
    visual = Qwen35VisionModel.from_pretrained(vlm_src)
    processor = ImageProcessorConfig.from_pretrained(vlm_src, visual.config)
    rgb = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))  # [H,W,3]
    patches, gh, gw = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)
    with torch.no_grad():
        ref = visual.encode_frame(patches, gh, gw)
    mil = MILModel(out / contract.COREML_VISION_PACKAGE)
    got = mil.run(contract.image_method(*size), {"rgb": rgb.numpy().astype(np.float32)})["image_embeds"]
    err = float(np.abs(got - ref.numpy()).max())
    bound = FP32_ENCODE_REL * max(1.0, ref.abs().max().item())
    assert got.shape == tuple(ref.shape) and err <= bound, f"{size}: max |Core ML - eager| = {err:.2e} > {bound:.2e}"


def test_manifest_lists_the_vision_package(fp32_bundle):
    out, manifest = fp32_bundle
    methods, vision = manifest["program"]["methods"], manifest["vision"]
    images = ["encode_image_32x32", "encode_image_32x48"]
    assert set(methods) == {*contract.TOKEN_METHODS, *contract.IMAGE_TEXT_METHODS, *images}
    assert vision["package"]["file"] == contract.COREML_VISION_PACKAGE and vision["package"]["functions"] == images
    assert [p["file"] for p in manifest["program"]["packages"]] == [contract.COREML_PACKAGE]  # the text chain only
    for name in images:
        assert methods[name]["package"] == contract.COREML_VISION_PACKAGE and methods[name]["function"] == name
    assert methods["encode_image_32x48"]["inputs"] == [{"name": "rgb", "shape": [32, 48, 3], "dtype": "float32"}]
    assert methods["encode_image_32x48"]["outputs"][0]["shape"] == [24, 64]  # 8x12 patches / 4; hidden 64
    assert {m: methods[m]["function"] for m in contract.IMAGE_TEXT_METHODS} == {
        "embed_tokens": "embed", "prefill_embeddings": "prefill_embeddings", "decode_token_rope": "decode_rope"}
    assert methods["prefill_embeddings"]["remainder_function"] == "decode_embeddings"
    assert vision["pixels"]["dtype"] == "uint8" and vision["pixels"]["program_dtype"] == "float32"
    # Every file of both packages is hashed, so a reader can verify them; the schema and builder accept the manifest.
    assert any(f.startswith("vision.mlpackage/") and f.endswith("weight.bin") for f in manifest["files"])
    assert bundles.load_manifest(out) == manifest
    on_disk = json.loads((out / contract.MANIFEST).read_text())
    sections = {k: v for k, v in on_disk.items() if k not in ("schema_version", "format", "files")}
    contract.build_manifest(**sections)
    v = manifest["verification"]["image"]
    assert v["passed"] and v["greedy_identical"] and v["method"] == "encode_image_32x32" and v["image_tokens"] == 16


def test_text_only_source_and_no_vision(fp32_bundle, vlm_src, hf_checkpoint, tmp_path, capsys):
    """A checkpoint without a tower and --no-vision give the text-only package (two functions, no vision section);
    the image functions add no copy of the embedding table to the text package."""
    from qwen_mobile.export import export
    from qwen_mobile.export.cli import main
    from qwen_mobile.export.coreml.evaluator import MILModel

    src, _ = hf_checkpoint("causal", "hv2x")
    with pytest.warns(UserWarning, match="no vision tower: --image-sizes is ignored"):
        text = export(str(src), tmp_path / "text", recipe="coreml", qlinear="fp32", **{**SMALL, "image_sizes": "32"})
    assert main(["export", str(vlm_src), "--recipe", "coreml", "--qlinear", "fp32", "--no-vision", "--max-seq-len",
                 "96", "--max-prefill-chunk", "16", "--no-progress", "--out", str(tmp_path / "no-vision")]) == 0
    capsys.readouterr()
    no_vision = bundles.load_manifest(tmp_path / "no-vision")
    for manifest, out in ((text, tmp_path / "text"), (no_vision, tmp_path / "no-vision")):
        assert "vision" not in manifest and "image" not in manifest["verification"]
        assert set(manifest["program"]["methods"]) == set(contract.TOKEN_METHODS)
        assert not (out / contract.COREML_VISION_PACKAGE).exists()
        assert sorted(MILModel(out / contract.COREML_PACKAGE).functions) == ["decode", "prefill"]
    from qwen_mobile.export.coreml.mac_verify import main as mac_verify

    assert mac_verify([str(tmp_path / "text"), "--backend", "evaluator", "--image"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --image: ") and "has no vision package (exported from a checkpoint without a " \
        "vision tower, or with --no-vision)" in err, err
    # Same checkpoint, same precision, with and without the image functions: only the rotary tables (cos and sin,
    # [96, 16] fp32 each, 12 KB; the embeddings functions gather them by a [3,T] index) are stored again, never the
    # 40 KB embedding table that embed shares with prefill.
    added = fp32_bundle[1]["export"]["conversion"]["weight_bytes"] - no_vision["export"]["conversion"]["weight_bytes"]
    assert 0 <= added <= 2 * 96 * 16 * 4 + 1024, added


def test_image_on_a_text_only_runner_is_a_clear_error():
    """The Core ML runner asked for an image without a vision package says so, naming the cause."""
    from qwen_mobile.export.coreml.runner import CoreMLRunner

    runner = CoreMLRunner(lambda fn, inputs: {}, prefill_chunk=16)
    with pytest.raises(RuntimeError, match="no vision package .* without a vision tower, or with --no-vision"):
        runner.encode_image("encode_image_32x32", torch.zeros(32, 32, 3, dtype=torch.uint8))


def test_mac_verify_runs_the_image_gate(fp32_bundle, vlm_src):
    """scripts/verify_coreml_on_mac.py --image, with the numpy evaluator standing in for MLModel.predict: the image
    prompt through both packages against eager fp32, under the fp32 rule."""
    from qwen_mobile.export.coreml.mac_verify import verify

    out, _ = fp32_bundle
    report = verify(out, backend="evaluator", steps=4, image=True, source=str(vlm_src))
    image = report["image"]
    assert report["passed"] and image["passed"] and image["greedy_identical"], report
    assert image["method"] == "encode_image_32x32" and image["steps"] == 5


@pytest.mark.parametrize("recipe", ["coreml-pte"])
def test_image_flags_are_refused_where_there_is_no_vision_package(vlm_src, tmp_path, capsys, recipe):
    from qwen_mobile.export.cli import main

    assert main(["export", str(vlm_src), "--out", str(tmp_path / "b"), "--recipe", recipe, "--image-sizes", "32"]) == 2
    assert "--image-sizes applies to --recipe xnnpack and coreml only" in capsys.readouterr().err
    assert main(["export", str(vlm_src), "--out", str(tmp_path / "b"), "--recipe", "coreml", "--image-sizes", "30",
                 "--max-seq-len", "96", "--max-prefill-chunk", "16"]) == 2
    assert "--image-sizes 30x30: both sides must be positive multiples of 8" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("qlinear,bound", [("fp16", 5e-3), ("8w", 3e-2), ("4w", 0.4)])
def test_tower_0_8b_shape_encode_error_and_size(qlinear, bound, tmp_path):
    """export/coreml/README.md, "Images": the vision package of a random 0.8B-shape tower at 224x224, converted and
    quantized as the recipe does (patch_embed.proj kept fp16): size, time, and relative error of its embeddings vs the
    eager fp32 tower (printed; -s). Measured 1.3e-3 (198.4 MB), 1.1e-2 (100.7 MB), 1.7e-1 (57.8 MB); bounds ~2-4x."""
    import time

    from qwen_mobile.export.coreml.convert import build_vision_package
    from qwen_mobile.export.coreml.evaluator import MILModel
    from qwen_mobile.export.recipes.coreml import VISION_KEEP_UNQUANTIZED
    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, normalize, patchify
    from qwen_mobile.runtime.images import synthetic_image
    from test_vision_bundle import random_tower_0_8b

    tower, processor = random_tower_0_8b(), ImageProcessorConfig()
    rgb = synthetic_image(224, 224).permute(1, 2, 0).contiguous()  # [H,W,3]
    patches, gh, gw = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)
    with torch.no_grad():
        ref = tower.encode_frame(patches, gh, gw).numpy()
    start = time.perf_counter()
    report = build_vision_package(tower, processor, [(224, 224)], tmp_path / "vision.mlpackage", qlinear=qlinear,
                                  keep_fp32_weights=list(VISION_KEEP_UNQUANTIZED))
    seconds = time.perf_counter() - start
    got = MILModel(tmp_path / "vision.mlpackage").run("encode_image_224x224", {"rgb": rgb.numpy().astype(np.float32)})
    rel = float(np.linalg.norm(got["image_embeds"] - ref) / np.linalg.norm(ref))
    print(f"\n{qlinear}: {report.package_bytes / 1e6:.1f} MB, convert+quantize+save {seconds:.0f} s, relative error "
          f"{rel:.2e}")
    assert rel <= bound


@pytest.mark.slow
def test_split_model_with_images(vlm_src, tmp_path):
    """A size limit below the text model splits it over chained packages (the 0.8B fp16 case, forced on tiny): every
    package gets the embeddings functions, the first also embed and decode_rope, and the image question through the
    chain equals eager fp32 as the one-package bundle does."""
    from qwen_mobile.export.coreml.evaluator import MILModel
    from qwen_mobile.models import Qwen35ForCausalLM

    model = Qwen35ForCausalLM.from_pretrained(vlm_src, max_seq_len=SMALL["max_seq_len"])
    layer_bytes = max(sum(p.numel() for p in layer.parameters()) * 4 for layer in model.model.layers)
    limit = model.model.embed_tokens.weight.numel() * 4 + int(1.5 * layer_bytes)  # about one layer per package
    out = tmp_path / "split"
    manifest = _export(vlm_src, out, qlinear="fp32", max_package_bytes=limit)
    packages = manifest["program"]["packages"]
    assert len(packages) >= 3, packages
    assert sorted(MILModel(out / packages[0]["file"]).functions) == [
        "decode", "decode_embeddings", "decode_rope", "embed", "prefill", "prefill_embeddings"]
    assert sorted(MILModel(out / packages[-1]["file"]).functions) == [
        "decode", "decode_embeddings", "prefill", "prefill_embeddings"]
    assert manifest["verification"]["image"]["passed"]
    rgb = card()
    prompt, image, got_tokens, got = image_question(out, manifest, rgb)
    want_tokens, want = eager_answer(vlm_src, prompt, image, rgb, fp16_caches=True)
    assert got_tokens == want_tokens
    err, bound = (got - want).abs().max().item(), FP32_LOGITS_REL * max(1.0, want.abs().max().item())
    assert err <= bound, f"max |Core ML chain - eager| logit = {err:.2e} > {bound:.2e}"
