"""Peer: upstream ExecuTorch 1.5.1's own Qwen3.5 export (examples/models/qwen3_5 in the wheel), on the host.

    python -m bench.peers.upstream_executorch --checkpoint /tmp/qwen35_rand_0_8b --work /tmp/peers_et \
        --variants fp32 8da4w_emb4 --json out/peers_et.json

What upstream does (executorch 1.5.1 wheel; its README lives only in the source repo):
1. `python -m executorch.examples.models.qwen3_5.convert_weights <hf_dir> <ckpt.pth>`: HF keys -> Meta keys,
   torch.save of the whole state dict (tied output duplicated by reference).
2. `python -m executorch.extension.llm.export.export_llm --config <wheel>/examples/models/qwen3_5/config/
   qwen3_5_xnnpack_fp32.yaml ++base.model_class=qwen3_5_0_8b ++base.params=<params.json> ++base.checkpoint=<ckpt.pth>`:
   kv cache + `llama::sdpa_with_kv_cache`, static shape (T=1 forward), fp32, XNNPACK, max_seq_len 2048.
   The wheel ships no `<size>_config.json` params files, so `params_json()` derives the same fields from the HF
   config (the mapping upstream's 0_8b_config.json spells out: q-gate, unit-offset RMSNorm, qk-norm before
   rope, partial rotary 0.25, HF rope, layer_types).
Keys missing from the yaml need hydra's `++` (add or override). The "8da4w_emb4" variant adds
`++quantization.qmode=8da4w ++quantization.group_size=32 ++quantization.embedding_quantize='4,32'` (upstream calls 8da4w for Qwen3.5 deferred; the flags work).

Export runs in `--work`/cwd (hydra's run dir is `--work`/hydra_<variant>; upstream's model_factory drops the
`executorch.` import prefix when the cwd's name ends in "executorch", so never run it from such a folder); times and peak RSS cover the child process trees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import PeerResult, dir_size, last_json_line, load_note, run_tracked, speed_stats, versions

PEER = "upstream_executorch"
VARIANTS = {
    "fp32": [],
    "8da4w_emb4": ["++quantization.qmode=8da4w", "++quantization.group_size=32", "++quantization.embedding_quantize='4,32'"],
}
WORKER = Path(__file__).with_name("_et_worker.py")


def upstream_example_dir() -> Path:
    """examples/models/qwen3_5 inside the installed wheel (`executorch` itself is a namespace package)."""
    import importlib.util

    spec = importlib.util.find_spec("executorch.examples.models.qwen3_5")
    return Path(list(spec.submodule_search_locations)[0])


def upstream_yaml() -> Path:
    return upstream_example_dir() / "config" / "qwen3_5_xnnpack_fp32.yaml"


def model_class_for(hidden_size: int) -> str:
    """Upstream only knows qwen3_5_{0_8b,2b,4b}; the name picks the HF repo to download, params set the shape."""
    return {1024: "qwen3_5_0_8b", 2048: "qwen3_5_2b", 2560: "qwen3_5_4b"}.get(hidden_size, "qwen3_5_0_8b")


def params_json(hf_config: dict) -> dict:
    """Meta-style ModelArgs params for upstream's llama transformer, from a qwen3_5(_text) HF config."""
    c = hf_config.get("text_config", hf_config)
    rope = c.get("rope_parameters") or {}
    return {
        "dim": c["hidden_size"],
        "hidden_dim": c["intermediate_size"],
        "n_heads": c["num_attention_heads"],
        "head_dim": c["head_dim"],
        "n_kv_heads": c["num_key_value_heads"],
        "n_layers": c["num_hidden_layers"],
        "norm_eps": c["rms_norm_eps"],
        "rope_theta": rope.get("rope_theta", c.get("rope_theta", 1e7)),
        "use_scaled_rope": False,
        "vocab_size": c["vocab_size"],
        "use_hf_rope": True,
        "partial_rotary_factor": rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.25)),
        "attention_qkv_bias": bool(c.get("attention_bias", False)),
        "use_qk_norm": True,
        "qk_norm_before_rope": True,
        "attention_type": "mha",
        "use_q_gate": True,
        "rms_norm_add_unit_offset": True,
        "linear_conv_kernel_dim": c["linear_conv_kernel_dim"],
        "linear_key_head_dim": c["linear_key_head_dim"],
        "linear_value_head_dim": c["linear_value_head_dim"],
        "linear_num_key_heads": c["linear_num_key_heads"],
        "linear_num_value_heads": c["linear_num_value_heads"],
        "layer_types": c["layer_types"],
    }


