"""Peak RSS of loading a checkpoint, against the checkpoint's size on disk.

    python bench/bench_load_memory.py --preset 4b --dtype bfloat16 --json out/load_memory_4b.json

Writes a random checkpoint in the preset's shape with the real releases' layout (Qwen3_5ForConditionalGeneration:
`model.language_model.*` keys, sharded safetensors + index), then loads it with our loader in a fresh process and
reports peak RSS (ru_maxrss) and the import-only baseline of the same process kind. The goal is peak < 2x checkpoint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's high-water mark (inherited across fork).
CHILD = r"""
import json, sys, time, torch
from qwen_mobile.models import Qwen35ForCausalLM
def hwm():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
res = dict(import_rss=hwm(), seconds=0.0, params=0, forward_rss=0)
if sys.argv[3] == "load":
    t0 = time.perf_counter()
    m = Qwen35ForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]), max_seq_len=256,
                                          gdn_impl="reference")
    res.update(seconds=time.perf_counter() - t0, params=sum(p.numel() for p in m.parameters()))
    res["peak_rss"] = hwm()
    with torch.no_grad():  # touches every weight, so memory-mapped pages become resident too
        m(torch.zeros(1, 4, dtype=torch.long), torch.arange(4))
    res["forward_rss"] = hwm()
else:
    res["peak_rss"] = hwm()
print(json.dumps(res))
"""


def write_checkpoint(preset: str, dtype: torch.dtype, folder: Path, shard_bytes: int = 2 << 30) -> int:
    from safetensors.torch import save_file

    from qwen_mobile.models import Qwen35Config, Qwen35ForCausalLM

    config = Qwen35Config.from_preset(preset)
    with torch.device("meta"):
        model = Qwen35ForCausalLM(config, max_seq_len=1, gdn_impl="reference")
    shapes = {"model.language_model." + n[len("model."):]: tuple(p.shape) for n, p in model.named_parameters()
              if n != "lm_head.weight" or not config.tie_word_embeddings}
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, shard_size, index, total = {}, {}, 0, 0, 0

    def flush():
        nonlocal shard, shard_size, index
        if shard:
            name = f"model-{index:05d}.safetensors"
            save_file(shard, folder / name, metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, shard_size, index = {}, 0, index + 1

    for key, shape in shapes.items():
        t = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
        shard[key] = t
        shard_size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if shard_size >= shard_bytes:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    nested = {"model_type": "qwen3_5", "tie_word_embeddings": config.tie_word_embeddings,
              "text_config": config.to_hf_dict()}
    (folder / "config.json").write_text(json.dumps(nested, indent=2))
    return total


def measure(folder: Path, dtype: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype, mode], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="4b")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="checkpoint and load dtype")
    ap.add_argument("--workdir", type=Path, help="where to write the checkpoint (default: a temp dir, removed)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        size = write_checkpoint(args.preset, DTYPES[args.dtype], folder)
        print(f"wrote {size / 1e9:.2f} GB random {args.preset} checkpoint in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        baseline = measure(folder, args.dtype, "import")
        loaded = measure(folder, args.dtype, "load")
    ratio = loaded["peak_rss"] / size
    print(f"\n{args.preset} {args.dtype}: checkpoint {size / 1e9:.2f} GB, {loaded['params'] / 1e9:.3f} B params")
    print(f"  peak RSS while loading  {loaded['peak_rss'] / 1e9:.2f} GB  ({ratio:.2f}x checkpoint; goal < 2x)")
    print(f"  peak RSS after a forward {loaded['forward_rss'] / 1e9:.2f} GB  ({loaded['forward_rss'] / size:.2f}x; "
          "every weight touched)")
    print(f"  RSS after imports only  {baseline['peak_rss'] / 1e9:.2f} GB")
    print(f"  load time               {loaded['seconds']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(bench="load_memory", preset=args.preset, dtype=args.dtype,
                                             checkpoint_bytes=size, peak_rss_bytes=loaded["peak_rss"],
                                             forward_rss_bytes=loaded["forward_rss"],
                                             import_rss_bytes=baseline["peak_rss"], load_seconds=loaded["seconds"],
                                             params=loaded["params"], ratio=ratio), indent=2))
    return 0 if max(ratio, loaded["forward_rss"] / size) < 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
