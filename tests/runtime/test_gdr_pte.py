"""Rung 5: a .pte lowered with XNNPACK runs OUR native kernel, matches the reference, keeps its state."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.export import Dim

from gdr_testlib import PTE_ATOL, assert_close, make_inputs, reference

B, Hk, Hv, K, V = 1, 2, 4, 32, 32
LINEAR_ATOL = 1e-4  # fp32 XNNPACK linear on top of the op's output, vs the same linear in fp64


class GdnBlock(torch.nn.Module):
    """Mutable state buffer + our op + a linear that XNNPACK takes (the op runs between delegates)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(V, V)
        self.register_buffer("gdn_state", torch.zeros(B, Hv, K, V))

    def forward(self, q, k, v, g, beta):
        o = torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, self.gdn_state)
        return o, self.proj(o)


def _lower(T, dynamic):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    model = GdnBlock().eval()
    args = make_inputs(B, T, Hk, Hv, K, V)[:5]
    shapes = None
    if dynamic:
        seq = Dim("seq", min=1, max=128)
        shapes = tuple({1: seq} for _ in range(5))
    with torch.no_grad():
        ep = torch.export.export(model, args, dynamic_shapes=shapes, strict=False)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    # The state must start at zero: serialise the buffer's initial value (see executorch-notes.md).
    et = edge.to_executorch(ExecutorchBackendConfig(passes=[InitializedMutableBufferPass(["gdn_state"])]))
    targets = [str(n.target) for n in et.exported_program().graph.nodes if n.op == "call_function"]
    assert targets.count("qwen35.gated_delta_rule.out") == 1, targets
    return model, et.buffer


@pytest.fixture(scope="module")
def decode_pte(qrt):
    return _lower(1, dynamic=False)


@pytest.fixture(scope="module")
def seq_pte(qrt):
    return _lower(8, dynamic=True)


def _load(buf, etdump=False):
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    return _load_for_executorch_from_buffer(buf, enable_etdump=etdump)


def _check_against_reference(model, outs, q, k, v, g, beta):
    ref_o, _ = reference(q, k, v, g, beta, torch.zeros(B, Hv, K, V))
    o = torch.cat([x[0] for x in outs], dim=1)
    y = torch.cat([x[1] for x in outs], dim=1)
    assert_close(o, ref_o, PTE_ATOL, 0.0, "pte op output")
    ref_y = torch.nn.functional.linear(ref_o, model.proj.weight.double(), model.proj.bias.double())
    assert_close(y, ref_y, LINEAR_ATOL, 0.0, "pte linear output")


def test_decode_pte_state_persists_across_forward_calls(decode_pte):
    """Two forward() calls of a T=1 program == one 2-step reference run from a zero state."""
    model, buf = decode_pte
    mod = _load(buf)
    q, k, v, g, beta, _ = make_inputs(B, 2, Hk, Hv, K, V, seed=21)
    outs = [mod.forward([q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], g[:, t : t + 1], beta[:, t : t + 1]])
            for t in range(2)]
    _check_against_reference(model, outs, q, k, v, g, beta)


def test_dynamic_seq_pte_prefill_then_decode(seq_pte):
    """Dim("seq") program: a 70-token prefill (chunked path) then a decode step (fused path)."""
    model, buf = seq_pte
    mod = _load(buf)
    q, k, v, g, beta, _ = make_inputs(B, 71, Hk, Hv, K, V, seed=22)
    outs = [mod.forward([t[:, :70] for t in (q, k, v, g, beta)]), mod.forward([t[:, 70:] for t in (q, k, v, g, beta)])]
    _check_against_reference(model, outs, q, k, v, g, beta)


def test_etdump_shows_native_kernel(decode_pte, tmp_path):
    """ETDump contains the profiling event our C++ kernel emits under its own name."""
    from executorch.devtools import Inspector

    _, buf = decode_pte
    mod = _load(buf, etdump=True)
    mod.forward(list(make_inputs(B, 1, Hk, Hv, K, V)[:5]))
    path = tmp_path / "gdr.etdp"
    mod.write_etdump_result_to_file(str(path))
    names = [ev.name for blk in Inspector(etdump_path=str(path)).event_blocks for ev in blk.events]
    assert "qwen35::gated_delta_rule.out" in names, names


def test_pte_fails_without_our_library(decode_pte, tmp_path):
    """In a fresh process that never loads libqwen35_ops, the same .pte cannot run: Missing operator."""
    _, buf = decode_pte
    pte = tmp_path / "gdr.pte"
    pte.write_bytes(buf)
    script = textwrap.dedent(f"""
        import torch
        from executorch.extension.pybindings.portable_lib import _load_for_executorch
        m = _load_for_executorch({str(pte)!r})
        m.forward([torch.zeros({B}, 1, {Hk}, {K}), torch.zeros({B}, 1, {Hk}, {K}), torch.zeros({B}, 1, {Hv}, {V}),
                   torch.zeros({B}, 1, {Hv}), torch.zeros({B}, 1, {Hv})])
        print("RAN")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "RAN" not in proc.stdout, text[-2000:]
    assert "Missing operator" in text and "qwen35::gated_delta_rule.out" in text, text[-2000:]
