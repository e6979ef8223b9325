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

