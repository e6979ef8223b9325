"""Benchmark qwen35::gated_delta_rule (ours) vs upstream llama::gated_delta_rule vs decomposed ATen.

Same process, same inputs, CPU. Not a test: numbers go to stdout and, with --json, to a file.

    python bench/bench_gated_delta.py                      # T in {1, 512}, Hv in {16, 32}, 1 and 2 threads
    python bench/bench_gated_delta.py --json out/bench_gdr.json
    python bench/bench_gated_delta.py --sweep-chunk        # our prefill at several chunk sizes

Contracts being compared (all end-to-end per call, state updated):
  ours      q, k [B,T,Hk,K], v [B,T,Hv,V], log-decay g, raw q/k (l2norm + 1/sqrt(K) inside), Hk < Hv allowed.
  upstream  llama::gated_delta_rule: [B,H,T,D], decay = exp(g), q/k pre-normalised and q pre-scaled, fp32,
            q/k repeat_interleave'd to Hv heads. That preparation is done OUTSIDE the timed region, which
            favours upstream.
  aten      the decomposed chunked form (qwen_mobile.models.gated_delta.chunked_reference if present, else
            transformers' torch_chunk_gated_delta_rule), eager ATen ops, chunk 64.
Threads: torch.set_num_threads(n) and the ExecuTorch thread pool (used by both native ops) reset to n.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch


def _l2n(x):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def _aten_chunked():
    try:
        from qwen_mobile.models.gated_delta import chunked_reference

        def run(q, k, v, g, beta, state):
            out, new_state = chunked_reference(q, k, v, g, beta, state, True)
            state.copy_(new_state)
            return out

        return run, "qwen_mobile.models.gated_delta.chunked_reference"
    except ImportError:
        from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

        def run(q, k, v, g, beta, state):
            out, new_state = torch_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=state,
                                                          output_final_state=True, use_qk_l2norm_in_kernel=True)
            state.copy_(new_state)
            return out

        return run, "transformers torch_chunk_gated_delta_rule"


class _quiet_stderr:
    """Silences C-level stderr (upstream's kernel logs "No temp allocator provided" on every call)."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)


def _batch(fn, iters):
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def _time_interleaved(fns, iters, rounds, min_seconds):
    """Per-call seconds for each candidate: warm-up, then `rounds` rounds that time every candidate once
    in turn (so background load hits all of them alike); reports the best and the median round."""
    with _quiet_stderr():
        for fn in fns.values():
            for _ in range(2):
                fn()
        samples = {name: [] for name in fns}
        start = time.perf_counter()
        r = 0
        while r < rounds or time.perf_counter() - start < min_seconds:
            for name, fn in fns.items():
                samples[name].append(_batch(fn, iters[name]))
            r += 1
            if r >= 4 * rounds:
                break
    return {name: (min(v), statistics.median(v)) for name, v in samples.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[1, 512])
    ap.add_argument("--hv", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--hk", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128, help="K = V")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timing window per configuration")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per configuration (best is reported)")
    ap.add_argument("--no-aten", action="store_true", help="skip the (slow) decomposed ATen row")
    ap.add_argument("--sweep-chunk", action="store_true", help="time our T>1 path at chunk sizes 1(recurrence),16,32,64,128")
    ap.add_argument("--json", metavar="OUT", help="write results as JSON")
    args = ap.parse_args(argv)

    import qwen_mobile.runtime as qrt
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  registers llama::gated_delta_rule
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    aten_run, aten_name = _aten_chunked()
    B, Hk, D = args.batch, args.hk, args.dim
    rows = []
    print(f"# ours: {qrt.library_path()} isa={qrt.isa_name()} chunk={qrt.chunk_size()}")
    print(f"# upstream: torch.ops.llama.gated_delta_rule (executorch wheel); aten: {aten_name}")
    print(f"# {platform.machine()}, {os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.2f}, torch {torch.__version__}, "
          f"B={B}, Hk={Hk}, K=V={D}; best of >= {args.rounds} interleaved rounds")
    hdr = f"{'T':>4} {'Hv':>3} {'thr':>3} | {'ours ms':>9} {'upstream ms':>11} {'aten ms':>9} | {'up/ours':>7} {'aten/ours':>9}"
    print(hdr)
    print("-" * len(hdr))
    for nthreads in args.threads:
        torch.set_num_threads(nthreads)
        _unsafe_reset_threadpool(nthreads)
        for T in args.T:
            for Hv in args.hv:
                gen = torch.Generator().manual_seed(0)
                q = torch.randn(B, T, Hk, D, generator=gen)
                k = torch.randn(B, T, Hk, D, generator=gen)
                v = torch.randn(B, T, Hv, D, generator=gen)
                g = -torch.rand(B, T, Hv, generator=gen)
                beta = torch.rand(B, T, Hv, generator=gen)
                state0 = 0.1 * torch.randn(B, Hv, D, D, generator=gen)
                min_iters = 50 if T == 1 else 2

                s_ours = state0.clone()
                rep = Hv // Hk
                # Upstream contract: [B,H,T,D], q/k normalised (+ q scaled) and repeated, decay = exp(g).
                uq = (_l2n(q) / D**0.5).repeat_interleave(rep, 2).transpose(1, 2).contiguous()
                uk = _l2n(k).repeat_interleave(rep, 2).transpose(1, 2).contiguous()
                uv = v.transpose(1, 2).contiguous()
                udecay = g.exp().transpose(1, 2).contiguous()
                ubeta = beta.transpose(1, 2).contiguous()
                s_up = state0.clone()
                s_aten = state0.clone()

                def upstream():
                    out, new_state = torch.ops.llama.gated_delta_rule(uq, uk, uv, udecay, ubeta, s_up)
                    s_up.copy_(new_state)
                    return out

                fns = {"ours": lambda: torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, s_ours), "upstream": upstream}
                iters = {"ours": 50 if T == 1 else 2, "upstream": 50 if T == 1 else 2}
                if not args.no_aten:
                    fns["aten"] = lambda: aten_run(q, k, v, g, beta, s_aten)
                    iters["aten"] = 5 if T == 1 else 1
                res = _time_interleaved(fns, iters, args.rounds, args.seconds)
                t_ours, t_up = res["ours"][0], res["upstream"][0]
                t_aten = res["aten"][0] if "aten" in res else None
                medians = {name: v[1] * 1e3 for name, v in res.items()}

                row = dict(T=T, Hv=Hv, Hk=Hk, K=D, V=D, B=B, threads=nthreads, et_pool_threads=_threadpool_get_thread_count(),
                           ours_ms=t_ours * 1e3, upstream_ms=t_up * 1e3, aten_ms=None if t_aten is None else t_aten * 1e3,
                           speedup_vs_upstream=t_up / t_ours,
                           speedup_vs_aten=None if t_aten is None else t_aten / t_ours,
                           median_ms=medians, load_avg_1min=os.getloadavg()[0])
                rows.append(row)
                aten_s = f"{row['aten_ms']:9.3f}" if t_aten is not None else f"{'-':>9}"
                aten_r = f"{row['speedup_vs_aten']:8.1f}x" if t_aten is not None else f"{'-':>9}"
                print(f"{T:>4} {Hv:>3} {nthreads:>3} | {row['ours_ms']:9.3f} {row['upstream_ms']:11.3f} {aten_s} | "
                      f"{row['speedup_vs_upstream']:6.2f}x {aten_r}", flush=True)

    sweep = []
    if args.sweep_chunk:
        torch.set_num_threads(1)
        _unsafe_reset_threadpool(1)
        print("\n# chunk-size sweep (ours, 1 thread, T=512)")
        for Hv in args.hv:
            gen = torch.Generator().manual_seed(0)
            T = 512
            q, k = torch.randn(B, T, Hk, D, generator=gen), torch.randn(B, T, Hk, D, generator=gen)
            v, g = torch.randn(B, T, Hv, D, generator=gen), -torch.rand(B, T, Hv, generator=gen)
            beta, s = torch.rand(B, T, Hv, generator=gen), torch.zeros(B, Hv, D, D)
            for c in (1, 16, 32, 64, 128):
                qrt.set_chunk_size(c)
                t = _time_interleaved({"ours": lambda: torch.ops.qwen35.gated_delta_rule(q, k, v, g, beta, s)},
                                      {"ours": 2}, args.rounds, args.seconds)["ours"][0]
                sweep.append(dict(Hv=Hv, chunk=c, ms=t * 1e3))
                print(f"Hv={Hv:>3} chunk={c:>4}{' (recurrence)' if c == 1 else '':13} {t * 1e3:9.3f} ms", flush=True)
            qrt.set_chunk_size(0)

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(machine=platform.machine(), torch=torch.__version__, isa=qrt.isa_name(),
                           chunk=qrt.chunk_size(), aten_impl=aten_name, argv=sys.argv[1:], rows=rows,
                           chunk_sweep=sweep), f, indent=2)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
