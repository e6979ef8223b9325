"""The NEON path: cross-compile the C++ core for aarch64 and run its fp64 self-test under qemu.

Skipped unless aarch64-linux-gnu-g++ and qemu-aarch64 are installed
(apt-get install g++-aarch64-linux-gnu qemu-user).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None
                    or (shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")) is None,
                    reason="needs aarch64-linux-gnu-g++ and qemu-aarch64")
def test_neon_core_matches_fp64_under_qemu(tmp_path):
    proc = subprocess.run(["sh", str(RUNTIME / "scripts" / "cross_check_aarch64.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "isa=neon" in proc.stdout and "ALL OK" in proc.stdout, proc.stdout[-3000:]
