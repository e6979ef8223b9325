"""bench/peers/llamacpp.py: the llama.cpp peer runs the way its users run it (default buffer types) and falls back
only when a configuration crashes, recording which ran and why; the probes here are fakes with recorded outcomes, so
the selection logic is tested without building llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest

from bench.peers import llamacpp
from bench.peers._llamacpp_worker import weight_buffers

# Lines as llama.cpp 0.3.36 logs them at load (CPU_REPACK on, AMX off, on this project's 0.8B-shape Q4_0 GGUF).
LOAD_LOG = """load_tensors:   CPU_REPACK model buffer size =   266.91 MiB
load_tensors:          CPU model buffer size =   229.39 MiB
load_tensors:   CPU_REPACK model buffer size =     0.09 MiB
"""


def fake_probe(outcomes: dict):
    """_probe stand-in: outcomes[bufts] is a crash text or (weight buffers MiB, logits)."""
    calls = []

    def probe(gguf, bufts, threads):
        calls.append(bufts)
        out = outcomes[bufts]
        if isinstance(out, str):
            return {"bufts": bufts, "ok": False, "outcome": out}, None
        buffers, logits = out
        return {"bufts": bufts, "ok": True, "weight_buffers_mib": buffers, "n_overridden": 186,
                "finite": True}, np.asarray(logits, dtype=np.float32)

    return probe, calls


def test_the_load_log_gives_the_weight_buffers():
    assert weight_buffers(LOAD_LOG) == pytest.approx({"CPU_REPACK": 267.0, "CPU": 229.39})
    assert llamacpp.layout_label(weight_buffers(LOAD_LOG), "no_amx") == "CPU_REPACK on, AMX off"
    assert llamacpp.layout_label({"AMX": 100.0, "CPU_REPACK": 50.0}, "default") == "AMX + CPU_REPACK"
    assert llamacpp.layout_label({"CPU": 496.0}, "none") == "no repack (plain Q4_0 rows)"


def test_default_is_kept_when_it_runs(monkeypatch):
    probe, calls = fake_probe({"default": ({"AMX": 10.0, "CPU_REPACK": 250.0}, [0.1, 2.0, 0.3]),
                               "none": ({"CPU": 496.0}, [0.1, 1.9, 0.3])})
    monkeypatch.setattr(llamacpp, "_probe", probe)
    config = llamacpp.choose_bufts("m.gguf")
    assert config["bufts"] == "default" and config["why"] == "first configuration tried"
    assert calls == ["default", "none"]  # the plain layout only as the agreement reference
    assert config["agreement_vs_plain_layout"] == {"max_abs_diff": pytest.approx(0.1), "max_abs_ref": pytest.approx(1.9),
                                                   "argmax_same": True}
    assert llamacpp.config_label(config) == "AMX + CPU_REPACK"


def test_a_crashing_default_falls_back_to_repack_without_amx_and_says_why(monkeypatch):
    probe, calls = fake_probe({"default": "killed by SIGSEGV", "no_amx": (weight_buffers(LOAD_LOG), [1.0, 0.0]),
                               "none": ({"CPU": 496.0}, [0.5, 0.0])})
    monkeypatch.setattr(llamacpp, "_probe", probe)
    config = llamacpp.choose_bufts("m.gguf")
    assert calls == ["default", "no_amx", "none"]
    assert config["bufts"] == "no_amx" and config["layout"] == "CPU_REPACK on, AMX off"
    assert config["why"] == "fallback: default killed by SIGSEGV"
    assert [t["ok"] for t in config["tried"]] == [False, True]
    assert llamacpp.config_label(config) == "CPU_REPACK on, AMX off (default: killed by SIGSEGV)"


def test_every_configuration_crashing_is_an_error_naming_each(monkeypatch):
    probe, _ = fake_probe({"default": "killed by SIGSEGV", "no_amx": "killed by SIGILL", "none": "exit 1 (oom)"})
    monkeypatch.setattr(llamacpp, "_probe", probe)
    with pytest.raises(RuntimeError, match="default: killed by SIGSEGV; no_amx: killed by SIGILL; none: exit 1"):
        llamacpp.choose_bufts("m.gguf")
