"""Peer: llama.cpp through llama-cpp-python (built from its PyPI sdist), on the same HF checkpoint.

    pip install llama-cpp-python==0.3.36 gguf   # builds llama.cpp with CMake: ~15 min on 2 busy cores
    python -m bench.peers.llamacpp --checkpoint /tmp/qwen35_rand_0_8b --work /tmp/peers_llamacpp --json out/x.json

Steps, each in its own process (wall time and peak RSS per step):
1. `converter_dir()`: llama.cpp's `convert_hf_to_gguf.py` is not in the wheel. It ships in the sdist's
   `vendor/llama.cpp/` with its `conversion/` package and `gguf-py/`. We `pip download` the sdist of the
   installed version (or take `--sdist`) and extract just those into a cache folder under /tmp. That code
   is never copied into this repo.
2. convert: HF folder -> bf16 GGUF (`--outtype bf16`, the releases' dtype). The converter needs a tokenizer
   (random_checkpoint.py writes a toy one) and names its pre-tokenizer by a hash; see _llamacpp_worker.convert.
3. quantize: `llama_cpp.llama_model_quantize` to Q4_0 (default; `--ftypes q4_0 q8_0 ...`).
4. run: pp128 / pp512 (batched prefill, n_batch = n_ubatch = 512, fresh state each, median of 3), then decode
   64 tokens one at a time from the end of the last prefill (median per-token time), 2 threads, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from .common import PeerResult, dir_size, last_json_line, load_note, run_tracked, speed_stats, versions

PEER = "llama_cpp"
WORKER = Path(__file__).with_name("_llamacpp_worker.py")
CACHE = Path(os.environ.get("QWEN_MOBILE_PEERS_CACHE", "/tmp/qwen_mobile_peers_cache"))
_WANTED = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/",
           "vendor/llama.cpp/LICENSE")


def installed_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def converter_dir(sdist: Path | None = None, cache: Path = CACHE) -> Path:
    """Folder holding convert_hf_to_gguf.py + conversion/ + gguf-py/ from the installed version's sdist."""
    ver = installed_version()
    dest = cache / f"llama_cpp_python-{ver}-converter"
    if (dest / "convert_hf_to_gguf.py").exists():
        return dest
    if sdist is None:
        dl = cache / "sdist"
        dl.mkdir(parents=True, exist_ok=True)
        found = sorted(dl.glob(f"llama_cpp_python-{ver}.tar.gz"))
        if not found:
            # --no-binary for this package only: its build dependencies may still come as wheels.
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                            f"llama-cpp-python=={ver}", "-d", str(dl)], check=True)
            found = sorted(dl.glob(f"llama_cpp_python-{ver}.tar.gz"))
        sdist = found[0]
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tf:
        root = tf.getmembers()[0].name.split("/")[0]
        for m in tf.getmembers():
            rel = m.name[len(root) + 1:]
            if m.isfile() and any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in _WANTED):
                m.name = rel[len("vendor/llama.cpp/"):]
                tf.extract(m, tmp, filter="data")
    tmp.rename(dest)
    return dest


def convert(checkpoint: Path, work: Path, *, outtype: str = "bf16", sdist: Path | None = None, nice: int = 10,
            pypi_gguf: bool = False) -> tuple[Path, dict]:
    work.mkdir(parents=True, exist_ok=True)
    cdir = converter_dir(sdist)
    out = work / f"model-{outtype}.gguf"
    cmd = [sys.executable, str(WORKER), "convert", "--converter-dir", str(cdir), "--hf", str(checkpoint),
           "--out", str(out), "--outtype", outtype] + (["--pypi-gguf"] if pypi_gguf else [])
    tr = run_tracked(cmd, nice=nice, log_path=work / "convert.log")
    w = last_json_line(tr.stdout)
    return out, {"s": tr.wall_s, "peak_rss_bytes": tr.peak_rss_bytes, "pre_tokenizer_patched": w["pre_tokenizer_patched"],
                 "gguf_module": w["gguf_module"], "cmd": cmd, "size_bytes": dir_size(out)}


def quantize(src: Path, work: Path, ftype: str = "q4_0", *, threads: int = 2, nice: int = 10) -> tuple[Path, dict]:
    out = work / f"model-{ftype}.gguf"
    cmd = [sys.executable, str(WORKER), "quantize", "--inp", str(src), "--out", str(out), "--ftype", ftype,
           "--threads", str(threads)]
    tr = run_tracked(cmd, nice=nice, log_path=work / f"quantize_{ftype}.log")
    return out, {"s": tr.wall_s, "peak_rss_bytes": tr.peak_rss_bytes, "cmd": cmd}


