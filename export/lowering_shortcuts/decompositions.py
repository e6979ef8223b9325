"""Fewer whole-graph retraces in ExecuTorch's edge lowering, with the very same program at the end.

`to_edge_transform_and_lower` prepares each method for a partitioner that vets ops (XNNPACK's does) with three
`run_decompositions` calls, and each call retraces the whole graph through AOT autograd, per node, in Python:

    1. `run_decompositions({})`       functionalize, so the partitioner can be asked which ops to keep;
    2. `run_decompositions(table)`    decompose everything but those ops;
    3. `run_decompositions(default)`  after the kept ops were renamed into a do-not-decompose namespace.

On our graphs two of the three trace for nothing (measured: a 4-layer 0.8B-width model, step 3 changes no node):

* Step 1 exists for partitioners whose answer depends on the functional graph. XNNPACK's is a fixed list of ops
  from its configs plus a filter run later on the step-2 graph, so the functionalization can ride on step 2: a
  `run_decompositions(table)` of the traced program functionalizes and decomposes in one trace.
* Step 3 re-decomposes what step 2 kept but the filter refused. When no node of the step-2 graph is in the table
  (apart from `sym_size`, whose "decomposition" is itself), there is nothing to do, and ExecuTorch itself skips
  such a call on its other path ("safe to skip when none of those targets occur in the graph").

`lean_decompositions()` applies both within a `with` block, to the programs it is given only. The emitted program
is byte-identical to ExecuTorch's own path (tests/export/lowering_shortcuts/test_byte_identity.py); if a future
ExecuTorch calls these steps differently, that test fails instead of the export changing quietly.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

# Ops whose decomposition-table entry leaves the graph as it is: retracing for them alone changes nothing.
_IDENTITY_ENTRIES = frozenset({torch.ops.aten.sym_size.int})


def _uses_any(program, table) -> bool:
    """Whether a call in the program (or a control-flow submodule) targets an op of the table."""
    from executorch.exir.graph_module import contains_any_call_fn_target_op

    relevant = {op: fn for op, fn in table.items() if op not in _IDENTITY_ENTRIES}
    return contains_any_call_fn_target_op(program.graph_module, relevant)


@contextlib.contextmanager
def lean_decompositions(programs: dict, enabled: bool = True):
    """Within the block, `run_decompositions` skips the two retraces above for `programs` and what derives from them."""
    from torch.export import ExportedProgram

    from .patching import patched

    if not enabled:
        yield
        return
    traced = weakref.WeakSet(programs.values())  # as torch.export gave them: not yet functional
    functional = weakref.WeakSet()  # produced from those by a table-driven decomposition inside the block
    original = ExportedProgram.run_decompositions

    def run_decompositions(self, decomp_table=None, *args, **kwargs):
        if self in traced and decomp_table is not None and len(decomp_table) == 0:
            return self  # step 1: functionalized by step 2 instead
        if self in functional and decomp_table is not None and not _uses_any(self, decomp_table):
            return self  # step 3: nothing left to decompose
        out = original(self, decomp_table, *args, **kwargs)
        if self in traced or self in functional:
            functional.add(out)
        return out

    with patched(ExportedProgram, "run_decompositions", run_decompositions):
        yield
