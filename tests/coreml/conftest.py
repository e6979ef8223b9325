"""Core ML tests need coremltools (the `[coreml]` extra); without it they skip with that reason, nothing else."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' per-pass progress bars

try:
    import coremltools  # noqa: F401

    HAVE_COREMLTOOLS = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_COREMLTOOLS = False


def pytest_collection_modifyitems(config, items):
    if HAVE_COREMLTOOLS:
        return
    skip = pytest.mark.skip(reason="coremltools is not installed: pip install -e '.[coreml]'")
    for item in items:
        if "tests/coreml" in str(item.fspath):
            item.add_marker(skip)
