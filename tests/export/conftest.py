"""Fixtures shared by the lowering tests."""

import pytest
import torch

from qwen_mobile.export.quantize import quantize_model
from qwen_mobile.export.transforms import fuse_projections
from qwen_mobile.models import Qwen35ForCausalLM


@pytest.fixture(scope="module")
def tiny_8da4w_model():
    """The tiny preset, projections fused and quantized 8da4w with a 4w embedding, ready for `export_methods`."""
    torch.manual_seed(0)
    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=64).eval().requires_grad_(False)
    fuse_projections(model)
    quantize_model(model, "8da4w", "4w", 32)
    return model
