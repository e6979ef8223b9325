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


# Weight buffer configurations, in the order tried (`_llamacpp_worker.BUFTS`): llama.cpp as its users run it first,
# then without AMX only, then without any repacked layout.
BUFTS_ORDER = ("default", "no_amx", "none")
BUFTS_MEANING = {
    "default": "llama.cpp's default, extra buffer types on (use_extra_bufts=True)",
    "no_amx": "CPU_REPACK on, AMX off (use_extra_bufts=False + tensor_buft_overrides -> CPU_REPACK)",
    "none": "extra buffer types off (use_extra_bufts=False): no AMX, no CPU_REPACK",
}


def layout_label(buffers_mib: dict[str, float], bufts: str) -> str:
    """What the weights ran in, from the load's buffer sizes: "AMX + CPU_REPACK", "CPU_REPACK on, AMX off", ..."""
    amx, repack = buffers_mib.get("AMX", 0) > 0, buffers_mib.get("CPU_REPACK", 0) > 0
    if amx:
        return "AMX + CPU_REPACK" if repack else "AMX"
    if repack:
        return "CPU_REPACK on, AMX off" if bufts == "no_amx" else "CPU_REPACK on, no AMX in this build"
    return "no repack (plain Q4_0 rows)"


def _crash_reason(tr) -> str:
    import signal

    rc = tr.returncode
    what = f"killed by {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.Signals._value2member_map_ else f"exit {rc}"
    tail = [ln for ln in (tr.stdout + tr.stderr).strip().splitlines() if ln.strip()][-1:]
    return what + (f" ({tail[0][-200:]})" if tail and rc > 0 else "")


def _worker_cmd(gguf: str, bufts: str, *, prefill, decode_steps: int, threads: int, reps: int,
                logits_out: Path | None = None) -> list[str]:
    cmd = [sys.executable, str(WORKER), "run", "--gguf", gguf, "--prefill", *map(str, prefill),
           "--decode", str(decode_steps), "--threads", str(threads), "--reps", str(reps), "--bufts", bufts]
    return cmd + (["--logits-out", str(logits_out)] if logits_out else [])


def _probe(gguf: str, bufts: str, threads: int):
    """(record, logits or None): load, 128-token batched prefill, 8 decode steps, in a child process."""
    import numpy as np

    npy = Path(gguf).parent / f"probe_{Path(gguf).stem}_{bufts}.npy"
    cmd = _worker_cmd(gguf, bufts, prefill=(128,), decode_steps=8, threads=threads, reps=1, logits_out=npy)
    tr = run_tracked(cmd, check=False)
    if tr.returncode != 0:
        return {"bufts": bufts, "ok": False, "outcome": _crash_reason(tr), "cmd": cmd}, None
    w = last_json_line(tr.stdout)
    return ({"bufts": bufts, "ok": True, "weight_buffers_mib": w["weight_buffers_mib"],
             "n_overridden": w["n_overridden"], "finite": w["finite"]}, np.load(npy))


def choose_bufts(gguf: str, *, threads: int = 2, order=BUFTS_ORDER) -> dict:
    """Probe each buffer configuration in a child process and keep the first that completes: the child may
    segfault, this process does not. The kept configuration's last-prefill logits are compared with the plain
    layout's on the same tokens, so a fallback that runs but computes garbage shows in the record too.

    Returns {"bufts", "meaning", "layout", "weight_buffers_mib", "why", "tried": [...], "agreement_vs_plain_layout"}.
    """
    import numpy as np

    tried, chosen, logits = [], None, None
    for bufts in order:
        record, logits = _probe(gguf, bufts, threads)
        tried.append(record)
        if record["ok"]:
            chosen = record
            break
    if chosen is None:
        raise RuntimeError("llama.cpp crashed under every weight buffer configuration: "
                           + "; ".join(f"{t['bufts']}: {t['outcome']}" for t in tried))
    agreement = None
    if chosen["bufts"] != "none":
        ref_record, ref = _probe(gguf, "none", threads)
        if ref is None:
            agreement = {"error": f"plain layout probe {ref_record['outcome']}"}
        else:
            agreement = {"max_abs_diff": float(np.abs(logits - ref).max()), "max_abs_ref": float(np.abs(ref).max()),
                         "argmax_same": bool(logits.argmax() == ref.argmax())}
    failed = [f"{t['bufts']} {t['outcome']}" for t in tried if not t["ok"]]
    return {"bufts": chosen["bufts"], "meaning": BUFTS_MEANING[chosen["bufts"]],
            "layout": layout_label(chosen["weight_buffers_mib"], chosen["bufts"]), "weight_buffers_mib": chosen["weight_buffers_mib"],
            "n_overridden": chosen["n_overridden"],
            "why": "first configuration tried" if not failed else "fallback: " + "; ".join(failed),
            "tried": tried, "agreement_vs_plain_layout": agreement}


