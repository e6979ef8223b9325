"""The Android app's pure-Java logic against the Python and C++ references it must agree with:

* energy: org.qwenmobile.core.Energy vs runtime/runner/power.cpp (read_trace + summarize_energy, compiled here without
  ExecuTorch) on every recorded trace in tests/native/power_traces, field by field, for each current-unit setting;
* the bench report the app writes validates against runtime/schemas/bench.schema.json, and its statistics equal
  runtime/bench.py's on the same samples.

The JUnit suite (android_app/check.sh) covers the rest; these need Python or C++ on the other side.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRACES = sorted((REPO / "tests/native/power_traces").glob("*.jsonl"))


@pytest.fixture(scope="module")
def classes(tmp_path_factory, java_tools) -> Path:
    out = tmp_path_factory.mktemp("android-classes")
    sources = sorted((REPO / "android_app/src/org/qwenmobile/core").glob("*.java"))
    sources.append(REPO / "tests/android/ReportSample.java")
    # The core package is plain Java: no android.jar on the class path, which also proves it stays Android-free.
    subprocess.run(["javac", "-nowarn", "-source", "8", "-target", "8", "-Xlint:-options", "-d", str(out),
                    *map(str, sources)], check=True)
    return out


@pytest.fixture(scope="module")
def power_replay(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("power-replay") / "power_replay"
    runner = REPO / "runtime/runner"
    subprocess.run(["g++", "-std=c++17", "-O1", "-pthread", f"-I{runner}", str(REPO / "tests/android/power_replay_main.cpp"),
                    str(runner / "power.cpp"), str(runner / "json.cpp"), "-o", str(exe)], check=True)
    return exe


def same(a, b, where="") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {a} vs {b}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}/{i}")
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert isinstance(b, (int, float)) and not isinstance(b, bool), f"{where}: {a!r} vs {b!r}"
        # Same formulas in the same order: only the last bit may differ (the tolerance says so).
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), f"{where}: C++ {a!r}, Java {b!r}"
    else:
        assert a == b, f"{where}: C++ {a!r}, Java {b!r}"


@pytest.mark.parametrize("unit", ["auto", "ua", "ma"])
@pytest.mark.parametrize("trace", TRACES, ids=[t.stem for t in TRACES])
def test_energy_matches_power_cpp(classes, power_replay, trace, unit):
    cpp = json.loads(subprocess.run([str(power_replay), str(trace), unit], check=True, capture_output=True,
                                    text=True).stdout)
    java = json.loads(subprocess.run(["java", "-cp", str(classes), "org.qwenmobile.core.Energy", str(trace), unit],
                                     check=True, capture_output=True, text=True).stdout)
    same(cpp, java)
    if trace.stem == "pixel_like_ua" and unit == "auto":
        assert cpp["joules"] == pytest.approx(5.764)  # the hand-worked value of tests/native/test_power.py


def test_energy_error_names_file_and_line(classes, power_replay, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qwen_power_trace": 1}\n{"t": 0, "phase": "idle"}\n{"t": 1, "phase": "sprint"}\n')
    for cmd in ([str(power_replay), str(bad)], ["java", "-cp", str(classes), "org.qwenmobile.core.Energy", str(bad)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 1
        assert f"{bad} line 3: phase must be idle, warmup or run, got 'sprint'" in proc.stderr


def test_report_validates_and_matches_bench_py_stats(classes):
    from qwen_mobile.runtime.bench import stats, validate_bench

    doc = json.loads(subprocess.run(["java", "-cp", str(classes), "ReportSample", str(REPO)], check=True,
                                    capture_output=True, text=True).stdout)
    validate_bench(doc, "ReportSample")
    assert doc["producer"]["name"] == "android-app"
    assert len(doc["results"]) == 2
    for result in doc["results"]:
        for key in ("ttft_ms", "prefill_tok_s", "decode_tok_s"):
            values = [s[key] for s in result["samples"]]
            want = stats(values)
            assert result[key].keys() == want.keys()
            for k in want:
                assert result[key][k] == want[k], (key, k)  # same definitions: bit-identical
    assert doc["energy"]["valid"] is True and doc["energy"]["joules"] == pytest.approx(5.764)
    # The bundle hash is bundle.py's.
    from qwen_mobile.runtime.bundle import bundle_hash

    cases = json.loads((REPO / "tests/apps/vectors/manifest_cases.json").read_text())
    assert doc["bundle"]["hash"] == bundle_hash(cases["cases"][0]["manifest"])
