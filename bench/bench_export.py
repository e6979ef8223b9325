"""Our exporter on a real shape, side by side with its peers in one run: bundle size, export time and peak RSS,
prefill and decode speed, run RSS; ratios, the issue's goals checked, JSON.

    python bench/bench_export.py --source /tmp/qwen35_rand_0_8b --presets xnnpack-8da4w xnnpack-8da4w:twice \
        xnnpack-4w --peers upstream_executorch llamacpp --et-variants fp32 8da4w_emb4 --json out/export_0_8b.json

SOURCE is a preset name (random weights in that shape) or an HF folder; give the peers' checkpoint folder
(`python -m bench.peers.random_checkpoint --preset 0_8b`) so that every row runs the same weights. A preset entry
`NAME:twice` exports NAME with `--tied-table twice`. Each export runs in a child process (its peak RSS is the
export's own) and each bundle is timed in another child: prefill at each --prompt-lens from position 0 (one
`forward` call per chunk), then --steps decode steps, median per-token time. With --native, the bundle is also run
by our C++ runner (qwen-bench, no Python in the process), whose peak RSS is the model's own. --peers runs
bench/peers/ (upstream ExecuTorch, llama.cpp) in the same invocation, after our rows. --reuse keeps bundles in
--workdir and times them again without re-exporting (their export figures come from the manifest).
Host speed says nothing about a phone.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: bench.peers
from bench.peers.common import load_note  # noqa: E402

EXPORT_CHILD = r"""
import json, sys
from qwen_mobile.export import export
export(sys.argv[1], sys.argv[2], preset=sys.argv[3], force=True, progress=False, max_seq_len=int(sys.argv[4]),
       max_prefill_chunk=int(sys.argv[5]), quality_gate=False, tied_table=sys.argv[6])
