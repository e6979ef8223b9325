"""Shared fixtures: tiny random Qwen3.5 checkpoints written by transformers itself (`save_pretrained`); the
builders live in checkpoints.py."""

from __future__ import annotations

import os
import warnings

import pytest

from checkpoints import make_hf_causal_lm, make_hf_conditional_generation

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*falling back to its reference PyTorch implementation.*")


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """Factory: (kind, regime, tied, shard) -> (folder, hf_model), cached for the session."""
    cache: dict = {}

    def get(kind="causal", regime="hv2x", tied=True, sharded=False):
        key = (kind, regime, tied, sharded)
        if key not in cache:
            model = (make_hf_causal_lm if kind == "causal" else make_hf_conditional_generation)(regime, tied)
            folder = tmp_path_factory.mktemp(f"{kind}-{regime}-{'tied' if tied else 'untied'}")
            # 20KB shards force several files plus model.safetensors.index.json.
            model.save_pretrained(folder, max_shard_size="20KB" if sharded else "5GB")
            cache[key] = (folder, model)
        return cache[key]

    return get


# -- one fp32 bundle of the shipped nano model per test session (about a minute to export), shared by the session,
# chat, bench and CLI tests (tests/session, tests/cli); and a second bundle with a different identity but the same
# state layout (one file changed and re-hashed), which is the hard case for snapshot checks. Built only when asked for.
NANO_BUNDLE_CONTEXT = 256


@pytest.fixture(scope="session")
def nano_bundle(tmp_path_factory):
    from qwen_mobile.export import export

    out = tmp_path_factory.mktemp("host") / "nano-fp32"
    export("nano", out, preset="xnnpack-fp32", max_seq_len=NANO_BUNDLE_CONTEXT, max_prefill_chunk=32, progress=False)
    return out


@pytest.fixture(scope="session")
def bundle(nano_bundle):
    from qwen_mobile.runtime.bundle import Bundle

    return Bundle(nano_bundle)


@pytest.fixture(scope="session")
def other_bundle(nano_bundle, tmp_path_factory):
    """Same weights and state shapes, different bundle identity (a changed tokenizer_config.json)."""
    import json
    import shutil

    from qwen_mobile.runtime.bundle import Bundle, write_manifest

    out = tmp_path_factory.mktemp("host") / "nano-fp32-other"
    shutil.copytree(nano_bundle, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 12345
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    write_manifest(out, json.loads((out / "manifest.json").read_text()))
    return Bundle(out)
