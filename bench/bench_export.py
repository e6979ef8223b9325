"""Our exporter on a real shape: bundle size, export time and peak RSS, prefill and decode speed, run RSS.

    python bench/bench_export.py --source 0_8b --preset xnnpack-8da4w --json out/export_0_8b_8da4w.json

SOURCE is a preset name (random weights in that shape) or an HF folder. The export runs in a child process (its peak
RSS is the export's own), then the bundle is timed in another child: prefill at each --prompt-lens (one `forward`
call per chunk), then --steps decode steps, median per-token time. Peers (upstream ExecuTorch, llama.cpp) are
measured by bench/peers/ and joined with --peers-json. Host speed says nothing about a phone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

EXPORT_CHILD = r"""
import json, sys, time
from qwen_mobile.export.api import export
t0 = time.perf_counter()
m = export(sys.argv[1], sys.argv[2], preset=sys.argv[3], force=True, progress=False,
           max_seq_len=int(sys.argv[4]), max_prefill_chunk=int(sys.argv[5]), quality_gate=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "manifest_export": m["export"],
                  "verification": m["verification"]}))
"""

RUN_CHILD = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from qwen_mobile.runtime.bundle import load_manifest
from qwen_mobile.runtime.program import BundleProgram
bundle, steps = sys.argv[1], int(sys.argv[2])
lens = [int(x) for x in sys.argv[3].split(",")]
m = load_manifest(bundle)
fwd = m["program"]["methods"]["forward"]
p = BundleProgram(f"{bundle}/model.pte", max_prefill_tokens=fwd["max_tokens"],
                  kernel_namespaces=m["program"]["kernel_namespaces"])
vocab = m["model"]["config"]["vocab_size"]
gen = torch.Generator().manual_seed(0)
p.prefill([1, 2, 3, 4], 0); p.decode(5, 4)  # warm-up: first-call allocations and XNNPACK setup
res = {"prefill_tok_s": {}, "decode_s": []}
for n in lens:
    ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
    t0 = time.perf_counter(); logits = p.prefill(ids, 0); dt = time.perf_counter() - t0
    res["prefill_tok_s"][str(n)] = n / dt
tok, pos = int(logits.argmax()), lens[-1]
for i in range(steps):
    t0 = time.perf_counter(); logits = p.decode(tok, pos + i); res["decode_s"].append(time.perf_counter() - t0)
    tok = int(logits.argmax())
line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
res["run_peak_rss_bytes"] = int(line.split()[1]) * 1024
print(json.dumps(res))
"""


def child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="0_8b")
    ap.add_argument("--preset", default="xnnpack-8da4w")
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--max-prefill-chunk", type=int, default=128)
    ap.add_argument("--prompt-lens", default="128,512")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="where the bundle goes (default: temp, removed)")
    ap.add_argument("--peers-json", type=Path, help="results of bench/peers/run_peers.py to print side by side")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        out = Path(tmp) / "bundle"
        print(f"exporting {args.source} with {args.preset} ...", file=sys.stderr)
        exp = child(EXPORT_CHILD, args.source, str(out), args.preset, str(args.max_seq_len),
                    str(args.max_prefill_chunk))
        size = (out / "model.pte").stat().st_size
        print("timing the bundle ...", file=sys.stderr)
        run = child(RUN_CHILD, str(out), str(args.steps), args.prompt_lens, str(args.threads))
    decode = sorted(run["decode_s"])
    ours = {
        "peer": "qwen-mobile", "variant": args.preset, "size_bytes": size,
        "export_s": exp["seconds"], "export_peak_rss_bytes": exp["manifest_export"]["peak_rss_bytes"],
        "prefill_tok_s": run["prefill_tok_s"], "decode_tok_s": 1 / statistics.median(decode),
        "decode_tok_s_p10": 1 / statistics.quantiles(decode, n=10)[-1],
        "decode_tok_s_p90": 1 / statistics.quantiles(decode, n=10)[0],
        "run_peak_rss_bytes": run["run_peak_rss_bytes"], "threads": args.threads,
        "verification": exp["verification"],
    }
    rows = [ours]
    if args.peers_json and args.peers_json.is_file():
        peers = json.loads(args.peers_json.read_text())
        rows += peers if isinstance(peers, list) else peers.get("results", [])
    lens = args.prompt_lens.split(",")
    print(f"\n{args.source}, {args.threads} threads, host CPU ({platform.processor() or platform.machine()})")
    head = f"{'peer':<22}{'size MB':>9}{'export s':>10}{'export GB':>10}" + "".join(
        f"{'pp' + n:>9}" for n in lens) + f"{'decode':>9}{'run GB':>8}{'decode vs ours':>16}"
    print(head)
    for r in rows:
        pp = r.get("prefill_tok_s") or {}
        print(f"{r['peer'] + ' ' + str(r.get('variant', '')):<22}{(r.get('size_bytes') or 0) / 1e6:>9.0f}"
              f"{r.get('export_s') or 0:>10.0f}{(r.get('export_peak_rss_bytes') or 0) / 1e9:>10.2f}"
              + "".join(f"{pp.get(n, float('nan')):>9.1f}" for n in lens)
              + f"{r.get('decode_tok_s') or float('nan'):>9.2f}{(r.get('run_peak_rss_bytes') or 0) / 1e9:>8.2f}"
              f"{(r.get('decode_tok_s') or float('nan')) / ours['decode_tok_s']:>15.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"bench": "export", "source": args.source, "host": platform.node(),
                                         "cpu_count": os.cpu_count(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
