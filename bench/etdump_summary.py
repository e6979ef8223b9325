"""Where a bundle's time goes: an ETDump from `qwen-bench --etdump` summarised per method, per operator.

    qwen-bench --bundle DIR --prompt-len 128 --gen 32 --runs 1 --no-power --etdump out/run.etdp
    python bench/etdump_summary.py out/run.etdp [--top 25] [--json out/profile.json]

Works the same on an ETDump pulled from a phone (`adb pull`). For each method (ExecuTorch's Inspector merges the
calls of one method into one block; qwen-bench calls `forward` first, so block 1 is `forward` and block 2
`decode_token`) it prints the method's time per call and, per event name, the calls and milliseconds per method call
and the share of the method's time: our kernels (`qwen35::...`), the portable or optimized kernels between delegates
(`native_call_*`), and each XNNPACK operator inside the delegate calls. `OPERATOR_CALL` and `DELEGATE_CALL` are the
totals of all non-delegated and all delegated calls. Profiling adds a little time per call; compare speeds from runs
without `--etdump`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METHOD_EVENT = "Method::execute"
TOTALS = ("OPERATOR_CALL", "DELEGATE_CALL")
LOAD_EVENTS = {"Program::load_method", "Method::init"}


def summarize(etdump_path: str | Path) -> list[dict]:
    """One dict per executed method: its calls, median ms per call and the events' per-call cost, largest first."""
    from executorch.devtools import Inspector

    path = Path(etdump_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ETDump (write one with `qwen-bench --etdump {path}`)")
    inspector = Inspector(etdump_path=str(path))
    methods = []
    for block in inspector.event_blocks:
        per_name: dict[str, list[float]] = defaultdict(list)
        for event in block.events:
            if event.perf_data is not None and event.name not in LOAD_EVENTS:
                per_name[event.name].extend(float(t) for t in event.perf_data.raw)  # ms, one entry per occurrence
        if METHOD_EVENT not in per_name:
            continue  # the load block: no method ran in it
        calls = len(per_name[METHOD_EVENT])
        method_ms = statistics.median(per_name[METHOD_EVENT])
        total_ms = sum(per_name[METHOD_EVENT])
        rows = []
        for name, times in per_name.items():
            if name == METHOD_EVENT:
                continue
            rows.append({"name": name, "calls_per_method_call": len(times) / calls, "ms_per_method_call":
                         sum(times) / calls, "share": sum(times) / total_ms if total_ms > 0 else 0.0})
        rows.sort(key=lambda r: -r["ms_per_method_call"])
        methods.append({"block": len(methods) + 1, "calls": calls, "median_ms": method_ms, "events": rows})
    if not methods:
        raise ValueError(f"{path}: no method execution recorded (was the bundle run with --etdump?)")
    return methods


def print_table(methods: list[dict], top: int, out=sys.stdout) -> None:
    guess = {1: "forward (qwen-bench calls it first)", 2: "decode_token"}
    for m in methods:
        print(f"\nblock {m['block']}: {guess.get(m['block'], 'method')}, {m['calls']} calls, "
              f"median {m['median_ms']:.3f} ms per call", file=out)
        print(f"  {'event':58s} {'calls/call':>10s} {'ms/call':>9s} {'share':>6s}", file=out)
        shown = [r for r in m["events"] if r["name"] in TOTALS] + [r for r in m["events"] if r["name"] not in TOTALS]
        for r in shown[:top + len(TOTALS)]:
            print(f"  {r['name'][:58]:58s} {r['calls_per_method_call']:10.1f} {r['ms_per_method_call']:9.3f} "
                  f"{100 * r['share']:5.1f}%", file=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("etdump", type=Path, help="the file written by qwen-bench --etdump")
    ap.add_argument("--top", type=int, default=25, help="events per method after the two totals (default 25)")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    try:
        methods = summarize(args.etdump)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"etdump_summary: {e}")
    print_table(methods, args.top)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"etdump": str(args.etdump), "methods": methods}, indent=1) + "\n")


if __name__ == "__main__":
    main()
