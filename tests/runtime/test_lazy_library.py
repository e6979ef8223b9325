"""`import qwen_mobile.runtime` compiles and loads nothing; the first op call loads the native library.

Each check runs in a fresh Python (a child process): this session has long loaded the library. What the child
reports is read from outside the code under test: the build folder's files and the process's own memory map
(/proc/self/maps), besides `is_loaded()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS_RUNTIME = Path(__file__).resolve().parent

CHILD = textwrap.dedent("""
    import json, os, sys

    def mapped():  # is the library in this process's address space, whoever loaded it
        with open("/proc/self/maps") as f:
            return "libqwen35_ops" in f.read()

    import qwen_mobile.runtime as qrt
    import torch
    report = {"after_import": {"loaded": qrt.is_loaded(), "mapped": mapped(),
                               "build_dir_files": sorted(os.listdir(os.environ["QWEN35_RUNTIME_BUILD_DIR"]))}}
    if len(sys.argv) > 1:  # the first op call: the library is taken from the folder it was built in
        os.environ["QWEN35_RUNTIME_BUILD_DIR"] = sys.argv[1]
        sys.path.insert(0, TESTS_RUNTIME)
        from gdr_testlib import make_inputs, reference
        q, k, v, g, beta, state = make_inputs(1, 3, 2, 4, 32, 32)
        expected, expected_state = reference(q, k, v, g, beta, state.clone())
        out = torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, state)
        report["after_op"] = {"loaded": qrt.is_loaded(), "mapped": mapped(),
                              "max_abs_err": float((out.double() - expected).abs().max()),
                              "max_abs_state_err": float((state.double() - expected_state).abs().max())}
    print(json.dumps(report))
""").replace("TESTS_RUNTIME", repr(str(TESTS_RUNTIME)))


def run_child(empty_build_dir: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "QWEN35_RUNTIME_LIB"}
    env["QWEN35_RUNTIME_BUILD_DIR"] = str(empty_build_dir)
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process memory map (Linux)")
def test_the_import_builds_and_loads_nothing(tmp_path):
    report = run_child(tmp_path)
    assert report["after_import"] == {"loaded": False, "mapped": False, "build_dir_files": []}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process memory map (Linux)")
def test_the_first_op_call_loads_the_library_and_computes(tmp_path, qrt):
    from qwen_mobile.runtime import library

    built = library.loaded_library_path().parent  # this session's build (conftest's qrt fixture loaded it)
    report = run_child(tmp_path, str(built))
    assert report["after_import"]["loaded"] is False and report["after_import"]["mapped"] is False
    assert report["after_op"]["loaded"] is True and report["after_op"]["mapped"] is True
    # The fp64 recurrence (gdr_testlib.reference) against our fp32 kernel, as in test_gdr_eager.py.
    assert report["after_op"]["max_abs_err"] < 1e-4 and report["after_op"]["max_abs_state_err"] < 1e-4, report


@pytest.mark.slow
def test_the_first_op_call_builds_into_an_empty_folder(tmp_path):
    """The whole path from nothing: CMake configure and build on the first call (about a minute on 2 cores)."""
    report = run_child(tmp_path, str(tmp_path))
    assert report["after_import"]["build_dir_files"] == []
    assert report["after_op"]["loaded"] is True and report["after_op"]["max_abs_err"] < 1e-4, report
    assert (tmp_path / library_filename()).is_file()


def library_filename() -> str:
    from qwen_mobile.runtime import library

    return library.LIB_BASENAME + (".dylib" if sys.platform == "darwin" else ".so")
