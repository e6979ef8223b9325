"""XNNPACK partitions preprocessed in a forked worker give the very program a sequential lowering gives."""

import os

import pytest
import torch

from qwen_mobile.export import parallel_preprocess as pp
from qwen_mobile.export.lowering import export_methods, lower_to_executorch
from qwen_mobile.export.quantize import quantize_model
from qwen_mobile.models import Qwen35ForCausalLM


def test_split_jobs_gives_every_job_once_and_balances_the_load():
    costs = {("forward", i): c for i, c in enumerate([40, 7, 7, 30, 12, 5, 5, 22])}
    parts = pp.split_jobs(costs, 2)
    assert sorted(j for part in parts for j in part) == sorted(costs)
    loads = [sum(costs[j] for j in part) for part in parts]
    assert abs(loads[0] - loads[1]) <= max(costs.values())  # the LPT bound
    assert sorted(loads) == [64, 64]  # this set splits evenly; LPT finds it


@pytest.fixture(scope="module")
def programs():
    torch.manual_seed(0)
    model = Qwen35ForCausalLM.from_preset("tiny", max_seq_len=64).eval().requires_grad_(False)
    model.fuse_projections()
    quantize_model(model, "8da4w", "4w", 32)
    return model


def lower(model, parallel):
    return lower_to_executorch(export_methods(model, 16), {"get_max_seq_len": 16}, parallel=parallel)[0].buffer


def test_parallel_lowering_is_byte_identical_to_sequential(programs, monkeypatch):
    forks = []
    real_fork = os.fork
    monkeypatch.setattr(pp.os, "fork", lambda: forks.append(1) or real_fork())
    parallel = lower(programs, True)
    assert forks == [1], "the parallel path did not fork a worker"
    sequential = lower(programs, False)
    assert len(forks) == 1
    assert parallel == sequential


def test_a_failing_worker_fails_the_lowering(programs, monkeypatch):
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    parent = os.getpid()
    real = XnnpackBackend.preprocess

    def preprocess(program, specs):
        if os.getpid() != parent:
            raise RuntimeError("injected worker failure")
        return real(program, specs)

    monkeypatch.setattr(XnnpackBackend, "preprocess", staticmethod(preprocess))
    with pytest.raises(RuntimeError, match="forked XNNPACK preprocess worker failed"):
        lower(programs, True)
