"""`encode_image` (models/vision_export.py) through torch.export, XNNPACK lowering and the ExecuTorch runtime: the
.pte's image embeddings vs our eager tower, which test_vision_parity.py holds to transformers."""

import pytest
import torch

from test_vision_parity import hf_vlm, random_patches  # noqa: F401 (hf_vlm: a fixture shared with that file)
from qwen_mobile.models.vision import Qwen35VisionModel
from qwen_mobile.models.vision_export import EncodeImage, export_encode_image

# .pte vs eager fp32: XNNPACK's GEMMs and our eager matmuls accumulate in different orders. Bound relative to the
# output's scale, as the parity tests; measured in the log of the run (see the assertion message).
PTE_RELATIVE_ATOL = 1e-5


def run_pte(buffer: bytes, method: str, patches: torch.Tensor) -> torch.Tensor:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(buffer)
    return program.load_method(method).execute([patches])[0]


@pytest.mark.parametrize("vision,grid", [("A", (4, 6)), ("B", (6, 4)), ("B", (2, 2))], ids=["A-4x6", "B-6x4", "B-2x2"])
def test_encode_image_pte_matches_eager(hf_vlm, tmp_path, vision, grid):
    from qwen_mobile.export.lowering import lower_to_executorch

    folder, _ = hf_vlm(vision)
    visual = Qwen35VisionModel.from_pretrained(folder)
    program = export_encode_image(visual, *grid)
    et, summary = lower_to_executorch({"encode_image": program}, metadata={}, parallel=False)
    # The tower's LayerNorms stay inside XNNPACK (vision.Qwen35VisionLayerNorm); native_layer_norm split the graph.
    assert not [op for op in summary["encode_image"]["ops_outside_delegates"] if "layer_norm" in op], summary
    patches = random_patches([(1, *grid)], visual.config.patch_dim, seed=9)
    with torch.no_grad():
        eager = visual(patches, [(1, *grid)])
    got = run_pte(et.buffer, "encode_image", patches)
    err = (got - eager).abs().max().item()
    bound = PTE_RELATIVE_ATOL * max(1.0, eager.abs().max().item())
    assert got.shape == eager.shape and err <= bound, f"grid {grid}: max |pte - eager| = {err:.2e} > {bound:.2e}"


def test_grid_must_fold_into_merged_tokens(hf_vlm):
    folder, _ = hf_vlm("A")
    visual = Qwen35VisionModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="encode_image grid 3x4: both sides must be positive multiples of"):
        EncodeImage(visual, 3, 4)


@pytest.mark.parametrize("vision,size", [("A", (64, 32)), ("B", (32, 48))], ids=["A-64x32", "B-32x48"])
def test_rgb_entry_prepares_pixels_as_the_preprocessor(hf_vlm, vision, size):
    """EncodeImageRGB (the bundle's encode_image_<H>x<W>, uint8 HWC in) eagerly: its patches against
    vision_preprocess.normalize + patchify of the same pixels, its embeddings against the tower's encode_frame."""
    from qwen_mobile.models.vision_export import EncodeImageRGB
    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, normalize, patchify

    folder, _ = hf_vlm(vision)
    visual = Qwen35VisionModel.from_pretrained(folder)
    processor = ImageProcessorConfig.from_pretrained(folder, visual.config)
    rgb = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))  # [H,W,3]
    want, gh, gw = patchify(normalize(rgb.permute(2, 0, 1), processor), processor)
    entry = EncodeImageRGB(visual, *size, processor)
    got = entry.patches(rgb)
    # x * rescale_factor in float32 here, in float64 then rounded in the preprocessor: one ulp of values in [-1, 1].
    torch.testing.assert_close(got, want, atol=2.4e-7, rtol=0)
    with torch.no_grad():
        # The precomputed position tables are the tower's own; the GELU's sigmoid form (vision_export.gelu_tanh) is
        # F.gelu's tanh form to a few ulps (5e-7 absolute on inputs of std 3), so the embeddings agree to ~1e-6.
        got, ref = entry.encode(want), visual.encode_frame(want, gh, gw)
        torch.testing.assert_close(got, ref, atol=1e-6 * max(1.0, ref.abs().max().item()), rtol=0)


def test_rgb_size_must_be_whole_merged_tokens(hf_vlm):
    from qwen_mobile.models.vision_export import EncodeImageRGB
    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig

    folder, _ = hf_vlm("B")
    visual = Qwen35VisionModel.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"image size 32x36: both sides must be positive multiples of patch_size \* "
                                         "spatial_merge_size = 8"):
        EncodeImageRGB(visual, 32, 36, ImageProcessorConfig.from_pretrained(folder, visual.config))


def test_gelu_tanh_form_is_torchs():
    from qwen_mobile.models.vision_export import gelu_tanh

    x = torch.randn(196, 3072, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(gelu_tanh(x), torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-6, rtol=0)
