"""Energy accounting of qwen-bench: recorded traces with OEM quirks against hand-computed values
(`--power-replay`), and a live run sampling a fake sysfs tree (`--power-root`)."""

import json
from pathlib import Path

import pytest
from native_testlib import bench_json, run_bench, validate

TRACES = Path(__file__).parent / "power_traces"


def replay(exe, name, *extra):
    return json.loads(run_bench(exe, "--power-replay", TRACES / name, *extra).stdout)


def test_pixel_like_trace(qwen_bench):
    # Idle: 0.3 A x 4.0 V = 1.2 W over t = 0..1.5. Run (t = 2.5..4.5, 2 Hz): P = 3.12, 3.8, 4.56, 3.8, 3.12 W;
    # trapezoids 1.73 + 2.09 + 2.09 + 1.73 = 7.64 J over 2 s = 3.82 W. The warmup sample at t = 2.0 is excluded.
    # The runner timed the run at 2.2 s: gross 3.82 x 2.2 = 8.404 J, net (3.82 - 1.2) x 2.2 = 5.764 J, / 40 tokens.
    e = replay(qwen_bench, "pixel_like_ua.jsonl")
    assert e["idle_power_w"] == pytest.approx(1.2)
    assert e["mean_power_w"] == pytest.approx(3.82)
    assert e["gross_joules"] == pytest.approx(8.404)
    assert e["joules"] == pytest.approx(5.764)
    assert e["joules_per_token"] == pytest.approx(0.1441)
    assert e["charge_delta_uah"] == 1200  # 3,000,000 -> 2,998,800 µAh over the run samples
    assert e["battery_delta_pct"] == 1
    assert e["current_unit"] == "uA (inferred)" and e["current_sign"] == "negative while discharging"
    assert e["absent_fields"] == [] and e["notes"] == []
    # Thermal at ~1 Hz: t = 0, 1, 2, 3, 4 and the last sample, battery (0.1 °C) and two zones (m°C) each.
    assert len(e["thermal"]) == 6 * 3
    last = {p["zone"]: p["value"] for p in e["thermal"] if p["t_s"] == 4.5}
    assert last == {"battery": pytest.approx(31.1), "cpu-0-0": pytest.approx(52.3), "skin-therm": pytest.approx(33.9)}


def test_samsung_like_trace_ma_and_mv(qwen_bench):
    # current_now in mA and positive, voltage_now in mV. Idle 0.25 A x 3.95 V = 0.9875 W. Run: 2.31 W (t=3),
    # 2.695 W (t=4), the failed read at t=5 is bridged, 1.925 W (t=6): (2.31+2.695)/2 x 1 + (2.695+1.925)/2 x 2
    # = 7.1225 J over 3 s (no run wall time recorded). Net 7.1225 - 0.9875 x 3 = 4.16 J; / 52 tokens = 0.08 J.
    e = replay(qwen_bench, "samsung_like_ma.jsonl")
    assert e["current_unit"] == "mA (inferred)" and e["voltage_unit"] == "mV"
    assert e["current_sign"] == "positive while discharging"
    assert e["idle_power_w"] == pytest.approx(0.9875)
    assert e["mean_power_w"] == pytest.approx(7.1225 / 3)
    assert e["joules"] == pytest.approx(4.16)
    assert e["joules_per_token"] == pytest.approx(0.08)
    assert e["charge_delta_uah"] is None  # absent, not zero
    assert e["absent_fields"] == ["charge_counter", "battery_temp"]
    assert [p["value"] for p in e["thermal"] if p["zone"] == "ap"][-1] == 50  # whole °C zone kept as is


def test_forced_unit_overrides_the_guess(qwen_bench):
    # Read as µA, the same trace draws a thousandth of the power.
    e = replay(qwen_bench, "samsung_like_ma.jsonl", "--current-unit", "ua")
    assert e["current_unit"] == "uA" and e["joules"] == pytest.approx(4.16e-3)


def test_missing_voltage_gives_charge_only(qwen_bench):
    e = replay(qwen_bench, "no_voltage.jsonl")
    for k in ("joules", "joules_per_token", "mean_power_w", "idle_power_w"):
        assert e[k] is None, k
    assert "voltage_now" in e["absent_fields"]
    assert e["charge_delta_uah"] == 1000  # 2,500,000 -> 2,499,000 µAh


def test_charger_connected_is_flagged(qwen_bench):
    # Idle 1.6 W. Run: 4 W, then the current flips (charger): -2 W, then 4 W again; 2 J over 2 s = 1 W, so the net
    # energy is (1 - 1.6) x 2 = -1.2 J: reported as measured, with notes saying the run is not a valid measurement.
    e = replay(qwen_bench, "usb_powered.jsonl")
    assert e["joules"] == pytest.approx(-1.2)
    assert e["status"] == "Charging"
    assert any("charging sign" in n for n in e["notes"]) and any("not 'Discharging'" in n for n in e["notes"])


def test_bad_trace_names_file_and_line(qwen_bench, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qwen_power_trace": 1}\n{"t": 0, "phase": "idle"}\n{"t": 1, "phase": "sprint"}\n')
    proc = run_bench(qwen_bench, "--power-replay", bad, check=False)
    assert proc.returncode == 1
    assert "bad.jsonl line 3: phase must be idle, warmup or run, got 'sprint'" in proc.stderr


def fake_sysfs(root: Path, supplies: dict, zones: dict) -> Path:
    for name, files in supplies.items():
        d = root / "sys/class/power_supply" / name
        d.mkdir(parents=True)
        for k, v in files.items():
            (d / k).write_text(f"{v}\n")
    for i, (kind, temp) in enumerate(zones.items()):
        d = root / "sys/class/thermal" / f"thermal_zone{i}"
        d.mkdir(parents=True)
        (d / "type").write_text(kind + "\n")
        (d / "temp").write_text(f"{temp}\n")
    return root


def test_live_sampling_of_a_fake_sysfs(qwen_bench, fp32_bundle, tmp_path):
    """The live path end to end: battery selection (a USB supply with a larger current is not the battery), sampling
    during idle and runs, a steady 2.0 W both idle and running (so the net energy is zero), absent files reported."""
    root = fake_sysfs(tmp_path / "root", {
        "usb": {"type": "USB", "current_now": 900000, "voltage_now": 5000000},
        "battery": {"type": "Battery", "status": "Discharging", "current_now": -500000, "voltage_now": 4000000,
                    "capacity": 77, "temp": 301},
    }, {"cpu-0-0": 45000, "skin": 33500})
    log = tmp_path / "trace.jsonl"
    out = bench_json(qwen_bench, tmp_path, "--bundle", fp32_bundle, "--prompt-len", 16, "--gen", 8, "--runs", 100,
                     "--warmup", 1, "--power-root", root, "--power-hz", 50, "--idle-seconds", 0.3,
                     "--power-log", log)
    validate(out)
    e = out["energy"]
    assert e["source"].endswith("sys/class/power_supply/battery")
    assert e["status"] == "Discharging"
    assert e["idle_power_w"] == pytest.approx(2.0)
    assert e["joules"] == pytest.approx(0.0, abs=1e-9)
    assert e["tokens"] == 100 * 8
    assert e["absent_fields"] == ["charge_counter"]
    assert {p["zone"] for p in e["thermal"]} == {"battery", "cpu-0-0", "skin"}
    # The recorded trace replays to the same report.
    again = json.loads(run_bench(qwen_bench, "--power-replay", log).stdout)
    assert again["idle_power_w"] == e["idle_power_w"] and again["tokens"] == e["tokens"]
