"""Shared fixtures: tiny random Qwen3.5 checkpoints written by transformers itself (`save_pretrained`); the
builders live in checkpoints.py."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from checkpoints import make_hf_causal_lm, make_hf_conditional_generation

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*falling back to its reference PyTorch implementation.*")

TESTS = Path(__file__).resolve().parent
# These build into folders shared beyond one test (the host qwen-bench build, ~/.cache/qwen_mobile's aarch64 trees)
# or apt-get the cross tools: two xdist workers doing that at once would race, so they share one worker, in order.
SHARED_BUILDS = ("native/", "android/", "runtime/test_gdr_aarch64.py", "runtime/test_wq_aarch64.py")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without xdist installed, nothing to do
def pytest_xdist_make_scheduler(config, log):
    """Under `-n 2` (the README's test command): each test file stays on one worker, so its module fixtures (an export,
    a lowering cached for several tests) are built once, and the SHARED_BUILDS files all share one worker.

    A scheduler rather than xdist_group marks: pytest 9.2 keeps a test's id where xdist 3.8's `--dist loadgroup` no
    longer writes the group into it, so those marks are silently ignored."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]  # tests/native/test_serve.py
            return "shared-builds" if path.removeprefix("tests/").startswith(SHARED_BUILDS) else path

    return FileScheduling(config, log)


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


# -- one fp32 bundle of a tiny VLM (tower B: 4-pixel patches; image sizes 32x32 and 32x48; a word-level tokenizer with
# Qwen's vision and ChatML tokens), shared by tests/export/test_vision_bundle.py and tests/session/test_image_session.py:
# an export of its seven methods takes about two minutes here.
@pytest.fixture(scope="session")
def vlm_b_fp32(tmp_path_factory):
    import sys
    from pathlib import Path

    from checkpoints import write_word_tokenizer
    from qwen_mobile.export import export

    tests = Path(__file__).resolve().parent
    sys.path[:0] = [str(tests / "models"), str(tests / "export")]
    from test_vision_bundle import B_SIZES, SMALL, vlm_checkpoint

    src = vlm_checkpoint(tmp_path_factory, "B")
    write_word_tokenizer(src)
    out = tmp_path_factory.mktemp("bundles") / "vlm-b-fp32"
    manifest = export(str(src), out, **{**SMALL, "preset": "xnnpack-fp32", "image_sizes": B_SIZES})
    return src, out, manifest


def _system_tools():
    """bench.arm_cost.tools (apt_install, ensure_system_tools, ToolsMissing), importable from the repository root."""
    import sys

    if str(TESTS.parent) not in sys.path:
        sys.path.insert(0, str(TESTS.parent))
    from bench.arm_cost import tools

    return tools


@pytest.fixture(scope="session")
def aarch64_tools() -> str:
    """qemu-aarch64's path, after apt-get installing the cross compiler and qemu-user when missing (as root, as CI is).

    Decided when a test first asks, not at collection: on a fresh machine the tools arrive during the run, and a
    collection-time skipif would skip the NEON self-tests silently there. Skips only where nothing can install them.
    Used by the NEON self-tests (tests/runtime) and the ARM cost tests (tests/native/test_arm_cost.py).
    """
    tools = _system_tools()
    try:
        tools.ensure_system_tools()
    except tools.ToolsMissing as e:
        pytest.skip(f"aarch64 tools unavailable: {e}")
    return tools.QEMU


@pytest.fixture(scope="session")
def java_tools() -> None:
    """javac and java, after apt-get installing default-jdk-headless when missing (as root, as CI is); decided when a
    test first asks, like aarch64_tools, so a machine without a JDK runs the Java tests instead of skipping them."""
    import shutil

    tools = _system_tools()
    try:
        tools.apt_install([] if shutil.which("javac") and shutil.which("java") else ["default-jdk-headless"])
    except tools.ToolsMissing as e:
        pytest.skip(f"no JDK: {e}")
