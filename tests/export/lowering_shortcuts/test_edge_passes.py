"""lean_edge_passes skips an ATen-to-edge pass only when the graph has nothing for it: on a graph that has each pass's
case, the pass still runs and the program is byte-identical to ExecuTorch's own path. (On our model's graphs, where
the passes are mostly skipped, byte-identity is tested with the other lowering shortcuts in
test_byte_identity.py.)"""

import pytest
import torch
from torch import nn

from qwen_mobile.export.lowering_shortcuts import edge_passes as lean


class EveryCase(nn.Module):
    def forward(self, x):  # x [n, n], n dynamic
        transposed = x.t()  # aten.t, for NormalizeTransposePass
        scaled = x * 3  # a Python number for mul.Tensor's Tensor argument: ScalarToTensorPass
        shifted = x + x.shape[0]  # a SymInt for add.Tensor's Tensor argument: SymToTensorPass
        return transposed + scaled + shifted


class NoCase(nn.Module):
    def forward(self, x, y):  # [n, n] each
        return torch.mm(x, y) + y


def lower(module, example, dynamic, lean_passes: bool) -> bytes:
    from executorch.exir import to_edge

    program = torch.export.export(module, example, dynamic_shapes=dynamic, strict=False)
    with lean.lean_edge_passes(lean_passes):
        edge = to_edge(program)
    return edge.to_executorch().buffer


def test_passes_with_work_still_run_and_the_program_is_unchanged(monkeypatch):
    ran = []
    real_has_work = lean.has_work

    def recording(pass_instance, graph_module):
        work = real_has_work(pass_instance, graph_module)
        if work:
            ran.append(type(pass_instance).__name__)
        return work

    monkeypatch.setattr(lean, "has_work", recording)
    n = torch.export.Dim("n", min=2, max=64)
    example = (torch.randn(5, 5),)
    ours = lower(EveryCase(), example, ({0: n, 1: n},), True)
    assert ours == lower(EveryCase(), example, ({0: n, 1: n},), False)
    assert {"ScalarToTensorPass", "SymToTensorPass"} <= set(ran), ran
    # torch 2.13's functionalization already turns aten.t into permute, so NormalizeTransposePass finds none here
    # (its check is tested on a hand-built graph below).

    ran.clear()
    lean.skipped.clear()
    nothing = lower(NoCase(), (torch.randn(4, 4), torch.randn(4, 4)), None, True)
    assert nothing == lower(NoCase(), (torch.randn(4, 4), torch.randn(4, 4)), None, False)
    assert set(lean.skipped) == {"NormalizeTransposePass", "ReplaceBrokenOpsWithFunctionalOpsPass",
                                 "ScalarToTensorPass", "SymToTensorPass"}


def graph_calling(op, *literal_args) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(op, (x, *literal_args)))
    return torch.fx.GraphModule(nn.Module(), graph)


@pytest.mark.parametrize("pass_name, with_case, without_case", [
    ("NormalizeTransposePass", (torch.ops.aten.t.default,), (torch.ops.aten.permute.default, [1, 0])),
    ("ReplaceBrokenOpsWithFunctionalOpsPass", (torch.ops.aten.view.default, [4]), (torch.ops.aten.view_copy.default, [4])),
    ("ScalarToTensorPass", (torch.ops.aten.mul.Tensor, 2.0), (torch.ops.aten.mul.Scalar, 2.0)),
])
def test_each_check_sees_its_case(pass_name, with_case, without_case):
    pass_cls = next(cls for cls in lean._predicates() if cls.__name__ == pass_name)
    assert lean.has_work(pass_cls(), graph_calling(*with_case))
    assert not lean.has_work(pass_cls(), graph_calling(*without_case))


def test_a_pass_it_knows_nothing_about_always_runs_and_the_patch_is_removed():
    import executorch.exir.program._program as program_module
    from executorch.exir.pass_base import ExportPass

    assert lean.has_work(ExportPass(), graph_calling(torch.ops.aten.relu.default))
    real = program_module._get_aten_to_edge_passes
    with lean.lean_edge_passes():
        assert program_module._get_aten_to_edge_passes is not real
    assert program_module._get_aten_to_edge_passes is real
