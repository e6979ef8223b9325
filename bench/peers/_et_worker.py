"""Run one ExecuTorch LLM .pte on the host and print a JSON line: load time, prefill and decode speed, peak RSS.

Standalone on purpose (stdlib, torch, executorch only) so it runs as its own process and its ru_maxrss is the
run's peak RSS. Spawned by upstream_executorch.py; usable by hand:

    python bench/peers/_et_worker.py model.pte --prefill 128 512 --decode 32 --threads 2

Upstream's llama-style export takes (tokens [1, T], input_pos [1]). Its Qwen3.5 export is static T=1, so
prefill feeds the prompt one token per forward ("token_by_token"); with --batched-prefill the worker sends the
whole prompt in one call (only for dynamic-shape exports). Each prefill length starts from position 0 of a
fresh state (upstream zeroes the GDN state at input_pos == 0; the KV cache is overwritten position by position).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pte")
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=None, help="token ids drawn from [0, vocab)")
    ap.add_argument("--batched-prefill", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from executorch.extension.pybindings import portable_lib  # noqa: F401  (before custom_ops, as upstream's runner)
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  registers llama::sdpa_with_kv_cache etc.
    from executorch.kernels import quantized  # noqa: F401  quantized_decomposed::embedding_4bit etc. (8da4w + emb4)

    portable_lib._unsafe_reset_threadpool(a.threads)
    out: dict = {"threads": portable_lib._threadpool_get_thread_count()}
    t0 = time.perf_counter()
    m = portable_lib._load_for_executorch(a.pte)
    out["load_s"] = time.perf_counter() - t0
    meta = m.method_meta("forward")
    out["inputs"] = [str(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
    out["rss_after_load_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    g = torch.Generator().manual_seed(a.seed)
    vocab = a.vocab or 1000
    pos = torch.zeros(1, dtype=torch.long)

    def step(tok: torch.Tensor, p: int):
        pos[0] = p
        return m.forward((tok, pos))[0]

    # Warm-up: first forward pays for XNNPACK weight packing / page faults.
    t0 = time.perf_counter()
    step(torch.tensor([[1]], dtype=torch.long), 0)
    out["first_forward_s"] = time.perf_counter() - t0

    prefill = {}
    logits = None
    for T in a.prefill:
        prompt = torch.randint(0, vocab, (1, T), generator=g, dtype=torch.long)
        t0 = time.perf_counter()
        if a.batched_prefill:
            pos[0] = 0
            logits = m.forward((prompt, pos))[0]
        else:
            for i in range(T):
                logits = step(prompt[:, i : i + 1].contiguous(), i)
        dt = time.perf_counter() - t0
        prefill[str(T)] = {"s": dt, "tok_s": T / dt}
    out["prefill"] = prefill
    out["prefill_mode"] = "batched" if a.batched_prefill else "token_by_token"
    out["logits_shape"] = list(logits.shape) if logits is not None else None

    # Decode continues after the last prefill, greedy on the real logits.
    start = max(a.prefill) if a.prefill else 0
    tok = torch.tensor([[int(logits.reshape(-1, logits.shape[-1])[-1].argmax()) if logits is not None else 1]], dtype=torch.long)
    times = []
    for i in range(a.decode):
        t0 = time.perf_counter()
        logits = step(tok, start + i)
        tok = torch.tensor([[int(logits.reshape(-1, logits.shape[-1])[-1].argmax())]], dtype=torch.long)
        times.append(time.perf_counter() - t0)
    out["decode_step_s"] = times
    out["decode_start_pos"] = start
    out["finite"] = bool(torch.isfinite(logits).all()) if logits is not None else None
    if times:
        out["decode_median_s"] = statistics.median(times)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sys.stdout.flush()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
