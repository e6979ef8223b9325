"""Images through a bundle in a real shape, random weights: export size and time per recipe, image encode time and time
to first token with an image on this host, against the eager PyTorch tower as the peer (issue 22, "Measured").

    .venv/bin/python -m bench.bench_vision --preset 0_8b --recipes xnnpack-8da4w --sizes 224,448 \
        --json bench/results/vision_0_8b.json

The checkpoint: `bench.peers.random_checkpoint`'s text model of the preset (cached under ~/.cache/qwen_mobile/vision,
never in the repository) plus a random vision tower of the architecture document's shape for that size
(`VISION_TOWERS`), written as a second safetensors file with an index and a `Qwen3_5ForConditionalGeneration` config.
Per recipe: `qwen_mobile.export.export` with the quality gate off (agreement on random weights means nothing; fp32 is
still checked by the gate's bound), the bundle's bytes and the export's seconds; then, in this process, per image size
`runtime/bench.py`'s image rows (`encode_image` alone, and the whole prompt: test card + 16 text tokens to the first
token), alternating round by round with the peer: our eager fp32 tower (`Qwen35VisionModel.encode_frame` on the same patches, torch's default
threads, no_grad), which transformers' `Qwen3_5VisionModel` equals within 4e-6 (tests/models/test_vision_parity.py).
Host numbers, never phone numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("QWEN_MOBILE_CACHE", Path.home() / ".cache" / "qwen_mobile")) / "vision"
# ../shared/qwen35-architecture.md, the vision rows: depth, hidden, heads, intermediate (out width = text hidden).
VISION_TOWERS = {"0_8b": (12, 768, 12, 3072), "2b": (24, 1024, 16, 4096), "4b": (24, 1024, 16, 4096),
                 "9b": (27, 1152, 16, 4304), "tiny": (2, 32, 2, 64)}


def vlm_checkpoint(preset: str) -> Path:
    """The preset's random text checkpoint plus a random tower, as one ConditionalGeneration folder (cached)."""
    from safetensors.torch import save_file

    folder = CACHE / f"{preset}-vlm"
    if (folder / "config.json").is_file():
        return folder
    text = CACHE / f"{preset}-text"
    if not (text / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "bench.peers.random_checkpoint", "--preset", preset, "--out", str(text)],
                       check=True, cwd=REPO)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if (text / name).is_file():
            os.link(text / name, tmp / name)
    text_config = json.loads((text / "config.json").read_text())
    depth, hidden, heads, inter = VISION_TOWERS[preset]
    vision_config = dict(model_type="qwen3_5_vision", depth=depth, hidden_size=hidden, num_heads=heads,
                         intermediate_size=inter, out_hidden_size=text_config["hidden_size"])
    from transformers import Qwen3_5VisionConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

    torch.manual_seed(0)
    tower = Qwen3_5VisionModel._from_config(Qwen3_5VisionConfig(**vision_config)).to(torch.bfloat16)
    save_file({f"model.visual.{k}": v.contiguous() for k, v in tower.state_dict().items()},
              str(tmp / "vision.safetensors"))
    from safetensors import safe_open

    weight_map = {}
    for file in ("model.safetensors", "vision.safetensors"):
        with safe_open(str(tmp / file), framework="pt") as f:
            weight_map |= {key: file for key in f.keys()}
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    vocab = text_config["vocab_size"]
    # The releases' vision token ids; a preset whose vocabulary is smaller (tiny) takes its last four ids instead.
    ids = (248056, 248057, 248053, 248054) if vocab > 248057 else (vocab - 4, vocab - 3, vocab - 2, vocab - 1)
    config = {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
              "text_config": {k: v for k, v in text_config.items() if k != "architectures"},
              "vision_config": vision_config, "tie_word_embeddings": text_config.get("tie_word_embeddings", True),
              **dict(zip(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"), ids))}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(folder)
    return folder


def interleaved_rounds(bundle, source: Path, runs: int) -> list[dict]:
    """Per image size, `runs` rounds (after one warm-up) of: the bundle's whole image prompt (test card + 16 text
    tokens, as runtime/bench.py's image rows), then the peer, our eager fp32 tower on the same test card's patches
    (normalize + patchify as the program does; torch's default threads, no_grad). Alternating them keeps a busy host's
    swings out of the ratio."""
    from qwen_mobile.models.vision import Qwen35VisionModel
    from qwen_mobile.models.vision_preprocess import ImageProcessorConfig, normalize, patchify
    from qwen_mobile.runtime.bench import image_bench_prompt, stats
    from qwen_mobile.runtime.sampling import Sampler, SamplingConfig

    tower = Qwen35VisionModel.from_pretrained(source).eval()
    processor = ImageProcessorConfig.from_pretrained(source, tower.config)
    rows = []
    for entry in bundle.vision["images"]:
        size = (entry["height"], entry["width"])
        image, prompt = image_bench_prompt(bundle, entry, seed=0)
        patches, gh, gw = patchify(normalize(image.rgb.permute(2, 0, 1), processor), processor)  # [H,W,3] -> [3,H,W]
        encode, ttft, eager = [], [], []
        for i in range(runs + 1):
            result = bundle.session().generate(prompt, 1, Sampler(SamplingConfig()), stop_ids=set(), images=[image])
            t0 = time.perf_counter()
            with torch.no_grad():
                tower.encode_frame(patches, gh, gw)
            eager_ms = (time.perf_counter() - t0) * 1e3
            if i:  # round 0 warms both up
                encode.append(result.image_encode_s * 1e3)
                ttft.append(result.ttft_s * 1e3)
                eager.append(eager_ms)
        rows.append({"height": size[0], "width": size[1], "method": entry["method"], "tokens": entry["tokens"],
                     "prompt_tokens": len(result.prompt_ids), "encode_ms": stats(encode), "ttft_ms": stats(ttft),
                     "eager_encode_ms": stats(eager)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="0_8b", choices=sorted(VISION_TOWERS))
    ap.add_argument("--recipes", default="xnnpack-8da4w", help="comma list of xnnpack presets")
    ap.add_argument("--sizes", default="224,448", help="--image-sizes of the export")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out-dir", type=Path, default=None, help="where bundles go (default: the cache)")
    ap.add_argument("--reuse", action="store_true", help="time an already exported bundle again (export time: "
                                                           "its manifest's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from qwen_mobile.export import export
    from qwen_mobile.runtime.bench import device_info
    from qwen_mobile.runtime.bundle import Bundle

    source = vlm_checkpoint(args.preset)
    rows = []
    for recipe in args.recipes.split(","):
        out = (args.out_dir or CACHE / "bundles") / f"{args.preset}-{recipe}"
        if args.reuse and (out / "manifest.json").is_file():
            manifest = json.loads((out / "manifest.json").read_text())
            seconds = manifest["export"]["seconds"]
        else:
            t0 = time.perf_counter()
            manifest = export(str(source), out, preset=recipe, image_sizes=args.sizes, quality_gate=False,
                              force=True, progress=True)
            seconds = time.perf_counter() - t0
        bundle = Bundle(out)
        images = interleaved_rounds(bundle, source, args.runs)
        rows.append({"recipe": recipe, "bundle_bytes": sum(f["bytes"] for f in manifest["files"].values()),
                     "export_seconds": round(seconds, 1), "stage_seconds": manifest["export"]["stage_seconds"],
                     "vision": {k: v for k, v in manifest["vision"].items() if k not in ("images",)},
                     "images": images})
        del bundle

    print(f"\n{args.preset} random weights, host {device_info()['cpu']}, torch threads {torch.get_num_threads()}; "
          f"peer: eager fp32 tower (our Qwen35VisionModel, torch defaults)")
    print(f"{'recipe':<16} {'bundle MB':>9} {'export s':>8}  {'image':>8} {'tokens':>6} {'encode ms':>9} "
          f"{'eager ms':>8} {'x eager':>7} {'TTFT ms':>8}")
    for row in rows:
        for im in row["images"]:
            enc, peer = im["encode_ms"]["median"], im["eager_encode_ms"]["median"]
            print(f"{row['recipe']:<16} {row['bundle_bytes'] / 1e6:>9.1f} {row['export_seconds']:>8.0f}  "
                  f"{im['height']}x{im['width']:<4} {im['tokens']:>6} {enc:>9.1f} {peer:>8.1f} {peer / enc:>7.2f} "
                  f"{im['ttft_ms']['median']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "device": device_info(),
                                         "torch_threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