def convert(checkpoint: Path, work: Path, *, nice: int = 10) -> tuple[Path, dict]:
    """Step 1: HF folder -> Meta-key torch checkpoint (upstream's convert_weights CLI)."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "meta_ckpt.pth"
    cmd = [sys.executable, "-m", "executorch.examples.models.qwen3_5.convert_weights", str(checkpoint), str(out)]
    tr = run_tracked(cmd, nice=nice, log_path=work / "convert.log")
    return out, {"s": tr.wall_s, "peak_rss_bytes": tr.peak_rss_bytes, "cmd": cmd}


def export(checkpoint: Path, work: Path, variant: str = "fp32", *, meta_ckpt: Path | None = None,
           convert_step: dict | None = None, nice: int = 10, max_seq_len: int | None = None) -> PeerResult:
    """Convert (unless meta_ckpt is given) and export one variant; fills size/export fields of a PeerResult."""
    checkpoint, work = Path(checkpoint), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    hf = json.loads((checkpoint / "config.json").read_text())
    res = PeerResult(PEER, variant, checkpoint=str(checkpoint),
                     versions=versions("executorch", "torch", "torchao", "transformers"))
    if meta_ckpt is None:
        meta_ckpt, convert_step = convert(checkpoint, work, nice=nice)
    res.export_steps["convert_weights"] = {k: v for k, v in (convert_step or {}).items() if k != "cmd"}
    params = work / "params.json"
    params.write_text(json.dumps(params_json(hf), indent=2))
    name = f"qwen3_5_{variant}.pte"
    cmd = [sys.executable, "-m", "executorch.extension.llm.export.export_llm", "--config", str(upstream_yaml()),
           f"++base.model_class={model_class_for(hf.get('text_config', hf)['hidden_size'])}",
           f"++base.params={params}", f"++base.checkpoint={meta_ckpt}",
           # output_name is written relative to the cwd, not under output_dir: give it absolute.
           f"++export.output_dir={work}", f"++export.output_name={work / name}",
           f"hydra.run.dir={work / ('hydra_' + variant)}"]
    if max_seq_len:
        cmd += [f"++export.max_seq_length={max_seq_len}", f"++export.max_context_length={max_seq_len}"]
    cmd += VARIANTS[variant]
    if convert_step and "cmd" in convert_step:
        res.commands.append(convert_step["cmd"])
    res.commands.append(cmd)
    res.notes.append(load_note("before export"))
    # Not `work` itself: model_factory drops its "executorch." import prefix when the cwd ends in "executorch".
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)
    tr = run_tracked(cmd, cwd=str(cwd), nice=nice, log_path=work / f"export_{variant}.log", check=False)
    res.notes.append(load_note("after export"))
    res.export_steps["export_llm"] = {"s": tr.wall_s, "peak_rss_bytes": tr.peak_rss_bytes,
                                      "ru_maxrss_bytes": tr.ru_maxrss_bytes, "polled_tree_rss_bytes": tr.polled_tree_rss_bytes}
    if tr.returncode != 0:
        res.error = f"export_llm exit {tr.returncode}: " + tr.stdout[-1500:]
        return res
    pte = work / name
    if not pte.exists():
        res.error = f"export_llm exited 0 but {pte} is missing"
        return res
    res.artifact = str(pte)
    res.size_bytes = dir_size(pte)
    res.export_s = sum(s["s"] for s in res.export_steps.values())
    res.export_peak_rss_bytes = max(s["peak_rss_bytes"] for s in res.export_steps.values())
    res.notes.append("export_s = convert_weights + export_llm (separate processes); convert is shared by variants")
    return res


def run(res: PeerResult, *, prefill=(128, 512), decode_steps: int = 32, threads: int = 2, vocab: int | None = None,
        nice: int = 0) -> PeerResult:
    """Measure res.artifact in a fresh process (its ru_maxrss is the run peak RSS)."""
    if res.error or not res.artifact:
        return res
    cmd = [sys.executable, str(WORKER), res.artifact, "--prefill", *map(str, prefill), "--decode", str(decode_steps),
           "--threads", str(threads)]
    if vocab:
        cmd += ["--vocab", str(vocab)]
    res.commands.append(cmd)
    res.notes.append(load_note("before run"))
    tr = run_tracked(cmd, nice=nice, check=False)
    res.notes.append(load_note("after run"))
    if tr.returncode != 0:
        res.error = f"run exit {tr.returncode}: " + (tr.stdout + tr.stderr)[-1500:]
        return res
    w = last_json_line(tr.stdout)
    res.threads = w["threads"]
    res.load_s = w["load_s"]
    res.prefill_mode = w["prefill_mode"]
    res.prefill_tok_s = {k: v["tok_s"] for k, v in w["prefill"].items()}
    st = speed_stats(w["decode_step_s"])
    res.decode_tok_s, res.decode_tok_s_p10, res.decode_tok_s_p90 = st["tok_s"], st["tok_s_p10"], st["tok_s_p90"]
    res.decode_steps = len(w["decode_step_s"])
    res.run_peak_rss_bytes = w["peak_rss_bytes"]
    res.notes.append(f"prefill {w['prefill_mode']} (static T=1 forward); decode from pos {w['decode_start_pos']}, "
                     f"first forward {w['first_forward_s']:.2f}s excluded; logits finite={w['finite']}")
    return res


def bench(checkpoint: Path, work: Path, variants=("fp32",), *, prefill=(128, 512), decode_steps: int = 32,
          threads: int = 2, nice: int = 10, keep_pte: bool = True) -> list[PeerResult]:
    checkpoint, work = Path(checkpoint), Path(work)
    vocab = json.loads((checkpoint / "config.json").read_text()).get("vocab_size")
    meta_ckpt, step = convert(checkpoint, work, nice=nice)
    out = []
    for v in variants:
        r = export(checkpoint, work, v, meta_ckpt=meta_ckpt, convert_step=step, nice=nice)
        r = run(r, prefill=prefill, decode_steps=decode_steps, threads=threads, vocab=vocab)
        if not keep_pte and r.artifact:
            Path(r.artifact).unlink(missing_ok=True)
            r.notes.append("pte deleted after the run")
        out.append(r)
    meta_ckpt.unlink(missing_ok=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="upstream ExecuTorch Qwen3.5 export + host run")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--work", default="/tmp/peers_et")
    ap.add_argument("--variants", nargs="+", default=["fp32"], choices=list(VARIANTS))
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rs = bench(Path(a.checkpoint), Path(a.work), a.variants, prefill=a.prefill, decode_steps=a.decode, threads=a.threads)
    from .common import format_table

    print(format_table(rs))
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_dict() for r in rs], indent=2))


if __name__ == "__main__":
    main()
