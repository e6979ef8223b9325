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


# Which weight buffer types llama.cpp may use (`--bufts`). Its default (use_extra_bufts=True) offers the CPU backend's
# extra buffer types in order: AMX (when built with AMX, i.e. -march=native on an AMX host), then CPU_REPACK (the
# AVX2/AVX512/NEON interleaved layouts), and each weight goes to the first one that takes it.
BUFTS = ("default", "no_amx", "none")


def _model_params_with(**fields):
    """Make `Llama(...)` start from llama_model_default_params() with `fields` set: the Llama class exposes neither
    use_extra_bufts nor tensor_buft_overrides, and it builds its params from that function."""
    import llama_cpp
    import llama_cpp.llama as llama_mod

    default_params = llama_cpp.llama_model_default_params

    def model_params():
        p = default_params()
        for k, v in fields.items():
            setattr(p, k, v)
        return p

    llama_mod.llama_cpp.llama_model_default_params = model_params


def cpu_extra_buft(name: str):
    """The CPU device's extra buffer type called `name` (e.g. "CPU_REPACK"), through ggml's registry; None if absent."""
    import ctypes

    from llama_cpp._ggml import libggml as g

    g.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    g.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    g.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    g.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    g.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    g.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    g.ggml_backend_buft_name.restype = ctypes.c_char_p
    g.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    dev = g.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    fn = g.ggml_backend_reg_get_proc_address(g.ggml_backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts")
    if not fn:
        return None
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn)
    arr = get_extra(dev)
    i = 0
    while arr and arr[i]:
        if g.ggml_backend_buft_name(arr[i]).decode() == name:
            return arr[i]
        i += 1
    return None


def repack_targets(gguf_path: str) -> list[str]:
    """Weights llama.cpp's own selection would put in CPU_REPACK on an AVX2 x86 host when AMX is not offered.

    ggml-cpu/repack.cpp 0.3.36 (`ggml_repack_get_optimal_repack_type`) interleaves Q4_0, Q4_K and IQ4_NL matrices 8x8
    on AVX2 when their row count (ne[1]) is a multiple of 8 (its Q5_K/Q6_K layouts are NEON-only), and CPU_REPACK
    takes only weights whose op is MUL_MAT (llama-arch.cpp): every 2-D blk.* matrix of qwen35, not token_embd
    (GET_ROWS; a Q6_K tied head in our Q4_0 GGUF anyway). On the 0.8B shape these are 186 Q4_0 matrices. A wrong pick
    cannot pass silently: a tensor CPU_REPACK has no layout for crashes the load.
    """
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    names = []
    for t in GGUFReader(gguf_path).tensors:
        ne = [int(x) for x in t.shape]  # ggml order: ne[0] = row length
        if (t.tensor_type in (Q.Q4_0, Q.Q4_K, Q.IQ4_NL) and len(ne) == 2 and ne[1] % 8 == 0
                and t.name != "token_embd.weight"):
            names.append(t.name)
    return names


def configure_bufts(bufts: str, gguf_path: str) -> dict:
    """Set up the weight buffer types for the next `Llama(...)`; returns what was asked for (kept alive by the caller).

    default: llama.cpp as its users run it (use_extra_bufts=True).
    no_amx:  CPU_REPACK without AMX. ggml has no switch for AMX alone (it is compiled in with -march=native and
             offered first), so extra buffer types are turned off and every weight CPU_REPACK would take is sent
             there by a tensor_buft_override, the mechanism behind llama.cpp's `--override-tensor NAME=CPU_REPACK`.
    none:    use_extra_bufts=False: plain Q4_0 rows, no AMX, no CPU_REPACK.
    """
    import ctypes

    if bufts == "default":
        return {}
    if bufts == "none":
        _model_params_with(use_extra_bufts=False)
        return {}
    buft = cpu_extra_buft("CPU_REPACK")
    if buft is None:
        raise SystemExit("--bufts no_amx: this llama.cpp build has no CPU_REPACK buffer type")
    names = repack_targets(gguf_path)
    if not names:
        raise SystemExit(f"--bufts no_amx: no weight of {gguf_path} has a CPU_REPACK layout on this host")

    class Override(ctypes.Structure):  # struct llama_model_tensor_buft_override
        _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

    patterns = [("^" + n.replace(".", r"\.") + "$").encode() for n in names]
    table = (Override * (len(patterns) + 1))(*[Override(p, buft) for p in patterns], Override(None, None))
    _model_params_with(use_extra_bufts=False, tensor_buft_overrides=ctypes.cast(table, ctypes.c_void_p).value)
    return {"table": table, "patterns": patterns, "n_overridden": len(names)}


def capture_llama_log() -> list[str]:
    """Route llama.cpp's log into a list (every level): the load reports each weight buffer type's size there."""
    import ctypes

    import llama_cpp
    import llama_cpp.llama  # noqa: F401  (installs llama-cpp-python's own callback first; ours replaces it)

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    capture_llama_log.keep = callback  # the C side holds only a pointer
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return lines


def weight_buffers(log_text: str) -> dict[str, float]:
    """{buffer type: MiB} from the load's "<BUFT> model buffer size = <x> MiB" lines."""
    import re

    out: dict[str, float] = {}
    for name, mib in re.findall(r"(\S+) model buffer size =\s*([0-9.]+) MiB", log_text):
        out[name] = out.get(name, 0.0) + float(mib)
    return out


def run(a) -> dict:
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    out: dict = {"bufts": a.bufts}
    log = capture_llama_log()
    keep = configure_bufts(a.bufts, a.gguf)
    out["n_overridden"] = keep.get("n_overridden", 0)
    n_ctx = max(a.prefill + [0]) + a.decode + 16
    t0 = time.perf_counter()
    llm = Llama(model_path=a.gguf, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=a.threads,
                n_threads_batch=a.threads, use_mmap=True, verbose=False, logits_all=False)
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load_bytes"] = _peak()
    out["weight_buffers_mib"] = weight_buffers("".join(log))
    if a.bufts == "no_amx" and (out["weight_buffers_mib"].get("AMX") or not out["weight_buffers_mib"].get("CPU_REPACK")):
        raise SystemExit(f"--bufts no_amx did not take effect: weight buffers {out['weight_buffers_mib']}")
    n_vocab = llm.n_vocab()
    rng = np.random.default_rng(a.seed)
    ctx = llm._ctx.ctx

    def last_logits():
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    def argmax_last() -> int:
        return int(last_logits().argmax())

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
    if a.logits_out:  # the last prefill's logits: same seeded tokens under every --bufts, so runs can be compared
        np.save(a.logits_out, last_logits().copy())
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
    out["finite"] = bool(np.isfinite(last_logits()).all())
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
    r.add_argument("--bufts", choices=BUFTS, default="default",
                   help="weight buffer types: default (llama.cpp's: AMX if built, then CPU_REPACK), no_amx (CPU_REPACK "
                        "only), none (plain layout) (default: %(default)s)")
    r.add_argument("--logits-out", help="save the last prefill's logits here (.npy)")
    a = ap.parse_args()
    res = {"convert": convert, "quantize": quantize, "run": run}[a.cmd](a)
    sys.stdout.flush()
    print("\n" + json.dumps(res))


if __name__ == "__main__":
    main()
