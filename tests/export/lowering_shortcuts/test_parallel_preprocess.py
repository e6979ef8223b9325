"""XNNPACK partitions preprocessed in a forked worker: the work is split evenly, the copies share the weights, a failed
worker fails the lowering, and the memory figures count shared pages once. (That the program is the very one
ExecuTorch's own sequential lowering gives is tested with the other shortcuts in test_byte_identity.py.)"""

import os

import pytest

from qwen_mobile.export.lowering_shortcuts import parallel_preprocess as pp
from qwen_mobile.export.lowering import export_methods, lower_to_executorch


def test_split_jobs_gives_every_job_once_and_balances_the_load():
    costs = {("forward", i): c for i, c in enumerate([40, 7, 7, 30, 12, 5, 5, 22])}
    parts = pp.split_jobs(costs, 2)
    assert sorted(j for part in parts for j in part) == sorted(costs)
    loads = [sum(costs[j] for j in part) for part in parts]
    assert abs(loads[0] - loads[1]) <= max(costs.values())  # the LPT bound
    assert sorted(loads) == [64, 64]  # this set splits evenly; LPT finds it


def lower(model, parallel, share_constants=True, lean=True):
    return lower_to_executorch(export_methods(model, 16), {"get_max_seq_len": 16}, parallel=parallel,
                               share_constants=share_constants, lean=lean)[0].buffer


def test_preprocess_copies_share_the_weights_and_still_copy_the_graph(tiny_8da4w_model):
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    ep = export_methods(tiny_8da4w_model, 16)["forward"]
    with pp.shared_constant_copies():
        copied = XnnpackBackend.copy_exported_program_for_preprocess(ep, [])
    assert copied.graph_module is not ep.graph_module
    assert [n.name for n in copied.graph.nodes] == [n.name for n in ep.graph.nodes]
    weights = [k for k, v in ep.state_dict.items() if v.numel() > 1]
    assert weights and all(copied.state_dict[k] is ep.state_dict[k] for k in weights)
    assert "copy_exported_program_for_preprocess" not in XnnpackBackend.__dict__  # restored on exit


def test_a_failing_worker_fails_the_lowering(tiny_8da4w_model, monkeypatch):
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    parent = os.getpid()
    real = XnnpackBackend.preprocess

    def preprocess(program, specs):
        if os.getpid() != parent:
            raise RuntimeError("injected worker failure")
        return real(program, specs)

    monkeypatch.setattr(XnnpackBackend, "preprocess", staticmethod(preprocess))
    with pytest.raises(RuntimeError, match="forked XNNPACK preprocess worker failed"):
        lower(tiny_8da4w_model, True)


@pytest.mark.skipif(pp.pss_bytes() is None, reason="needs Linux /proc/PID/smaps_rollup")
def test_the_pair_sampler_counts_pages_shared_after_fork_once():
    """The reference is what the two processes allocate: a buffer touched before fork is shared (counted once in
    the physical peak, twice in the RSS sum), and the child's own allocation is counted once."""
    import time

    mb = 1 << 20
    shared = b"\x01" * (256 * mb)  # touched by the parent before fork
    base = pp.pss_bytes()
    pid = os.fork()
    if pid == 0:
        own = b"\x02" * (128 * mb)  # the child's private pages
        time.sleep(2.0)
        os._exit(0 if own and shared else 1)
    with pp.PairPssSampler(pid, interval=0.05) as sampler:
        _, status, usage = os.wait4(pid, 0)
    assert status == 0
    assert sampler.peak == pytest.approx(base + 128 * mb, abs=48 * mb)  # the shared buffer once, the child's once
    assert usage.ru_maxrss * 1024 > (256 + 128) * mb  # ... where the child's RSS holds the shared buffer too
    del shared


def test_an_export_reports_only_its_own_workers():
    pp.last_worker_peak_rss_bytes, pp.last_pair_peak_pss_bytes = 7, 9
    pp.reset_memory_records()
    assert (pp.last_worker_peak_rss_bytes, pp.last_pair_peak_pss_bytes) == (0, 0)
