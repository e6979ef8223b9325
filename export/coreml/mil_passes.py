"""A corrected `common::canonicalize_inplace_pattern` for coremltools 9.0, registered over the stock one.

The pass moves each `coreml_update_state` right after the op producing its value (the canonical form for in-place
state updates). The stock version picks the insertion point from a list of ops taken before it starts moving
anything; with more than one state, the op after a producer can be an update it has already moved and deleted, and
the pass dies with `KeyError: %coreml_update_state_0 ...` (seen converting our 3-state layout, and again inside
`linear_quantize_weights`, which re-runs the default pipeline and cannot be given another). This version reads the
insertion point from the block's live op list, so the result is the same graph the stock pass means to produce.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.helper import block_context_manager
    from coremltools.converters.mil.mil.passes.pass_registry import register_pass
    from coremltools.converters.mil.mil.scope import ScopeInfo

    @register_pass(namespace="common", override=True, name="canonicalize_inplace_pattern")
    class CanonicalizeInplacePattern(AbstractGraphPass):
        def apply(self, prog) -> None:
            for function in prog.functions.values():
                self._apply_block(function)

        @block_context_manager
        def _apply_block(self, block) -> None:
            for op in list(block.operations):
                if op.enclosing_block is None:  # removed while we iterate
                    continue
                for inner in op.blocks:
                    self._apply_block(inner)
                if op.op_type in ("read_state", "coreml_update_state"):
                    continue
                updates = [c for out in op.outputs for c in out.child_ops if c.op_type == "coreml_update_state"]
                for update in updates:
                    following = block.operations.op_to_node[op].next
                    before = following.op if following is not None else None
                    if before is update:
                        continue  # already right after its producer
                    scopes = [ScopeInfo(source=source, data=data) for source, data in op.scopes.items()]
                    with mb.scope(*scopes):
                        moved = mb.coreml_update_state(state=update.state, value=update.value, before_op=before)
                    # Dead-code elimination does not remove state updates, so drop the old one here.
                    if block.try_replace_uses_of_var_after_op(anchor_op=update, old_var=update.outputs[0],
                                                              new_var=moved):
                        block.remove_ops([update])

    _registered = True
