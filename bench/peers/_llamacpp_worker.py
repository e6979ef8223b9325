"""Subprocess side of the llama.cpp peer: `convert`, `quantize`, `run`. Prints one JSON line at the end.

Standalone (stdlib + llama_cpp / the extracted converter) so each step is its own process and its ru_maxrss
is the step's peak RSS. Spawned by llamacpp.py.

    python bench/peers/_llamacpp_worker.py convert --converter-dir D --hf CK --out model-bf16.gguf [--outtype bf16]
    python bench/peers/_llamacpp_worker.py quantize --inp model-bf16.gguf --out model-q4_0.gguf --ftype q4_0
    python bench/peers/_llamacpp_worker.py run --gguf model-q4_0.gguf --prefill 128 512 --decode 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import runpy
import statistics
import sys
import time


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def convert(a) -> dict:
    """Run llama.cpp's convert_hf_to_gguf.py in-process from the extracted (never committed) source folder.

    One runtime patch: the converter names the BPE pre-tokenizer by hashing an encoding of a fixed text and
    refuses unknown hashes. Our toy tokenizer matches no release, so an unknown hash answers "qwen35", the
    value the converter itself gives for Qwen3.5's real tokenizer. Known hashes are untouched.
    """
    import os

    sys.path.insert(0, a.converter_dir)  # the extracted converter's own package `conversion`
    if a.pypi_gguf:
        os.environ["NO_LOCAL_GGUF"] = "1"
    else:  # the converter would add its gguf-py itself, but `conversion` imports gguf before that
        sys.path.insert(1, os.path.join(a.converter_dir, "gguf-py"))
    import conversion.base as base  # noqa: E402

    original = base.TextModel.get_vocab_base_pre
    patched = {"used": False}

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            patched["used"] = True
            return a.tokenizer_pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    # --no-mtp: our text-only checkpoint has no mtp.* tensors and no mtp_num_hidden_layers, and without the flag
    # the Qwen3.5 class asserts (`assert self.opt_num_mtp_layers != 0`). The ExecuTorch exports skip MTP too.
    sys.argv = ["convert_hf_to_gguf.py", a.hf, "--outfile", a.out, "--outtype", a.outtype] + (["--no-mtp"] if a.no_mtp else [])
    t0 = time.perf_counter()
    runpy.run_path(f"{a.converter_dir}/convert_hf_to_gguf.py", run_name="__main__")
    import gguf

    return {"s": time.perf_counter() - t0, "pre_tokenizer_patched": patched["used"],
            "gguf_module": getattr(gguf, "__file__", None), "peak_rss_bytes": _peak()}


FTYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
          "bf16": "LLAMA_FTYPE_MOSTLY_BF16", "f16": "LLAMA_FTYPE_MOSTLY_F16"}


def quantize(a) -> dict:
    import llama_cpp

    llama_cpp.llama_backend_init()
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, FTYPES[a.ftype])
    p.nthread = a.threads
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(a.inp.encode(), a.out.encode(), p)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")
    return {"s": time.perf_counter() - t0, "peak_rss_bytes": _peak()}


def disable_extra_bufts() -> None:
    """Make `Llama(...)` load weights without extra buffer types (no AMX / CPU_REPACK repacking).

    llama.cpp 0.3.36 built -march=native on an AMX host segfaults in the first decode of a Q4_0/Q8_0 model
    whose weights were repacked into the AMX buffer type (fine with bf16, fine with this off). The Llama class
    exposes no switch, so clear `use_extra_bufts` in the defaults it starts from. This also turns off the
    AVX2/AVX512 CPU_REPACK layouts, so Q4_0 prefill here is slower than llama.cpp can be.
    """
    import llama_cpp
    import llama_cpp.llama as llama_mod

    default_params = llama_cpp.llama_model_default_params
    if getattr(default_params, "_no_extra_bufts", False):
        return

    def model_params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    model_params._no_extra_bufts = True
    llama_mod.llama_cpp.llama_model_default_params = model_params


def run(a) -> dict:
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    out: dict = {"extra_bufts": a.extra_bufts}
    if not a.extra_bufts:
        disable_extra_bufts()
    n_ctx = max(a.prefill + [0]) + a.decode + 16
    t0 = time.perf_counter()
    llm = Llama(model_path=a.gguf, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=a.threads,
                n_threads_batch=a.threads, use_mmap=True, verbose=False, logits_all=False)
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load_bytes"] = _peak()
    n_vocab = llm.n_vocab()
    rng = np.random.default_rng(a.seed)
    ctx = llm._ctx.ctx

    def argmax_last() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    llm.reset()
    llm.eval([1, 2, 3, 4])  # warm-up: weight repacking, page faults
    prefill = {}
    for T in a.prefill:
        runs = []
        for _ in range(a.reps):
            toks = rng.integers(0, n_vocab, T).tolist()
            llm.reset()  # clears the KV cache and the recurrent state
            t0 = time.perf_counter()
            llm.eval(toks)
            runs.append(time.perf_counter() - t0)
        prefill[str(T)] = {"s_runs": runs, "tok_s": T / statistics.median(runs)}
    out["prefill"] = prefill
    # Decode continues after the last prefill, greedy on the real logits (argmax is timed, as in the ET worker).
    start = llm.n_tokens
    tok = argmax_last()
    times = []
    for _ in range(a.decode):
        t0 = time.perf_counter()
        llm.eval([tok])
        tok = argmax_last()
        times.append(time.perf_counter() - t0)
    out["decode_step_s"] = times
    out["decode_start_pos"] = start
    out["finite"] = bool(np.isfinite(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))).all())
    out["n_vocab"] = n_vocab
    out["threads"] = a.threads
    out["system_info"] = llama_cpp.llama_print_system_info().decode()
    out["peak_rss_bytes"] = _peak()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--converter-dir", required=True)
    c.add_argument("--hf", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--outtype", default="bf16")
    c.add_argument("--tokenizer-pre", default="qwen35")
    c.add_argument("--keep-mtp", dest="no_mtp", action="store_false", help="convert mtp.* too (needs them present)")
    c.add_argument("--pypi-gguf", action="store_true", help="use the installed gguf package, not the vendored gguf-py")
    q = sub.add_parser("quantize")
    q.add_argument("--inp", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--ftype", default="q4_0", choices=list(FTYPES))
    q.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("--gguf", required=True)
    r.add_argument("--prefill", type=int, nargs="*", default=[128, 512])
    r.add_argument("--decode", type=int, default=64)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--extra-bufts", action="store_true", help="allow repacked weight buffers (AMX / CPU_REPACK)")
    a = ap.parse_args()
    res = {"convert": convert, "quantize": quantize, "run": run}[a.cmd](a)
    sys.stdout.flush()
    print("\n" + json.dumps(res))


if __name__ == "__main__":
    main()
