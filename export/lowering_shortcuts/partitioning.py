"""Cutting XNNPACK partitions out of a method without regenerating the method's Python code for each one.

ExecuTorch turns each partition into a submodule with `create_submodule_from_nodes`, which ends by re-sorting the
whole method graph (`torch.fx.passes.tools_common.legalize_graph`) and assigning the sorted graph to the module.
That assignment regenerates the module's Python source, and every partition already cut out is a child module whose
source is regenerated with it. A method of P partitions and N nodes pays O(P x N) code generation: on the 24-layer
0.8B model (about 116 partitions and 3,900 nodes per token method) it was 14 % of the whole lowering under the
profiler, against well under 1 % at 4 layers.

Nothing runs that code until the partitions are cut: the loop reads and edits graphs only. Within
`lean_partitioning()`, the re-sort is torch's own function, run on a stand-in that holds the graph, so the order, which
decides the emitted program, is exactly the one it always was; the module's source is regenerated once, after its
last partition. The program is byte-identical to ExecuTorch's own path
(tests/export/lowering_shortcuts/test_byte_identity.py).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace


@contextlib.contextmanager
def lean_partitioning(enabled: bool = True):
    import executorch.exir.backend.backend_api as backend_api
    import executorch.exir.lowered_backend_module as lowered_backend_module

    from .patching import patched

    if not enabled:
        yield
        return
    original_legalize = lowered_backend_module.legalize_graph
    original_create = backend_api._create_partitions_in_graph_module
    cutting = []  # graph modules whose partitions are being cut, innermost last

    def legalize_graph(gm):
        if not cutting or gm is not cutting[-1]:
            return original_legalize(gm)
        holder = SimpleNamespace(graph=gm.graph)
        original_legalize(holder)  # the same sort; it assigns the sorted graph to the holder, not the module
        gm._graph = holder.graph  # GraphModule.graph's setter, minus its recompile()
        holder.graph.owning_module = gm
        return gm

    def create_partitions_in_graph_module(tagged_graph_module, *args, **kwargs):
        cutting.append(tagged_graph_module)
        try:
            return original_create(tagged_graph_module, *args, **kwargs)
        finally:
            cutting.pop()
            tagged_graph_module.recompile()

    with (patched(lowered_backend_module, "legalize_graph", legalize_graph),
          patched(backend_api, "_create_partitions_in_graph_module", create_partitions_in_graph_module)):
        yield
