"""tests/native: qwen-bench built for this host, and small bundles exported once per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from qwen_mobile.runtime import native

# A git-ignored folder in the clone (runtime/build*/): repeated local runs rebuild incrementally, CI builds fresh.
BUILD_DIR = Path(os.environ.get("QWEN_NATIVE_TEST_BUILD", native.RUNTIME_DIR / "build-native" / "pytest-x86_64"))
# Small bounds so that a 21-token prompt takes two prefill chunks and decode runs well into the cache.
SMALL = dict(max_seq_len=96, max_prefill_chunk=16, progress=False)


@pytest.fixture(scope="session")
def qwen_bench() -> Path:
    return native.build_runner(BUILD_DIR, native.host_executorch_cmake_dir())


def _export(hf_checkpoint, tmp_path_factory, preset: str, **extra) -> Path:
    from qwen_mobile.export import export

    # An untied lm_head: random tied models (and the plain `tiny` preset) greedily repeat one token, which would make
    # the token comparison trivial; this checkpoint's 24 greedy tokens hold 19 distinct ids.
    src, _ = hf_checkpoint("causal", "hv2x", False)
    out = tmp_path_factory.mktemp("native-bundles") / preset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tokenizer.json": these bundles run on token ids
        export(str(src), out, preset=preset, **SMALL, **extra)
    return out


@pytest.fixture(scope="session")
def fp32_bundle(hf_checkpoint, tmp_path_factory) -> Path:
    return _export(hf_checkpoint, tmp_path_factory, "xnnpack-fp32")


@pytest.fixture(scope="session")
def q_bundle(hf_checkpoint, tmp_path_factory) -> Path:
    return _export(hf_checkpoint, tmp_path_factory, "xnnpack-8da4w", quality_gate=False)