print(json.dumps({"bundle": sys.argv[2]}))  # figures are read from the bundle's manifest
"""

RUN_CHILD = r"""
import json, statistics, sys, time, torch
from executorch.extension.pybindings import portable_lib
torch.set_num_threads(int(sys.argv[4]))
# The bundle's kernels run on ExecuTorch's thread pool (one thread per core by default), which torch's setting does
# not reach: without this, --threads 1 still ran 2 threads on this host.
portable_lib._unsafe_reset_threadpool(int(sys.argv[4]))
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
res["executorch_threads"] = portable_lib._threadpool_get_thread_count()
print(json.dumps(res))
"""


def child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


GOALS_DOC = "issue 4: 8da4w on the 0.8B shape"


def export_row(source: str, entry: str, args, workdir: Path) -> tuple[dict, Path]:
    """Export one preset entry (or reuse its bundle) -> (row, bundle folder)."""
    preset, _, tied = entry.partition(":")
    tied = tied or "once"
    out = workdir / entry.replace(":", "-")
    if args.reuse and (out / "manifest.json").is_file():
        print(f"reusing {out} (export figures from its manifest)", file=sys.stderr)
    else:
        print(f"exporting {source} with {entry} ...", file=sys.stderr)
        child(EXPORT_CHILD, source, str(out), preset, str(args.max_seq_len), str(args.max_prefill_chunk), tied)
    m = json.loads((out / "manifest.json").read_text())  # the export's own record: time, peak RSS, stages, gate
    row = {
        "peer": "qwen_mobile", "variant": entry, "artifact": str(out), "size_bytes": (out / "model.pte").stat().st_size,
        "export_s": m["export"]["seconds"], "export_peak_rss_bytes": m["export"]["peak_rss_bytes"],
        # The forked XNNPACK worker's own peak (export/lowering_shortcuts/parallel_preprocess.py) and the pair's
        # sampled PSS peak.
        "export_worker_peak_rss_bytes": m["export"].get("worker_peak_rss_bytes", 0),
        "export_peak_memory_bytes": m["export"].get("peak_memory_bytes"),
        "export_steps": {"stages": m["export"].get("stage_seconds")},
        "tied_table_copies": m["recipe"].get("tied_table_copies"), "head": m["recipe"].get("head"),
        "verification": m["verification"], "notes": [], "prefill_mode": "batched",
    }
    return row, out


def time_row(row: dict, out: Path, args) -> None:
    print(f"timing {row['variant']} ...", file=sys.stderr)
    row["notes"].append(load_note("before run"))
    run = child(RUN_CHILD, str(out), str(args.steps), args.prompt_lens, str(args.threads))
    row["notes"].append(load_note("after run"))
    decode = sorted(run["decode_s"])
    row.update({
        "prefill_tok_s": run["prefill_tok_s"], "decode_tok_s": 1 / statistics.median(decode),
        "decode_tok_s_p10": 1 / statistics.quantiles(decode, n=10)[-1],
        "decode_tok_s_p90": 1 / statistics.quantiles(decode, n=10)[0], "decode_steps": len(decode),
        "run_peak_rss_bytes": run["run_peak_rss_bytes"], "threads": args.threads,
        "executorch_threads": run.get("executorch_threads"),
    })
    if args.native:
        row["native"] = native_run(out, args)


RUN_FIGURES = ("prefill_tok_s", "decode_tok_s", "decode_tok_s_p10", "decode_tok_s_p90", "run_peak_rss_bytes")


def retime_in_rounds(rows: list[dict], args) -> None:
    """Rounds 2..N of the run figures, interleaved across rows; each row's headline figures become the rounds' median
    (RSS: the maximum), and every round is kept in row["rounds"]."""
    from bench.peers import llamacpp, upstream_executorch
    from bench.peers.common import PeerResult

    lens = tuple(int(n) for n in args.prompt_lens.split(","))
    config = Path(args.source) / "config.json"
    vocab = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    for row in rows:
        row["rounds"] = [{k: row.get(k) for k in RUN_FIGURES}]
        if row.get("native"):
            row["native"]["rounds"] = [{k: v for k, v in row["native"].items() if k != "command"}]
    timed = [row for row in rows if not row.get("error")]
    for round_index in range(1, args.rounds):
        order = timed[round_index % len(timed):] + timed[:round_index % len(timed)]
        for row in order:
            print(f"round {round_index + 1}/{args.rounds}: timing {row['peer']}:{row['variant']} ...", file=sys.stderr)
            if row["peer"] == "qwen_mobile":
                again = {"variant": row["variant"], "notes": []}
                time_row(again, Path(row["artifact"]), args)
                if again.get("native"):
                    row["native"].setdefault("rounds", []).append(again["native"])
            else:
                fields = {k: v for k, v in row.items() if k != "rounds"}
                peer = PeerResult(**{**fields, "notes": [], "commands": []})
                if row["peer"] == "llama_cpp":
                    again = llamacpp.run(peer, prefill=lens, decode_steps=64, threads=args.threads).to_dict()
                else:
                    again = upstream_executorch.run(peer, prefill=lens, decode_steps=args.steps,
                                                    threads=args.threads, vocab=vocab).to_dict()
            row["rounds"].append({k: again.get(k) for k in RUN_FIGURES} | {"error": again.get("error")})
    for row in timed:
        good = [r for r in row["rounds"] if not r.get("error") and r.get("decode_tok_s")]
        for key in ("decode_tok_s", "decode_tok_s_p10", "decode_tok_s_p90"):
            row[key] = statistics.median(r[key] for r in good)
        row["prefill_tok_s"] = {n: statistics.median(r["prefill_tok_s"][n] for r in good) for n in good[0]["prefill_tok_s"]}
        row["run_peak_rss_bytes"] = max(r["run_peak_rss_bytes"] for r in good)
        row.setdefault("notes", []).append(f"run figures: median of {len(good)} interleaved rounds (RSS: maximum)")
        native = row.get("native") or {}
        nat_good = [r for r in native.get("rounds", []) if not r.get("error") and r.get("decode_tok_s")]
        if nat_good:  # qwen-bench ran right after the Python run of the same bundle in every round
            for key in ("prefill_tok_s", "decode_tok_s"):
                native[key] = statistics.median(r[key] for r in nat_good)
            native["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in nat_good)
            native["note"] = f"median of {len(nat_good)} interleaved rounds (RSS: maximum)"


def native_run(out: Path, args) -> dict:
    """qwen-bench on the bundle: the same methods from C++, so its peak RSS has no Python or torch in it."""
    with tempfile.TemporaryDirectory() as tmp:
        js = Path(tmp) / "bench.json"
        lens = args.prompt_lens.split(",")
        cmd = [str(args.native), "--bundle", str(out), "--prompt-len", lens[-1], "--gen", str(args.steps),
               "--threads", str(args.threads), "--warmup", "1", "--runs", "1", "--no-power", "--json", str(js)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            return {"error": proc.stderr[-2000:], "command": cmd}
        res = json.loads(js.read_text())
    result = res["results"][0]
    return {"command": cmd, "peak_rss_bytes": res["memory"]["peak_rss_bytes"],
            "load_rss_bytes": res["memory"].get("load_rss_bytes"),
            "prefill_tok_s": result["prefill_tok_s"]["median"],
            "decode_tok_s": (result["decode_tok_s"] or {}).get("median")}


def peer_label(row: dict) -> str:
    """`peer:variant`, with the peer's run configuration when it has one (llama.cpp: its weight buffer types)."""
    from bench.peers.llamacpp import config_label

    label = f"{row['peer']}:{row['variant']}"
    return label + (f" [{config_label(row['config'])}]" if row.get("config") else "")


