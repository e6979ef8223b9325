"""XNNPACK's per-partition passes, minus the ones with nothing to act on: the same delegate blobs, in less time.

`XnnpackBackend.preprocess` runs 17 passes over every partition before serializing it. Most of them look for one
kind of op (batch norm, a convolution, a relu after a linear, an upsample, a softmax-and-bmm attention pattern),
rewrite what they find in place, and then retrace the whole partition through `ExportPass` so the metadata follows the
rewrite. They retrace whether or not they found anything: on our partitions, which hold none of those ops, 11 of the
17 passes were a retrace each that changed nothing, about two thirds of the preprocess time (measured on a 4-layer
0.8B-width model).

`lean_xnnpack_passes()` skips a pass only when the partition, as it is when that pass's turn comes, has none of the ops
the pass acts on (`_trigger_ops`), or, for the pattern passes, lacks at least one op of every pattern (a
subgraph match needs every op of the pattern). Anything else runs as before, in the same order. The emitted program
is byte-identical to ExecuTorch's own path (tests/export/lowering_shortcuts/test_byte_identity.py), and each
predicate is tested against a graph that holds its op (tests/export/lowering_shortcuts/test_xnnpack_passes.py); if a
future ExecuTorch changes what a pass does, those tests fail instead of the export changing quietly.
"""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache
def _trigger_ops() -> dict:
    """Pass class -> predicate(ops present in the partition) saying the pass has something to act on."""
    from executorch.backends.transforms.remove_getitem_op import RemoveGetItemPass
    from executorch.backends.xnnpack._passes import (
        Conv1dUnsqueezePass, ConvertToSDPAPass, ConvertToUpsampleBilinear2d, DecomposeBatchNorm, DecomposeConcatenate,
        FuseActivationPass, FuseBatchNormPass, PReLUReshapePass, PropagateCustomMetaPass, RemoveRedundantCopyPass,
    )
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa
    from executorch.exir.dialects._ops import ops as exir_ops

    edge = exir_ops.edge
    batch_norm = {edge.aten.native_batch_norm.default, edge.aten._native_batch_norm_legit_no_training.default}

    def any_of(*ops):
        wanted = frozenset(ops)
        return lambda present: not wanted.isdisjoint(present)

    def any_pattern(graphs):
        # SubgraphMatcher matches call_function nodes by equal target: a pattern with an op the partition lacks can't.
        needed = [frozenset(n.target for n in g.graph.nodes if n.op == "call_function") for g in graphs]
        return lambda present: any(ops <= present for ops in needed)

    return {
        ConvertToUpsampleBilinear2d: any_pattern(list(bilinear_2d.get_graphs_dict())),
        ConvertToSDPAPass: any_pattern(sdpa.get_graphs()),
        FuseBatchNormPass: any_of(*batch_norm),
        DecomposeBatchNorm: any_of(*batch_norm),
        FuseActivationPass: any_of(*FuseActivationPass.FUSEABLE_ACTIVATIONS),
        DecomposeConcatenate: any_of(edge.aten.cat.default),
        RemoveGetItemPass: any_of(edge.aten.max_pool2d_with_indices.default, edge.aten.max.dim),
        Conv1dUnsqueezePass: any_of(edge.aten.convolution.default),
        PReLUReshapePass: any_of(edge.aten._prelu_kernel.default),
        RemoveRedundantCopyPass: any_of(edge.aten._to_copy.default),
        # Copies node.meta["custom"] (user annotations) onto q/dq nodes; without any such annotation, nothing to copy.
        PropagateCustomMetaPass: lambda present: _CUSTOM_META in present,
    }


_CUSTOM_META = object()  # stands in the "present" set for "some node carries meta['custom']"


def ops_present(program) -> frozenset:
    """Targets of every call in the program's graph modules, plus _CUSTOM_META if a node carries meta['custom']."""
    present = set()
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                if node.op == "call_function":
                    present.add(node.target)
                if "custom" in node.meta:
                    present.add(_CUSTOM_META)
    return frozenset(present)


def has_work(pass_cls, program) -> bool:
    """Whether `pass_cls` can change `program`: True for every pass this module knows nothing about."""
    predicate = _trigger_ops().get(pass_cls)
    return predicate is None or predicate(ops_present(program))


# Passes skipped since the last reset, by name: for the tests and for the curious.
skipped: dict[str, int] = {}


@contextlib.contextmanager
def lean_xnnpack_passes(enabled: bool = True):
    """Within the block (and in processes forked inside it), XNNPACK's preprocess skips the passes without work."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.backends.xnnpack._passes.xnnpack_pass import XNNPACKPass
    from executorch.exir.pass_base import ExportPass
    from executorch.exir.program._program import _transform

    from .patching import patched

    if not enabled:
        yield
        return
    _trigger_ops()  # build the pattern sets before a worker forks, once

    def transform(self):
        # XNNPACKPassManager.transform's own loop (executorch 1.5.1), with the has_work check in front of each pass.
        program = self.exported_program
        for pass_cls in self.passes:
            if not has_work(pass_cls, program):
                skipped[pass_cls.__name__] = skipped.get(pass_cls.__name__, 0) + 1
                continue
            if issubclass(pass_cls, XNNPACKPass):
                instance = pass_cls(program)
            elif issubclass(pass_cls, ExportPass):
                instance = pass_cls()
            else:
                raise RuntimeError(f"XNNPACK preprocess: expected an ExportPass, got {pass_cls!r}")
            program = _transform(program, instance)
        return program

    with patched(XNNPACKPassManager, "transform", transform):
        yield
