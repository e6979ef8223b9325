"""The ATen-to-edge passes of ExecuTorch, minus the ones with nothing to act on: the same edge program, in less time.

`_generate_edge_program` turns each method into the edge dialect through a chain of `ExportPass`es. Each retraces the
whole graph through fake tensors, node by node, in Python, whether or not it changes a node. Four of them look for
something our graphs do not have (measured on a 4-layer 0.8B-width model, each about 3 % of the lowering):

    NormalizeTransposePass               aten.t calls            (functionalization leaves none in our graphs)
    ReplaceBrokenOpsWithFunctionalOps    view ops                (ReplaceViewOpsWithViewCopyOps ran just before)
    ScalarToTensorPass                   a Python number given to a Tensor argument
    SymToTensorPass                      a SymInt/SymFloat/SymBool given to a Tensor argument

`lean_edge_passes()` runs each of these only when the graph, as it is when the pass's turn comes, has what the pass
rewrites; the checks read the schema the same way the passes do (`executorch.exir.pass_base.map_args`). Every other
pass runs as before, in the same order. The program is byte-identical to ExecuTorch's own path
(tests/export/lowering_shortcuts/test_byte_identity.py), and each check is tested on a graph that has its case
(tests/export/lowering_shortcuts/test_edge_passes.py).
"""

from __future__ import annotations

import contextlib
import functools

import torch


def _calls(graph_module: torch.fx.GraphModule):
    """(op, [(schema argument, value), ...]) for every ATen/custom op call, valued the way map_args pairs them."""
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        pairs = []
        for i, argument in enumerate(node.target._schema.arguments):
            if argument.name in node.kwargs:
                pairs.append((argument, node.kwargs[argument.name]))
            elif not argument.kwarg_only and i < len(node.args):
                pairs.append((argument, node.args[i]))
        yield node.target, pairs


def _has_transpose(gm) -> bool:
    return any(op == torch.ops.aten.t.default for op, _ in _calls(gm))


def _has_view(gm) -> bool:
    return any(op.is_view for op, _ in _calls(gm))


def _has_number_for_tensor(gm) -> bool:
    return any(isinstance(value, (float, int, bool)) and isinstance(argument.type, torch.TensorType)
               for _, pairs in _calls(gm) for argument, value in pairs)


def _has_symbol_for_tensor(gm) -> bool:
    symbolic = (torch.SymInt, torch.SymFloat, torch.SymBool)
    return any(isinstance(value, torch.fx.Node) and type(value.meta.get("val")) in symbolic
               and isinstance(argument.type, torch.TensorType)
               for _, pairs in _calls(gm) for argument, value in pairs)


@functools.cache
def _predicates() -> dict:
    from executorch.exir.passes.normalize_transpose_pass import NormalizeTransposePass
    from executorch.exir.passes.replace_broken_ops_with_function_ops_pass import ReplaceBrokenOpsWithFunctionalOpsPass
    from executorch.exir.passes.scalar_to_tensor_pass import ScalarToTensorPass
    from executorch.exir.passes.sym_to_tensor_pass import SymToTensorPass

    return {NormalizeTransposePass: _has_transpose, ReplaceBrokenOpsWithFunctionalOpsPass: _has_view,
            ScalarToTensorPass: _has_number_for_tensor, SymToTensorPass: _has_symbol_for_tensor}


def has_work(pass_instance, graph_module: torch.fx.GraphModule) -> bool:
    """Whether the pass can change the graph: True for any pass this module knows nothing about, and for any graph
    with control-flow submodules (the checks read the top graph only)."""
    predicate = _predicates().get(type(pass_instance))
    if predicate is None:
        return True
    if any(isinstance(m, torch.fx.GraphModule) for m in graph_module.children()):
        return True
    return predicate(graph_module)


# Passes skipped since the last reset, by name: for the tests and for the curious.
skipped: dict[str, int] = {}


def _skipping_when_idle(wrapped_pass):
    from torch.fx.passes.infra.pass_base import PassResult

    instance = getattr(wrapped_pass, "__wrapped__", wrapped_pass)  # PassManager wraps each pass in a function

    def run(graph_module):
        if not has_work(instance, graph_module):
            skipped[type(instance).__name__] = skipped.get(type(instance).__name__, 0) + 1
            return PassResult(graph_module, False)
        return wrapped_pass(graph_module)

    return run


@contextlib.contextmanager
def lean_edge_passes(enabled: bool = True):
    """Within the block, the ATen-to-edge conversion skips the four passes above when they have nothing to act on."""
    import executorch.exir.program._program as program_module

    from .patching import patched

    if not enabled:
        yield
        return
    original = program_module._get_aten_to_edge_passes

    def aten_to_edge_passes(config):
        pre_op_replace, post_op_replace = original(config)
        return [_skipping_when_idle(p) for p in pre_op_replace], post_op_replace

    with patched(program_module, "_get_aten_to_edge_passes", aten_to_edge_passes):
        yield