def peer_ratios(rows: list[dict], prefill_len: str) -> list[dict]:
    """Decode and prefill of our main bundle, from Python and from qwen-bench (C++), over each peer measured in this
    run. qwen-bench's prefill is its `--prompt-len` = the last --prompt-lens entry."""
    ours = rows[0]
    nat = ours.get("native") or {}
    runtimes = [("python", ours.get("decode_tok_s"), (ours.get("prefill_tok_s") or {}).get(prefill_len))]
    if nat.get("decode_tok_s"):
        runtimes.insert(0, ("qwen-bench", nat["decode_tok_s"], nat.get("prefill_tok_s")))
    out = []
    for peer in rows[1:]:
        if peer.get("error") or peer["peer"] == "qwen_mobile":
            continue
        for runtime, decode, prefill in runtimes:
            for metric, mine, theirs in (("decode tok/s", decode, peer.get("decode_tok_s")),
                                         (f"pp{prefill_len} tok/s", prefill,
                                          (peer.get("prefill_tok_s") or {}).get(prefill_len))):
                if mine and theirs:
                    out.append({"metric": metric, "ours": f"qwen_mobile:{ours['variant']} ({runtime})",
                                "ours_value": mine, "peer": peer_label(peer), "peer_value": theirs,
                                "peer_config": peer.get("config") or None, "ratio": mine / theirs})
    return out


