"""lean_partitioning regenerates a method's Python code once per method instead of once per partition, and leaves the
program as it was. (On our model's graphs, byte-identity is tested with the other lowering shortcuts in
test_byte_identity.py.)"""

import torch
from torch import nn

from qwen_mobile.export.lowering_shortcuts.partitioning import lean_partitioning


class Chain(nn.Module):
    """Linears separated by cumsum, which XNNPACK does not take: one partition per linear."""

    def __init__(self, links: int = 4):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(8, 8) for _ in range(links))

    def forward(self, x):  # x [2, 8]
        for linear in self.linears:
            x = torch.cumsum(linear(x), dim=1)  # [2, 8]
        return x


def lower(lean: bool, monkeypatch):
    """The program's bytes and how many times the method's own graph module was recompiled while lowering."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(0)
    module = Chain().eval()
    program = torch.export.export(module, (torch.randn(2, 8),), strict=False)
    recompiles = []
    real = torch.fx.GraphModule.recompile

    def counting(self):
        if sum(1 for n in self.graph.nodes if n.op == "call_module" or "cumsum" in str(n.target)) >= 4:
            recompiles.append(1)  # the method itself: it calls every partition and keeps every cumsum
        return real(self)

    monkeypatch.setattr(torch.fx.GraphModule, "recompile", counting)
    with lean_partitioning(lean):
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    monkeypatch.setattr(torch.fx.GraphModule, "recompile", real)
    delegates = sum(1 for n in edge.exported_program().graph.nodes if "call_delegate" in str(n.target))
    assert delegates == 4, "the chain was meant to give one partition per linear"
    return edge.to_executorch().buffer, len(recompiles)


def test_one_recompile_per_method_instead_of_one_per_partition_and_the_same_program(monkeypatch):
    ours, ours_recompiles = lower(True, monkeypatch)
    upstream, upstream_recompiles = lower(False, monkeypatch)
    assert ours == upstream
    assert upstream_recompiles - ours_recompiles >= 3, (ours_recompiles, upstream_recompiles)


def test_sorts_outside_partition_cutting_still_recompile_and_the_patch_is_removed(monkeypatch):
    import executorch.exir.backend.backend_api as backend_api
    import executorch.exir.lowered_backend_module as lowered_backend_module

    real = lowered_backend_module.legalize_graph, backend_api._create_partitions_in_graph_module
    graph_module = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(), nn.Tanh()))
    recompiled = []
    real_recompile = torch.fx.GraphModule.recompile
    monkeypatch.setattr(torch.fx.GraphModule, "recompile", lambda self: recompiled.append(self) or real_recompile(self))
    with lean_partitioning():
        lowered_backend_module.legalize_graph(graph_module)
    assert recompiled == [graph_module]
    assert (lowered_backend_module.legalize_graph, backend_api._create_partitions_in_graph_module) == real
