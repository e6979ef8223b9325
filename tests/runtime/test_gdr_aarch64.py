"""The NEON path: cross-compile the C++ core for aarch64 and run its fp64 self-test under qemu.

The `aarch64_tools` fixture (tests/conftest.py) apt-get installs g++-aarch64-linux-gnu and qemu-user when
missing and skips only where it cannot (not root).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def test_neon_core_matches_fp64_under_qemu(tmp_path, aarch64_tools):
    proc = subprocess.run(["sh", str(RUNTIME / "scripts" / "cross_check_aarch64.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "isa=neon" in proc.stdout and "ALL OK" in proc.stdout, proc.stdout[-3000:]
