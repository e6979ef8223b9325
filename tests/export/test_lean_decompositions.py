"""What lean_decompositions skips, and what it leaves alone. That the emitted program is byte-identical to ExecuTorch's
own path, with fewer retraces, is tested with the other lowering shortcuts in test_parallel_preprocess.py."""

import pytest
import torch
from torch.export import ExportedProgram

from qwen_mobile.export.lean_decompositions import lean_decompositions
from qwen_mobile.export.lowering import export_methods
from qwen_mobile.export.quantize import quantize_model
from qwen_mobile.models import Qwen35ForCausalLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=64).eval().requires_grad_(False)
    model.fuse_projections()
    quantize_model(model, "8da4w", "4w", 32)
    return model


def test_only_the_given_programs_are_touched_and_the_patch_is_removed(model):
    programs = export_methods(model, 16)
    other = export_methods(model, 16)["decode_token"]
    real = ExportedProgram.run_decompositions
    with lean_decompositions(programs):
        assert programs["forward"].run_decompositions({}) is programs["forward"]  # step 1 deferred to step 2
        functional = programs["forward"].run_decompositions(
            {torch.ops.aten.silu.default: torch._decomp.decomposition_table[torch.ops.aten.silu.default]})
        assert functional is not programs["forward"]
        assert functional.run_decompositions({torch.ops.aten.gelu.default: lambda x: x}) is functional  # no gelu
        assert other.run_decompositions({}) is not other  # not one of the given programs: really retraced
    assert ExportedProgram.run_decompositions is real
