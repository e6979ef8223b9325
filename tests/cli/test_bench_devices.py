"""`qwen-mobile bench FOLDER`: results pulled from many phones (a device farm's artifacts) shown one row per device
and bundle, with a plot; foreign JSON files skipped, a broken bench file named."""

import json

import pytest

from qwen_mobile.export.cli import main


def stats(median, p10, p90):
    return {"median": median, "p10": p10, "p90": p90}


def result(device: str, os_name: str, qlinear: str, decode: float, prefill: float, energy: dict | None = None):
    """A bench-schema document as a phone would write it; the numbers are the test's own, not computed by bench.py."""
    return {
        "schema_version": 1, "format": "qwen-mobile-bench",
        "producer": {"name": "android-app" if os_name.startswith("Android") else "ios-app", "version": "0.1.0"},
        "created_utc": "2026-12-03T12:00:00+00:00",
        "device": {"model": device, "os": os_name, "arch": "arm64-v8a", "emulated": False},
        "bundle": {"hash": "a" * 64, "model_id": "nano", "backend": "xnnpack", "qlinear": qlinear,
                   "qembedding": "4w"},
        "settings": {"prompt_lengths": [128], "generate_tokens": 64, "runs": 3, "warmup": 1},
        "results": [{"prompt_tokens": 128, "generate_tokens": 64, "ttft_ms": stats(128e3 / prefill, 1, 2),
                     "prefill_tok_s": stats(prefill, prefill - 5, prefill + 5),
                     "decode_tok_s": stats(decode, decode - 1, decode + 1),
                     "samples": [{"ttft_ms": 1.0, "prefill_tok_s": prefill, "decode_tok_s": decode,
                                  "generated_tokens": 64}]}],
        "energy": energy,
    }


@pytest.fixture
def farm(tmp_path):
    root = tmp_path / "farm"
    (root / "pixel-8").mkdir(parents=True)
    (root / "iphone-15").mkdir()
    (root / "pixel-8" / "bench-8da4w.json").write_text(json.dumps(result(
        "Pixel 8", "Android 15", "8da4w", decode=41.5, prefill=310.0,
        energy={"source": "BatteryManager", "sample_hz": 5, "joules_per_token": 0.0123, "valid": True})))
    (root / "pixel-8" / "bench-4w.json").write_text(json.dumps(result(
        "Pixel 8", "Android 15", "4w", decode=28.25, prefill=190.0)))
    (root / "iphone-15" / "bench.json").write_text(json.dumps(result(
        "iPhone 15", "iOS 18.1", "8da4w", decode=55.75, prefill=420.0,
        energy={"source": "BatteryManager", "sample_hz": 5, "joules_per_token": 0.02, "valid": False,
                "invalid_reasons": ["charging"]})))
    (root / "pixel-8" / "launch.json").write_text(json.dumps({"argv": ["libqwen_bench.so"]}))
    return root


def test_a_folder_of_device_results_is_one_row_per_device_and_bundle(farm, tmp_path, capsys):
    plot = tmp_path / "devices.png"
    assert main(["bench", str(farm), "--plot", str(plot), "--json", str(tmp_path / "all.json")]) == 0
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines()[2:] if line.strip()]
    assert len(rows) == 3
    # Sorted by device, then bundle; each row carries its own numbers.
    assert rows[0].startswith("Pixel 8 (Android 15)") and "nano 4w/4w" in rows[0] and "28.2 (27.2-29.2)" in rows[0]
    assert rows[1].startswith("Pixel 8 (Android 15)") and "nano 8da4w/4w" in rows[1] and "41.5 (40.5-42.5)" in rows[1]
    assert "0.0123" in rows[1] and "310.0" in rows[1]
    assert rows[2].startswith("iPhone 15 (iOS 18.1)") and "55.8 (54.8-56.8)" in rows[2]
    assert "invalid: charging/plugged" in rows[2]  # a plugged-in phone's energy is never shown as a number alone
    assert "3 bench results, 1 other JSON files skipped" in captured.err
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "all.json").read_text())) == 3


def test_a_broken_bench_file_in_the_folder_is_named(farm, capsys):
    broken = farm / "iphone-15" / "bench.json"
    doc = json.loads(broken.read_text())
    del doc["results"][0]["prefill_tok_s"]
    broken.write_text(json.dumps(doc))
    assert main(["bench", str(farm)]) == 1
    err = capsys.readouterr().err
    assert f"{broken}: field 'results/0': 'prefill_tok_s' is a required property" in err


def test_a_folder_without_results_says_what_it_found(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "meta.json").write_text("{}")
    assert main(["bench", str(tmp_path / "logs")]) == 1
    assert "no bench results" in capsys.readouterr().err