def check_goals(rows: list[dict], main_variant: str) -> list[tuple[str, bool | None, str]]:
    """The issue's goals for 8da4w on the 0.8B shape, each against the rows measured in this run."""
    # The export's peak use with the forked worker counted once (PSS, sampled; export/api.py `_memory_record`);
    # the RSS sum, which counts the pages the two share after fork twice, is printed beside it as an upper bound.
    export_peak = lambda r: r.get("export_peak_memory_bytes") or r["export_peak_rss_bytes"]  # noqa: E731
    rss_sum = lambda r: r["export_peak_rss_bytes"] + r.get("export_worker_peak_rss_bytes", 0)  # noqa: E731
    by = {f"{r['peer']}:{r['variant']}": r for r in rows if not r.get("error")}
    ours = by.get(f"qwen_mobile:{main_variant}")
    if ours is None:
        return []
    up, lc = by.get("upstream_executorch:8da4w_emb4"), by.get("llama_cpp:q4_0")
    goals = [("size <= 520 MB", ours["size_bytes"] <= 520e6, f"{ours['size_bytes'] / 1e6:.0f} MB"),
             ("export < 5 min", ours["export_s"] < 300, f"{ours['export_s']:.0f} s"),
             ("export peak memory <= 6 GB (exporter + forked worker, PSS sampled)", export_peak(ours) <= 6e9,
              f"{export_peak(ours) / 1e9:.2f} GB (RSS sum, an upper bound: {rss_sum(ours) / 1e9:.2f} GB)"),
             ("run peak RSS <= 1.0 GB (Python process)", ours["run_peak_rss_bytes"] <= 1e9,
              f"{ours['run_peak_rss_bytes'] / 1e9:.2f} GB")]
    peers_decode = [r for r in (up, lc) if r and r.get("decode_tok_s")]
    if peers_decode:
        best = max(peers_decode, key=lambda r: r["decode_tok_s"])
        goals.append(("decode >= max(upstream 8da4w, llama.cpp Q4_0) (Python)",
                      ours["decode_tok_s"] >= best["decode_tok_s"],
                      f"{ours['decode_tok_s']:.2f} vs {best['decode_tok_s']:.2f} tok/s of {peer_label(best)}"))
    if lc and (lc.get("prefill_tok_s") or {}).get("512"):
        got = ours["prefill_tok_s"].get("512")
        goals.append(("prefill >= llama.cpp pp512 (Python)", got is not None and got >= lc["prefill_tok_s"]["512"],
                      f"{got or float('nan'):.1f} vs {lc['prefill_tok_s']['512']:.1f} tok/s of {peer_label(lc)}"))
    return goals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="0_8b", help="preset name (random weights) or HF folder")
    ap.add_argument("--presets", nargs="+", default=["xnnpack-8da4w"],
                    help="export presets to measure; NAME:twice = with --tied-table twice (default: %(default)s)")
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--max-prefill-chunk", type=int, default=128)
    ap.add_argument("--prompt-lens", default="128,512")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="keep the bundles here (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="time bundles already in --workdir instead of re-exporting")
    ap.add_argument("--native", type=Path, help="qwen-bench binary: also run each bundle from C++ (peak RSS without "
                                                "Python)")
    ap.add_argument("--peers", nargs="*", default=[], choices=["upstream_executorch", "llamacpp"],
                    help="run these peers in this invocation, after our rows (bench/peers/)")
    ap.add_argument("--et-variants", nargs="+", default=["8da4w_emb4"], choices=["fp32", "8da4w_emb4"])
    ap.add_argument("--lc-ftypes", nargs="+", default=["q4_0"])
    ap.add_argument("--peers-json", type=Path, help="earlier bench/peers results to print alongside (not same-run)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every artifact this many times, interleaved (each round starts at the next row), and "
                         "report the median of the rounds: this host's speed drifts within minutes, so one pass can "
                         "favour whichever artifact ran in a fast phase (default: %(default)s)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.reuse and not args.workdir:
        ap.error("--reuse needs --workdir")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        bundles = [export_row(args.source, entry, args, workdir) for entry in args.presets]
        for row, out in bundles:  # every export first, then every run: the runs sit close together in time
            time_row(row, out, args)
            rows.append(row)
    if args.peers:
        from bench.peers.run_peers import run_peers

        if not Path(args.source).is_dir():
            print("note: --peers with a preset SOURCE: the peers use /tmp/qwen35_rand_<preset>, other weights",
                  file=sys.stderr)
        ckpt = Path(args.source) if Path(args.source).is_dir() else Path(f"/tmp/qwen35_rand_{args.source}")
        lens = tuple(int(n) for n in args.prompt_lens.split(","))
        for r in run_peers(ckpt, peers=args.peers, et_variants=args.et_variants, lc_ftypes=args.lc_ftypes,
                           prefill=lens, et_decode=args.steps, threads=args.threads):
            rows.append(r.to_dict())
    if args.rounds > 1:
        retime_in_rounds(rows, args)
    if args.peers_json and args.peers_json.is_file():
        earlier = json.loads(args.peers_json.read_text())
        for r in earlier if isinstance(earlier, list) else earlier.get("results", []):
            rows.append(dict(r, variant=f"{r.get('variant')} (earlier run)"))

    lens = args.prompt_lens.split(",")
    ours = rows[0]
    print(f"\n{args.source}, {args.threads} threads, host CPU ({platform.processor() or platform.machine()}); "
          f"ratios are row / qwen_mobile:{ours['variant']}")
    head = (f"{'peer:variant':<34}{'size MB':>9}{'export s':>10}{'export GB':>10}"
            + "".join(f"{'pp' + n:>9}" for n in lens)
            + f"{'decode':>9}{'run GB':>8}{'native GB':>10}{'decode x':>10}{'pp' + lens[-1] + ' x':>9}")
    print(head)
    for r in rows:
        if r.get("error"):
            print(f"{r['peer'] + ':' + str(r['variant']):<34} ERROR {r['error'][-300:]}")
            continue
        pp = r.get("prefill_tok_s") or {}
        nat = (r.get("native") or {}).get("peak_rss_bytes")
        print(f"{r['peer'] + ':' + str(r['variant']):<34}{(r.get('size_bytes') or 0) / 1e6:>9.0f}"
              f"{r.get('export_s') or 0:>10.0f}"
              f"{(r.get('export_peak_memory_bytes') or r.get('export_peak_rss_bytes') or 0) / 1e9:>10.2f}"
              + "".join(f"{pp.get(n, float('nan')):>9.1f}" for n in lens)
              + f"{r.get('decode_tok_s') or float('nan'):>9.2f}{(r.get('run_peak_rss_bytes') or 0) / 1e9:>8.2f}"
              + (f"{nat / 1e9:>10.2f}" if nat else f"{'-':>10}")
              + f"{(r.get('decode_tok_s') or float('nan')) / ours['decode_tok_s']:>9.2f}x"
              + f"{pp.get(lens[-1], float('nan')) / ours['prefill_tok_s'].get(lens[-1], float('nan')):>8.2f}x")
    nat = ours.get("native") or {}
    if nat.get("decode_tok_s"):
        print(f"{'  same bundle, qwen-bench (C++)':<34}{'':>9}{'':>10}{'':>10}"
              + "".join(f"{nat.get('prefill_tok_s') if n == lens[-1] else float('nan'):>9.1f}" for n in lens)
              + f"{nat['decode_tok_s']:>9.2f}{'':>8}{(nat.get('peak_rss_bytes') or 0) / 1e9:>10.2f}")
    for r in rows:
        if r.get("config"):
            print(f"{r['peer']}:{r['variant']} ran with {peer_label(r).split(' [', 1)[1][:-1]}: "
                  f"{r['config'].get('meaning')}; {r['config'].get('why')}")
    ratios = peer_ratios(rows, lens[-1])
    if ratios:
        print("\nratios (ours / peer; the peer's configuration in brackets):")
        for q in ratios:
            print(f"  {q['metric']:<13} {q['ours']:<36} {q['ours_value']:>7.2f} / {q['peer_value']:>7.2f} "
                  f"{q['peer']}  = {q['ratio']:.2f}x")
    goals = check_goals(rows, ours["variant"])
    if goals:
        print(f"\ngoals ({GOALS_DOC}), for qwen_mobile:{ours['variant']}:")
        for name, ok, detail in goals:
            print(f"  {'MET ' if ok else 'MISS'}  {name:<48} {detail}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"bench": "export", "source": args.source, "host": platform.node(),
                                         "cpu_count": os.cpu_count(), "load_average_end": os.getloadavg(),
                                         "command": sys.argv, "results": rows, "ratios": ratios,
                                         "goals": [{"goal": g, "met": ok, "measured": d} for g, ok, d in goals]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