def run(res: PeerResult, *, prefill=(128, 512), decode_steps: int = 64, threads: int = 2, reps: int = 3,
        extra_bufts: bool = False) -> PeerResult:
    cmd = [sys.executable, str(WORKER), "run", "--gguf", res.artifact, "--prefill", *map(str, prefill),
           "--decode", str(decode_steps), "--threads", str(threads), "--reps", str(reps)]
    cmd += ["--extra-bufts"] if extra_bufts else []
    res.commands.append(cmd)
    res.notes.append(load_note("before run"))
    tr = run_tracked(cmd, check=False)
    res.notes.append(load_note("after run"))
    if tr.returncode != 0:
        res.error = f"run exit {tr.returncode}: " + (tr.stdout + tr.stderr)[-1500:]
        return res
    w = last_json_line(tr.stdout)
    res.threads, res.load_s, res.prefill_mode = w["threads"], w["load_s"], "batched"
    res.prefill_tok_s = {k: v["tok_s"] for k, v in w["prefill"].items()}
    st = speed_stats(w["decode_step_s"])
    res.decode_tok_s, res.decode_tok_s_p10, res.decode_tok_s_p90 = st["tok_s"], st["tok_s_p10"], st["tok_s_p90"]
    res.decode_steps = len(w["decode_step_s"])
    res.run_peak_rss_bytes = w["peak_rss_bytes"]
    res.notes.append(f"use_extra_bufts={w['extra_bufts']} (False: no AMX/CPU_REPACK weight layouts; AMX segfaults here)")
    res.notes.append(f"prefill batched (n_batch=n_ubatch=512, median of {reps}); decode from pos {w['decode_start_pos']}; "
                     f"logits finite={w['finite']}; {w['system_info'].strip()}")
    return res


def bench(checkpoint: Path, work: Path, ftypes=("q4_0",), *, prefill=(128, 512), decode_steps: int = 64,
          threads: int = 2, nice: int = 10, sdist: Path | None = None, keep_gguf: bool = True,
          run_bf16: bool = False, extra_bufts: bool = False) -> list[PeerResult]:
    checkpoint, work = Path(checkpoint), Path(work)
    vers = versions("llama-cpp-python", "gguf", "torch", "transformers")
    base = PeerResult(PEER, "bf16", checkpoint=str(checkpoint), versions=vers)
    try:
        bf16, cstep = convert(checkpoint, work, sdist=sdist, nice=nice)
    except Exception as e:  # an unsupported architecture shows up here: keep the converter's message
        base.error = f"convert failed: {e}"
        return [base]
    conv_note = (f"converter: convert_hf_to_gguf.py from llama-cpp-python {vers['llama-cpp-python']} sdist, "
                 f"gguf module {cstep['gguf_module']}; pre-tokenizer hash "
                 + ("unknown (toy tokenizer) -> 'qwen35'" if cstep["pre_tokenizer_patched"] else "recognised"))
    out = []
    if run_bf16:
        base.artifact, base.size_bytes = str(bf16), cstep["size_bytes"]
        base.export_steps["convert"] = {k: cstep[k] for k in ("s", "peak_rss_bytes")}
        base.export_s, base.export_peak_rss_bytes = cstep["s"], cstep["peak_rss_bytes"]
        base.commands.append(cstep["cmd"])
        base.notes.append(conv_note)
        out.append(run(base, prefill=prefill, decode_steps=decode_steps, threads=threads, extra_bufts=extra_bufts))
    for ft in ftypes:
        r = PeerResult(PEER, ft, checkpoint=str(checkpoint), versions=vers)
        r.export_steps["convert"] = {k: cstep[k] for k in ("s", "peak_rss_bytes")}
        r.commands.append(cstep["cmd"])
        try:
            q, qstep = quantize(bf16, work, ft, threads=threads, nice=nice)
        except Exception as e:
            r.error = f"quantize failed: {e}"
            out.append(r)
            continue
        r.export_steps["quantize"] = {k: qstep[k] for k in ("s", "peak_rss_bytes")}
        r.commands.append(qstep["cmd"])
        r.artifact, r.size_bytes = str(q), dir_size(q)
        r.export_s = sum(s["s"] for s in r.export_steps.values())
        r.export_peak_rss_bytes = max(s["peak_rss_bytes"] for s in r.export_steps.values())
        r.notes.append(conv_note)
        r.notes.append("export_s = HF->bf16 GGUF convert + quantize (separate processes); quantize threads="
                       f"{threads}")
        out.append(run(r, prefill=prefill, decode_steps=decode_steps, threads=threads, extra_bufts=extra_bufts))
        if not keep_gguf:
            q.unlink(missing_ok=True)
    if not keep_gguf:
        bf16.unlink(missing_ok=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="llama.cpp (llama-cpp-python) convert + quantize + host run")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--work", default="/tmp/peers_llamacpp")
    ap.add_argument("--ftypes", nargs="+", default=["q4_0"])
    ap.add_argument("--run-bf16", action="store_true", help="also measure the unquantized bf16 GGUF")
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sdist", default=None, help="llama_cpp_python-<ver>.tar.gz to take the converter from")
    ap.add_argument("--extra-bufts", action="store_true", help="allow AMX/CPU_REPACK weight layouts (AMX crashes here)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rs = bench(Path(a.checkpoint), Path(a.work), a.ftypes, prefill=a.prefill, decode_steps=a.decode,
               threads=a.threads, sdist=Path(a.sdist) if a.sdist else None, run_bf16=a.run_bf16,
               extra_bufts=a.extra_bufts)
    from .common import format_table

    print(format_table(rs))
    for r in rs:
        if r.error:
            print(f"{r.peer}:{r.variant} ERROR: {r.error}")
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_dict() for r in rs], indent=2))


if __name__ == "__main__":
    main()
