"""lean_xnnpack_passes skips an XNNPACK pass only when the partition has nothing for it: on graphs that hold each pass's
ops, the pass still runs and the program is byte-identical to ExecuTorch's own path. (On our model's graphs, where most
passes are skipped, byte-identity is tested with the other lowering shortcuts in test_byte_identity.py.)"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qwen_mobile.export.lowering_shortcuts import xnnpack_passes as lean


class ConvNet(nn.Module):
    """conv2d + batch norm + relu, an upsample, a max over channels, a prelu, a cat: most passes' ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.prelu = nn.PReLU(8)

    def forward(self, x):  # x [1, 3, 8, 8]
        y = torch.relu(self.norm(self.conv(x)))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)  # [1, 8, 16, 16]
        y = F.max_pool2d(y, 2)  # [1, 8, 8, 8]
        y = y - torch.max(y, dim=3, keepdim=True).values  # [1, 8, 8, 8] minus [1, 8, 8, 1]
        return torch.cat([self.prelu(y), y, y, y, y, y], dim=1)  # [1, 48, 8, 8]


class SequenceNet(nn.Module):
    """conv1d + hardtanh, an attention written out (softmax of bmm), and a dtype round trip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, q, k, v, mask):  # q, k, v [1, 2, 6, 4]; mask [6, 6] additive
        conv = F.hardtanh(self.conv(q[0, 0].t().unsqueeze(0)))  # [1, 4, 6]
        attention = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [1, 2, 6, 4]
        return attention.to(torch.float16).to(torch.float32), conv


CASES = {
    "conv_net": (ConvNet, lambda: (torch.randn(1, 3, 8, 8),)),
    "sequence_net": (SequenceNet, lambda: (*(torch.randn(1, 2, 6, 4) for _ in range(3)),
                                           torch.triu(torch.full((6, 6), -1e4), diagonal=1))),
}


def lower(module, example, lean_passes: bool) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, example, strict=False)
    with lean.lean_xnnpack_passes(lean_passes):
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer


@pytest.mark.parametrize("case", sorted(CASES))
def test_passes_with_work_still_run_and_the_program_is_unchanged(case, monkeypatch):
    module_cls, make_example = CASES[case]
    torch.manual_seed(0)
    module = module_cls().eval()
    with torch.no_grad():
        for buffer_name, buffer in module.named_buffers():  # a batch norm that is not the identity
            if buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif buffer_name.endswith("running_mean"):
                buffer.normal_()
    example = make_example()

    ran = []
    real_has_work = lean.has_work

    def recording(pass_cls, program):
        work = real_has_work(pass_cls, program)
        if work:
            ran.append(pass_cls.__name__)
        return work

    monkeypatch.setattr(lean, "has_work", recording)
    lean.skipped.clear()
    ours = lower(module, example, True)
    assert lean.skipped, "nothing was skipped: the lean path did not run"
    assert ours == lower(module, example, False)

    expected = {
        # Not PReLUReshapePass: it acts on _prelu_kernel, and XNNPACK partitions keep prelu whole (tested below).
        "conv_net": {"FuseBatchNormPass", "FuseActivationPass", "DecomposeConcatenate",
                     "ConvertToUpsampleBilinear2d", "RemoveGetItemPass"},
        # Not ConvertToSDPAPass: its patterns want the masked-row ops (any, where, ...) that torch 2.13's attention
        # decomposition does not emit, so it finds nothing here either (its predicate is tested below).
        "sequence_net": {"Conv1dUnsqueezePass", "FuseActivationPass"},
    }[case]
    assert expected <= set(ran), f"passes skipped although their ops were there: {expected - set(ran)}"


def test_the_attention_pass_runs_on_a_graph_holding_its_pattern_and_not_without_one_of_its_ops():
    from executorch.backends.xnnpack._passes import ConvertToSDPAPass
    from executorch.backends.xnnpack.partition.graphs import sdpa

    pattern = sdpa.get_graphs()[0]
    assert lean.has_work(ConvertToSDPAPass, SimpleNamespace(graph_module=pattern))
    without_softmax = torch.fx.GraphModule(pattern, torch.fx.Graph())
    without_softmax.graph.graph_copy(pattern.graph, {})
    for node in list(without_softmax.graph.nodes):
        if "softmax" in str(node.target):
            node.target = torch.ops.aten.relu.default
    assert not lean.has_work(ConvertToSDPAPass, SimpleNamespace(graph_module=without_softmax))


def graph_calling(op) -> SimpleNamespace:
    """A program-like object whose graph calls `op` once: what has_work reads."""
    graph = torch.fx.Graph()
    x, weight = graph.placeholder("x"), graph.placeholder("weight")
    graph.output(graph.call_function(op, (x, weight)))
    return SimpleNamespace(graph_module=torch.fx.GraphModule(nn.Module(), graph))


def test_the_prelu_pass_runs_on_the_kernel_it_reshapes():
    from executorch.backends.xnnpack._passes import PReLUReshapePass
    from executorch.exir.dialects._ops import ops as exir_ops

    assert lean.has_work(PReLUReshapePass, graph_calling(exir_ops.edge.aten._prelu_kernel.default))
    assert not lean.has_work(PReLUReshapePass, graph_calling(exir_ops.edge.aten.prelu.default))


def test_a_pass_it_knows_nothing_about_always_runs_and_the_patch_is_removed():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.pass_base import ExportPass

    class SomeFuturePass(ExportPass):
        pass

    program = torch.export.export(nn.Linear(2, 2), (torch.zeros(1, 2),))
    assert lean.has_work(SomeFuturePass, program)
    real = XNNPACKPassManager.transform
    with lean.lean_xnnpack_passes():
        assert XNNPACKPassManager.transform is not real
    assert XNNPACKPassManager.transform is real
