"""Core ML conversion report: per recipe, export time and peak RSS, package size, op histogram, states, gate numbers.

    python bench/bench_coreml.py --source nano --qlinear fp16 8w 4w --json out/coreml_nano.json

Each export runs in a child process (its peak RSS is its own) through `export_coreml`, including the numpy-evaluator
gate; the report reads the manifest. Nothing here runs Core ML itself: speed on a phone needs a phone.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from qwen_mobile.export import export
from qwen_mobile.export.verify import VerificationError
source, out, qlinear, layout, max_seq_len, chunk = sys.argv[1:7]
t0 = time.perf_counter()
try:
    m = export(source, out, recipe="coreml", qlinear=qlinear, gdn_layout=layout, max_seq_len=int(max_seq_len),
               prefill_chunk=int(chunk), force=True, progress=False)
except VerificationError as e:  # a refusal is a result to report, not a crash of the whole table
    print("REFUSED " + json.dumps({"seconds": time.perf_counter() - t0, "verification": e.result.as_dict()}))
    sys.exit(0)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0,
                              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                              "manifest": m}))
"""


def run_one(source: str, qlinear: str, layout: str, max_seq_len: int, chunk: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-coreml-") as tmp:
        proc = subprocess.run([sys.executable, "-c", CHILD, source, str(Path(tmp) / "b"), qlinear, layout,
                               str(max_seq_len), str(chunk)], capture_output=True, text=True,
                              env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    row = {"source": source, "qlinear": qlinear, "gdn_layout": layout, "max_seq_len": max_seq_len,
           "prefill_chunk": chunk}
    refused = next((ln for ln in proc.stdout.splitlines() if ln.startswith("REFUSED ")), None)
    if proc.returncode == 0 and refused is not None:
        res = json.loads(refused[len("REFUSED "):])
        return {**row, "refused": True, "export_seconds": round(res["seconds"], 1), "verification": res["verification"]}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"export {source} {qlinear} {layout} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    m = res["manifest"]
    conv = m["export"]["conversion"]
    return {
        **row, "refused": False, "export_seconds": round(res["seconds"], 1),
        "stage_seconds": m["export"]["stage_seconds"], "function_convert_seconds": conv["functions"],
        "quantize_seconds": round(conv["quantize_seconds"], 1), "merge_seconds": round(conv["merge_seconds"], 1),
        "peak_rss_bytes": res["peak_rss_bytes"], "package_bytes": conv["package_bytes"],
        "weight_bytes": conv["weight_bytes"], "params": m["model"]["params"],
        "states": [b for b in m["state"]["buffers"] if b["storage"] == "coreml_state"],
        "host_io": [b for b in m["state"]["buffers"] if b["storage"] == "host_io"],
        "packages": [{k: p[k] for k in ("file", "layers", "bytes")} for p in m["program"]["packages"]],
        # one package: {function: {"ops": ...}}; split: {package: {function: {"ops": ...}}}
        "ops": (m["program"]["graph"] if len(m["program"]["packages"]) > 1
                else {m["program"]["file"]: m["program"]["graph"]}),
        "verification": {k: m["verification"][k] for k in ("max_abs_logit_diff", "top1_agreement", "top5_overlap",
                                                             "mean_kl", "greedy_identical", "passed", "gate")},
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", nargs="+", default=["nano"])
    p.add_argument("--qlinear", nargs="+", default=["fp32", "fp16", "8w", "4w"])
    p.add_argument("--gdn-layout", nargs="+", default=["io"])
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--prefill-chunk", type=int, default=64)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = []
    print(f"{'source':<8} {'qlinear':<6} {'layout':<6} {'export s':>8} {'RSS MB':>7} {'package MB':>10} {'pkgs':>4} "
          f"{'ops dec/pre':>11} {'states':>6} {'top-1':>6} {'KL':>9} {'max|dlogit|':>11}")
    for source in args.source:
        for layout in args.gdn_layout:
            for q in args.qlinear:
                r = run_one(source, q, layout, args.max_seq_len, args.prefill_chunk)
                rows.append(r)
                v = r["verification"]
                if r["refused"]:
                    print(f"{source:<8} {q:<6} {layout:<6} {'REFUSED by its gate (nothing written)':>45} "
                          f"{v['top1_agreement']:>13.3f} {v['mean_kl']:>9.2e} {v['max_abs_logit_diff']:>11.3g}",
                          flush=True)
                else:
                    n_ops = "/".join(str(sum(sum(pkg[f]["ops"].values()) for pkg in r["ops"].values()))
                                     for f in ("decode", "prefill"))
                    print(f"{source:<8} {q:<6} {layout:<6} {r['export_seconds']:>8.1f} "
                          f"{r['peak_rss_bytes'] / 1e6:>7.0f} {r['package_bytes'] / 1e6:>10.2f} {len(r['packages']):>4} "
                          f"{n_ops:>11} {len(r['states']):>6} {v['top1_agreement']:>6.3f} {v['mean_kl']:>9.2e} "
                          f"{v['max_abs_logit_diff']:>11.3g}", flush=True)
                if args.json:  # after every row: a long run that fails later keeps what it measured
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps({"host": platform.platform(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
