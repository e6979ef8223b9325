"""tests/runtime: builds (once, cached) and loads the native qwen35 library for the whole session."""

import pytest


@pytest.fixture(scope="session")
def qrt():
    import qwen_mobile.runtime as qrt  # defines the ops; loads nothing (test_lazy_library.py)

    qrt.load_library()  # builds it on first use and registers our ExecuTorch kernels before a test loads a .pte
    assert qrt.is_loaded()
    return qrt


@pytest.fixture
def portable_isa(qrt):
    """Run the portable/NEON-shaped path instead of AVX2 for the duration of a test."""
    from qwen_mobile.runtime import ops

    ops.force_portable(True)
    yield
    ops.force_portable(False)


@pytest.fixture(scope="session")
def aarch64_tools() -> str:
    """qemu-aarch64's path, after apt-get installing the cross compiler and qemu-user when missing (as root, as CI is).

    Decided when a test first asks, not at collection: on a fresh machine the tools arrive during the run, and a
    collection-time skipif would skip the NEON self-tests silently there. Skips only where nothing can install them.
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.arm_cost import tools

    try:
        tools.ensure_system_tools()
    except tools.ToolsMissing as e:
        pytest.skip(f"aarch64 tools unavailable: {e}")
    return tools.QEMU
