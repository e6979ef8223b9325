"""What lean_decompositions skips, and what it leaves alone. That the emitted program is byte-identical to ExecuTorch's
own path, with fewer retraces, is tested with the other lowering shortcuts in test_byte_identity.py."""

import torch
from torch.export import ExportedProgram

from qwen_mobile.export.lowering_shortcuts.decompositions import lean_decompositions
from qwen_mobile.export.lowering import export_methods


def test_only_the_given_programs_are_touched_and_the_patch_is_removed(tiny_8da4w_model):
    programs = export_methods(tiny_8da4w_model, 16)
    other = export_methods(tiny_8da4w_model, 16)["decode_token"]
    real = ExportedProgram.run_decompositions
    with lean_decompositions(programs):
        assert programs["forward"].run_decompositions({}) is programs["forward"]  # step 1 deferred to step 2
        functional = programs["forward"].run_decompositions(
            {torch.ops.aten.silu.default: torch._decomp.decomposition_table[torch.ops.aten.silu.default]})
        assert functional is not programs["forward"]
        assert functional.run_decompositions({torch.ops.aten.gelu.default: lambda x: x}) is functional  # no gelu
        assert other.run_decompositions({}) is not other  # not one of the given programs: really retraced
    assert ExportedProgram.run_decompositions is real
