"""The tied lm_head GEMV at the 0.8B shape, three ways in one run: linear_wq (fp32 activations) vs linear_wq_a8 (int8
activations per group, integer dot products) vs torch's fp32 F.linear over the same table dequantized.

Not a test: numbers go to stdout and, with --json, to a file. The machine is shared; read ratios, not absolutes, and
never as phone numbers (this is the x86 host).

    python bench/bench_head.py --threads 2 --json out/bench_head.json

Shape: M=1 (decode), N=248,320 (vocab), K=1,024 (hidden), int4 codes in [-7, 7] with fp16 scales per group of 32,
the layout export/quantize.py writes for `xnnpack-8da4w` with the table stored once. The three variants are timed
round-robin (one call of each per round) so drifting load hits them alike; the median, p10 and p90 of each are
reported with ratios against linear_wq.
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


def table(N: int, K: int, bits: int, group_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes over the quantizer's range and fp16 scales like a real 0.8B table's (max|w| ~ 0.1 per group)."""
    gen = torch.Generator().manual_seed(seed)
    qmax = 7 if bits == 4 else 127
    codes = torch.randint(-qmax, qmax + 1, (N, K), generator=gen, dtype=torch.int16)  # [N, K]
    if bits == 4:
        u = (codes + 8).to(torch.uint8)
        qweight = u[:, 0::2] | (u[:, 1::2] << 4)  # [N, K/2]
    else:
        qweight = codes.to(torch.int8)
    scales = (torch.rand(N, K // group_size, generator=gen) * 0.01 + 0.005).to(torch.float16)  # [N, G]
    return qweight, scales


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    if bits == 4:
        b = qweight.to(torch.int16)
        codes = torch.stack([(b & 0xF) - 8, (b >> 4) - 8], dim=-1).reshape(qweight.shape[0], -1)  # [N, K]
    else:
        codes = qweight.to(torch.int16)
    return codes.float() * scales.float().repeat_interleave(group_size, dim=1)  # [N, K] fp32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed rounds (one call of each variant per round)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--N", type=int, default=248320)
    ap.add_argument("--K", type=int, default=1024)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--bits", type=int, default=4, choices=(4, 8))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import qwen_mobile.runtime  # noqa: F401  loads the native library, defines the qwen35 ops
    from qwen_mobile.runtime import ops

    torch.set_num_threads(args.threads)
    N, K, gs, bits = args.N, args.K, args.group_size, args.bits
    qweight, scales = table(N, K, bits, gs)
    w = dequantize(qweight, scales, bits, gs)  # 1 GB at the 0.8B shape: the fp32 peer's weights
    x = torch.randn(1, K, generator=torch.Generator().manual_seed(1))
    variants = {
        "linear_wq": lambda: torch.ops.qwen35.linear_wq(x, qweight, scales, bits, gs),
        "linear_wq_a8": lambda: torch.ops.qwen35.linear_wq_a8(x, qweight, scales, bits, gs),
        "fp32_aten": lambda: torch.nn.functional.linear(x, w),
    }
    with torch.no_grad():
        ref = variants["fp32_aten"]()
        rel_err = {name: float((fn() - ref).norm() / ref.norm()) for name, fn in variants.items()}
        load_before = os.getloadavg()
        for _ in range(args.warmup):
            for fn in variants.values():
                fn()
        times = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        load_after = os.getloadavg()

    packed = qweight.numel() + scales.numel() * 2
    weight_bytes = {"linear_wq": packed, "linear_wq_a8": packed, "fp32_aten": w.numel() * 4}
    rows = {}
    for name, ts in times.items():
        ts = sorted(ts)
        med = statistics.median(ts)
        rows[name] = {"median_ms": med * 1e3, "p10_ms": ts[int(0.1 * len(ts))] * 1e3,
                      "p90_ms": ts[min(len(ts) - 1, int(0.9 * len(ts)))] * 1e3,
                      "weight_GBps": weight_bytes[name] / med / 1e9, "rel_err_vs_fp32_aten": rel_err[name]}
    base = rows["linear_wq"]["median_ms"]
    for name, r in rows.items():
        r["speedup_vs_linear_wq"] = base / r["median_ms"]
        print(f"{name:13s} {r['median_ms']:8.2f} ms (p10 {r['p10_ms']:.2f}, p90 {r['p90_ms']:.2f})  "
              f"{r['weight_GBps']:5.1f} GB/s of weights  x{r['speedup_vs_linear_wq']:.2f} vs linear_wq  "
              f"rel. err vs fp32 {r['rel_err_vs_fp32_aten']:.2e}", flush=True)
    print(f"linear_wq_a8 / linear_wq speedup {rows['linear_wq_a8']['speedup_vs_linear_wq']:.2f}x; "
          f"linear_wq_a8 / fp32 aten {rows['fp32_aten']['median_ms'] / rows['linear_wq_a8']['median_ms']:.2f}x; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    result = {"benchmark": "bench_head", "emulated": False, "note": "x86 host, shared machine; not a phone number",
              "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "isa": ops.isa_name(),
                       "loadavg_before": load_before, "loadavg_after": load_after},
              "shape": {"M": 1, "N": N, "K": K, "group_size": gs, "bits": bits, "scales": "float16"},
              "threads": args.threads, "runs": args.runs, "warmup": args.warmup, "variants": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
