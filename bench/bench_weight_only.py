"""Weight-only int4/int8 (qwen35::linear_wq) vs its peers, in one run: kernel GEMVs and decode through bundles.

Not a test: numbers go to stdout and, with --json, to a file. The machine is shared; read ratios, not absolutes.

    python bench/bench_weight_only.py --kernels                       # 0.8B-shape GEMVs: 4w, 8w vs fp32 aten
    python bench/bench_weight_only.py --bundles out/nano-4w out/nano-8da4w [--json out/bench_wq.json]
    python bench/bench_weight_only.py --export-nano out/bench-nano    # exports nano 4w, 8w, 8da4w, then times them

Kernels: decode (M=1) and prefill (M=128) GEMMs at the 0.8B shapes (hidden 1024, MLP 3584, tied head 248320),
ours eager through torch.ops.qwen35.linear_wq vs torch's fp32 F.linear on the same (dequantized) weights, same
thread count. Bundles: `decode_token` method steps after a 64-token prefill, median over runs, through BundleProgram
(the same runtime every host consumer uses). Ratios are against the first bundle given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

SHAPES_0_8B = {"mlp_up(1024->3584)": (3584, 1024), "mlp_down(3584->1024)": (1024, 3584),
               "lm_head(1024->248320)": (248320, 1024)}


def _time(fn, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_kernels(runs: int, threads: int, prefill_m: int) -> list[dict]:
    import qwen_mobile.runtime  # noqa: F401  loads the library, defines the ops
    from qwen_mobile.export.quantize import quantize_weight

    torch.set_num_threads(threads)
    rows = []
    for name, (N, K) in SHAPES_0_8B.items():
        w = torch.randn(N, K) * 0.02
        for M in (1, prefill_m):
            if name.startswith("lm_head") and M > 1:
                continue  # the head only sees the last position (transforms.last_position_logits)
            x = torch.randn(M, K)
            res = {"shape": name, "M": M, "threads": threads}
            t_fp32 = statistics.median(_time(lambda: torch.nn.functional.linear(x, w), runs))
            res["fp32_aten_ms"] = t_fp32 * 1e3
            for scheme, bits, gs in (("4w", 4, 32), ("8w", 8, K)):
                qw, sc = quantize_weight(w, bits, gs)
                t = statistics.median(_time(lambda: torch.ops.qwen35.linear_wq(x, qw, sc, bits, gs), runs))
                res[f"{scheme}_ms"] = t * 1e3
                res[f"{scheme}_speedup_vs_fp32"] = t_fp32 / t
                res[f"{scheme}_weight_GBps"] = (qw.numel() + sc.numel() * sc.element_size()) / t / 1e9
            rows.append(res)
            print(f"{name:24s} M={M:<4d} fp32 {res['fp32_aten_ms']:8.3f} ms | 4w {res['4w_ms']:8.3f} ms "
                  f"({res['4w_speedup_vs_fp32']:.2f}x, {res['4w_weight_GBps']:.1f} GB/s) | 8w {res['8w_ms']:8.3f} ms "
                  f"({res['8w_speedup_vs_fp32']:.2f}x)", flush=True)
    return rows


def bench_bundle(path: Path, steps: int, runs: int, prompt_len: int) -> dict:
    from qwen_mobile.runtime.contract import DECODE_METHOD
    from qwen_mobile.runtime.program import BundleProgram

    manifest = json.loads((path / "manifest.json").read_text())
    program = BundleProgram(path / "model.pte",
                            max_prefill_tokens=manifest["program"]["methods"]["forward"]["max_tokens"],
                            kernel_namespaces=manifest["program"]["kernel_namespaces"])
    vocab = manifest["program"]["methods"][DECODE_METHOD]["outputs"][0]["shape"][-1]
    prompt = torch.randint(0, vocab, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    step_s, prefill_s = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        logits = program.prefill(prompt, 0)
        prefill_s.append(time.perf_counter() - t0)
        token, pos = int(logits.argmax()), prompt_len
        for _ in range(steps):
            t0 = time.perf_counter()
            token = int(program.decode(token, pos).argmax())
            step_s.append(time.perf_counter() - t0)
            pos += 1
    step_s.sort()
    return {"bundle": str(path), "recipe": manifest["recipe"], "pte_bytes": manifest["files"]["model.pte"]["bytes"],
            "decode_tok_s": 1 / statistics.median(step_s), "decode_tok_s_p10": 1 / step_s[int(0.9 * len(step_s))],
            "decode_tok_s_p90": 1 / step_s[int(0.1 * len(step_s))],
            "prefill_tok_s": prompt_len / statistics.median(prefill_s), "prompt_len": prompt_len, "steps": steps,
            "runs": runs}


def export_nano(out: Path) -> list[Path]:
    from qwen_mobile.export import export

    paths = []
    for preset in ("xnnpack-4w", "xnnpack-8da4w", "xnnpack-8w"):
        path = out / preset
        if not (path / "manifest.json").is_file():
            export("nano", path, preset=preset, force=True, progress=False)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", action="store_true", help="time the 0.8B-shape GEMVs")
    ap.add_argument("--bundles", nargs="*", type=Path, default=[], help="bundle folders; ratios vs the first")
    ap.add_argument("--export-nano", type=Path, help="export nano 4w / 8da4w / 8w here (if missing) and time them")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--prefill-m", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    result = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()},
              "kernels": [], "bundles": []}
    if args.kernels:
        result["kernels"] = bench_kernels(args.runs * 4, args.threads, args.prefill_m)
    bundles = list(args.bundles) + (export_nano(args.export_nano) if args.export_nano else [])
    for path in bundles:
        r = bench_bundle(path, args.steps, args.runs, args.prompt_len)
        base = result["bundles"][0] if result["bundles"] else r
        r["decode_ratio_vs_first"] = r["decode_tok_s"] / base["decode_tok_s"]
        r["size_ratio_vs_first"] = r["pte_bytes"] / base["pte_bytes"]
        result["bundles"].append(r)
        print(f"{r['recipe']['qlinear']:>6s}/{r['recipe']['qembedding']:<4s} {r['pte_bytes'] / 1e6:7.2f} MB  decode "
              f"{r['decode_tok_s']:7.1f} tok/s (p10 {r['decode_tok_s_p10']:.1f}, p90 {r['decode_tok_s_p90']:.1f}) "
              f"x{r['decode_ratio_vs_first']:.2f}  prefill {r['prefill_tok_s']:7.1f} tok/s  size "
              f"x{r['size_ratio_vs_first']:.2f}  tied copies {r['recipe'].get('tied_table_copies')}", flush=True)
    result["host"]["loadavg_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({"loadavg": [result["host"]["loadavg_before"], result["host"]["loadavg_after"]]}))


if __name__ == "__main__":
    main()
