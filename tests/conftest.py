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