def config_label(config: dict) -> str:
    """One line for tables, e.g. "CPU_REPACK on, AMX off (default: killed by SIGSEGV)"."""
    if not config:
        return ""
    failed = [f"{t['bufts']}: {t['outcome'].split(' (')[0]}" for t in config.get("tried", []) if not t["ok"]]
    return config["layout"] + (f" ({'; '.join(failed)})" if failed else "")


def run(res: PeerResult, *, prefill=(128, 512), decode_steps: int = 64, threads: int = 2, reps: int = 3,
        bufts: str | None = None) -> PeerResult:
    """Time `res.artifact`. The weight buffer configuration is `bufts` if given, else `res.config`'s from an earlier
    call (rounds reuse it), else the first of BUFTS_ORDER that runs here (`choose_bufts`); recorded in res.config."""
    if bufts:
        res.config = {"bufts": bufts, "meaning": BUFTS_MEANING[bufts], "why": "asked for (--bufts)", "tried": []}
    elif not res.config:
        try:
            res.config = choose_bufts(res.artifact, threads=threads)
        except RuntimeError as e:
            res.error = str(e)
            return res
    cmd = _worker_cmd(res.artifact, res.config["bufts"], prefill=prefill, decode_steps=decode_steps,
                      threads=threads, reps=reps)
    res.commands.append(cmd)
    res.notes.append(load_note("before run"))
    tr = run_tracked(cmd, check=False)
    res.notes.append(load_note("after run"))
    if tr.returncode != 0:
        res.error = f"run ({res.config['bufts']}) {_crash_reason(tr)}: " + (tr.stdout + tr.stderr)[-1500:]
        return res
    w = last_json_line(tr.stdout)
    res.config.setdefault("layout", layout_label(w["weight_buffers_mib"], res.config["bufts"]))
    res.config.setdefault("weight_buffers_mib", w["weight_buffers_mib"])
    if w["weight_buffers_mib"] != res.config.get("weight_buffers_mib"):
        res.notes.append(f"weight buffers this run: {w['weight_buffers_mib']} (probe: {res.config['weight_buffers_mib']})")
    res.threads, res.load_s, res.prefill_mode = w["threads"], w["load_s"], "batched"
    res.prefill_tok_s = {k: v["tok_s"] for k, v in w["prefill"].items()}
    st = speed_stats(w["decode_step_s"])
    res.decode_tok_s, res.decode_tok_s_p10, res.decode_tok_s_p90 = st["tok_s"], st["tok_s_p10"], st["tok_s_p90"]
    res.decode_steps = len(w["decode_step_s"])
    res.run_peak_rss_bytes = w["peak_rss_bytes"]
    res.notes.append(f"weight buffers: {config_label(res.config)}; {res.config['meaning']}")
    res.notes.append(f"prefill batched (n_batch=n_ubatch=512, median of {reps}); decode from pos {w['decode_start_pos']}; "
                     f"logits finite={w['finite']}; {w['system_info'].strip()}")
    return res


def bench(checkpoint: Path, work: Path, ftypes=("q4_0",), *, prefill=(128, 512), decode_steps: int = 64,
          threads: int = 2, nice: int = 10, sdist: Path | None = None, keep_gguf: bool = True,
          run_bf16: bool = False, bufts: str | None = None) -> list[PeerResult]:
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
        out.append(run(base, prefill=prefill, decode_steps=decode_steps, threads=threads, bufts=bufts))
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
        out.append(run(r, prefill=prefill, decode_steps=decode_steps, threads=threads, bufts=bufts))
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
    ap.add_argument("--bufts", choices=BUFTS_ORDER, default=None,
                    help="weight buffer types (default: the first of default, no_amx, none that runs here; "
                         "each is probed in a child process)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rs = bench(Path(a.checkpoint), Path(a.work), a.ftypes, prefill=a.prefill, decode_steps=a.decode,
               threads=a.threads, sdist=Path(a.sdist) if a.sdist else None, run_bf16=a.run_bf16,
               bufts=a.bufts)
    from .common import format_table

    print(format_table(rs))
    for r in rs:
        if r.config:
            print(f"{r.peer}:{r.variant} weight buffers: {config_label(r.config)}; {r.config.get('meaning')}")
        if r.error:
            print(f"{r.peer}:{r.variant} ERROR: {r.error}")
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_dict() for r in rs], indent=2))


if __name__ == "__main__":
    main()
