"""The weight-only kernels' NEON path: cross-compile wq_selftest.cpp with the C++ core for aarch64 and run it under
qemu (baseline armv8-a, and armv8.2-a+dotprod, where linear_wq_a8 uses sdot instead of widening multiplies); the same
self-test built for the host without the AVX2 TU checks the portable path with no torch involved.

The aarch64 cases ask for the `aarch64_tools` fixture (tests/conftest.py): it apt-get installs
g++-aarch64-linux-gnu and qemu-user when missing and skips only where it cannot (not root).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "runtime" / "kernels"
SOURCES = [KERNELS / f for f in ("wq.cpp", "wq_generic.cpp", "gated_delta_rule.cpp", "gdr_generic.cpp")] + [
    Path(__file__).with_name("wq_selftest.cpp")]


def _build_and_run(cxx: str, out: Path, runner: list[str], isa: str, flags: tuple[str, ...] = (),
                   dotprod: bool = False) -> None:
    build = subprocess.run([cxx, "-std=c++17", "-O2", "-static", *flags, f"-I{KERNELS}", *map(str, SOURCES), "-o",
                            str(out)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    proc = subprocess.run([*runner, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and f"isa={isa}" in proc.stdout and "ALL OK" in proc.stdout, proc.stdout[-3000:]
    assert f"dotprod={int(dotprod)}" in proc.stdout, proc.stdout[:200]
    assert proc.stdout.count("a8 ") >= 16, proc.stdout  # the linear_wq_a8 cases ran


def test_neon_weight_only_matches_fp64_under_qemu(tmp_path, aarch64_tools):
    _build_and_run("aarch64-linux-gnu-g++", tmp_path / "wq_selftest", [aarch64_tools], "neon")


def test_neon_dotprod_weight_only_matches_fp64_under_qemu(tmp_path, aarch64_tools):
    # qemu's default CPU model ("max") implements the dot-product extension.
    _build_and_run("aarch64-linux-gnu-g++", tmp_path / "wq_selftest", [aarch64_tools], "neon",
                   ("-march=armv8.2-a+dotprod",),
                   dotprod=True)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_portable_weight_only_matches_fp64_standalone(tmp_path):
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the portable build is the baseline only on x86")
    _build_and_run("g++", tmp_path / "wq_selftest", [], "portable")


def test_dotprod_tu_is_chosen_at_run_time_under_qemu(tmp_path, aarch64_tools):  # gcc too: installed with them
    # The library's own build: baseline armv8-a plus wq_neon_dot.cpp, dispatched on HWCAP_ASIMDDP. On a Cortex-A76
    # model the a8 bodies must run sdot, on a Cortex-A53 (Armv8.0, no dot product) none, and both must be correct.
    # Which instructions ran is counted by bench/arm_cost's qemu plugin (sdot/udot class), not inferred.
    import sys

    sys.path.insert(0, str(ROOT))
    from bench.arm_cost import tools
    from bench.arm_cost.counting import run_counted

    exe, dot_obj = tmp_path / "wq_selftest", tmp_path / "wq_neon_dot.o"
    cxx = ["aarch64-linux-gnu-g++", "-std=c++17", "-O2", f"-I{KERNELS}"]
    for cmd in (cxx + ["-march=armv8.2-a+dotprod", "-c", str(KERNELS / "wq_neon_dot.cpp"), "-o", str(dot_obj)],
                cxx + ["-static", "-DQWEN35_HAVE_NEON_DOT_TU=1", *map(str, SOURCES), str(dot_obj), "-o", str(exe)]):
        build = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert build.returncode == 0, build.stderr[-3000:]
    plugin = tools.build_plugin(Path(tmp_path / "cache"))
    dots = {}
    for cpu in ("cortex-a76", "cortex-a53"):
        counts = run_counted([exe], cpu=cpu, plugin=plugin, workdir=tmp_path / "w", out_prefix=tmp_path / cpu)
        out = (tmp_path / f"{cpu}.stdout").read_text()
        assert "ALL OK" in out and "dotprod=0" in out, out[-3000:]
        dots[cpu] = counts.totals["dot"]
    assert dots["cortex-a76"] > 1000 and dots["cortex-a53"] == 0, dots
