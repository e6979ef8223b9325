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
