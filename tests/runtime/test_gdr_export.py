"""Rung 4: torch.export keeps exactly one qwen35.gated_delta_rule node (static T and Dim("seq"))."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

from gdr_testlib import FP32_ATOL, FP32_RTOL, assert_close, make_inputs, reference

B, Hk, Hv, K, V = 1, 2, 4, 16, 16


class GdnStep(torch.nn.Module):
    """A state buffer handed to the mutating op, as models/gated_delta.py does."""

    def __init__(self):
        super().__init__()
        self.register_buffer("gdn_state", torch.zeros(B, Hv, K, V))

    def forward(self, q, k, v, g, beta):
        return torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, self.gdn_state)


def _op_nodes(graph):
    """Call sites of the op, whether direct or wrapped in auto_functionalized(_v2)."""
    ops = (torch.ops.qwen35.gated_delta_rule.default, torch.ops.qwen35.gated_delta_rule.out)
    found = []
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        if n.target in ops:
            found.append(n)
        elif "auto_functionalized" in str(n.target) and n.args and n.args[0] in ops:
            found.append(n)
    return found


def _export(T, dynamic):
    q, k, v, g, beta, _ = make_inputs(B, T, Hk, Hv, K, V)
    shapes = None
    if dynamic:
        seq = Dim("seq", min=1, max=1024)
        shapes = ({1: seq}, {1: seq}, {1: seq}, {1: seq}, {1: seq})
    with torch.no_grad():
        return torch.export.export(GdnStep(), (q, k, v, g, beta), dynamic_shapes=shapes, strict=False)


@pytest.mark.parametrize("T,dynamic", [(1, False), (8, False), (8, True)], ids=["static-T1", "static-T8", "dyn-seq"])
def test_export_keeps_one_node(qrt, T, dynamic):
    ep = _export(T, dynamic)
    assert len(_op_nodes(ep.graph)) == 1, ep.graph
    # After decomposition to the core ATen opset the op is still one (functionalised) node.
    dec = ep.run_decompositions()
    assert len(_op_nodes(dec.graph)) == 1, dec.graph


def test_dynamic_export_runs_for_several_lengths(qrt):
    """The Dim("seq") program runs the real kernel for decode and prefill lengths and carries state."""
    ep = _export(8, dynamic=True)
    mod = ep.module()
    q, k, v, g, beta, _ = make_inputs(B, 71, Hk, Hv, K, V, seed=11)
    zero = torch.zeros(B, Hv, K, V)
    ref_out, _ = reference(q, k, v, g, beta, zero)
    with torch.no_grad():
        o1 = mod(q[:, :70], k[:, :70], v[:, :70], g[:, :70], beta[:, :70])
        o2 = mod(q[:, 70:], k[:, 70:], v[:, 70:], g[:, 70:], beta[:, 70:])
    assert_close(torch.cat([o1, o2], 1), ref_out, FP32_ATOL, FP32_RTOL, "exported module output")
