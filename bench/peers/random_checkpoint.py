"""Write a random-weight Hugging Face checkpoint folder in a preset's shape, plus a small tokenizer.

    python -m bench.peers.random_checkpoint --preset 0_8b --out /tmp/qwen35_rand_0_8b

The folder is what both peer converters read:
- `config.json`: `Qwen3_5ForCausalLM` / `qwen3_5_text`, flat keys from models/presets/<preset>.json (plus the
  `layer_types` transformers derives). Upstream ExecuTorch's `qwen3_5/convert_weights.py` accepts `model.*`
  and `model.language_model.*` keys alike; llama.cpp's converter registers `Qwen3_5ForCausalLM` next to
  `Qwen3_5ForConditionalGeneration`, so the text-only layout suffices for both (no vision tower, no MTP).
- `model.safetensors`: keys from transformers' `Qwen3_5ForCausalLM` (tied table stored once).
  Matrices, embedding and conv normal(0, 0.02); A_log = log(uniform(1, 16)); dt_bias = 1; the offset
  RMSNorms (`(1 + w)`: layer, final, q/k norms) 0; the gated GDN norm 1. Each tensor has its own generator
  seeded from (seed, crc32(name)), so a tensor does not depend on the others. bf16 like the releases,
  A_log fp32.
- `tokenizer.json` + `tokenizer_config.json`: llama.cpp's converter loads a tokenizer with AutoTokenizer
  and needs BPE merges. We train a small byte-level BPE (a few hundred tokens) on a fixed text with the
  `tokenizers` library and put Qwen's special tokens at their real ids (248044-248046) when the vocab is
  that large; the converter pads every id below vocab_size it lacks with `[PADn]` (UNUSED), so the GGUF
  vocab has exactly vocab_size entries. Benchmarks feed token ids, so the tokenizer's quality is moot.
  (The converter also identifies the pre-tokenizer by hashing an encoding; ours matches no known hash, so
  `llamacpp.py` tells it the Qwen3.5 answer, "qwen35", instead.)

Never write these inside the repo: the 0.8B folder is 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PRESETS_DIR = REPO / "models" / "presets"
QWEN_SPECIAL = {"<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046}
STD = 0.02

# A fixed, license-free training text for the toy tokenizer (only its merges matter).
_TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. " * 4
    + "Qwen3.5 runs on phones with ExecuTorch and llama.cpp; prefill and decode are measured in tokens per second. "
    + "def main():\n    return 0\n" * 3
    + "0123456789 " * 5
)


def load_preset(preset: str) -> dict:
    path = Path(preset)
    if not path.suffix:
        path = PRESETS_DIR / f"{preset}.json"
    return json.loads(path.read_text())


def _text_config(raw: dict):
    from transformers import Qwen3_5TextConfig

    raw = {k: v for k, v in raw.items() if k != "model_type"}
    cfg = Qwen3_5TextConfig(**raw)
    cfg.architectures = ["Qwen3_5ForCausalLM"]
    return cfg


def _init_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    if name.endswith("linear_attn.A_log"):
        return torch.empty(shape).uniform_(1.0, 16.0, generator=g).log_()
    if name.endswith("linear_attn.dt_bias"):
        return torch.ones(shape)
    if name.endswith("linear_attn.norm.weight"):  # gated RMSNorm, plain weight
        return torch.ones(shape)
    if name.endswith("norm.weight"):  # (1 + w) RMSNorms: input/post-attention, final, q_norm, k_norm
        return torch.zeros(shape)
    assert len(shape) >= 2, f"unexpected 1-D tensor {name}"
    return torch.empty(shape).normal_(0.0, STD, generator=g)


def build_tokenizer(vocab_size: int, out_dir: Path) -> dict:
    """Tiny byte-level BPE; special tokens at Qwen's ids when they fit, else at the top of the vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size > max(QWEN_SPECIAL.values()):
        specials = dict(QWEN_SPECIAL)
    else:
        specials = {tok: vocab_size - 3 + i for i, tok in enumerate(QWEN_SPECIAL)}
    n_bpe = min(400, min(specials.values()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n_bpe, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([_TOKENIZER_TEXT], trainer=trainer)
    data = json.loads(tok.to_str())
    assert len(data["model"]["vocab"]) <= n_bpe
    for content, idx in specials.items():  # sparse ids are fine for BPE's vocab map
        data["model"]["vocab"][content] = idx
    data["added_tokens"] = [
        {"id": idx, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for content, idx in specials.items()
    ]
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "model_max_length": 262144,
    }, indent=2))
    return {"bpe_tokens": len(data["model"]["vocab"]) - len(specials), "merges": len(data["model"]["merges"]),
            "special_ids": specials}


def write_random_checkpoint(preset: str, out_dir: str | Path, *, seed: int = 0, dtype: str = "bfloat16",
                            tokenizer: bool = True) -> dict:
    """Write config.json, model.safetensors (+ tokenizer files) to out_dir; return a small summary dict."""
    from safetensors.torch import save_file
    from transformers import Qwen3_5ForCausalLM

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = load_preset(preset)
    cfg = _text_config(raw)
    with torch.device("meta"):
        model = Qwen3_5ForCausalLM(cfg)
    store_dtype = getattr(torch, dtype)
    tensors: dict[str, torch.Tensor] = {}
    n_params = 0
    for name, p in model.named_parameters():  # tied lm_head is not listed again
        t = _init_tensor(name, tuple(p.shape), seed)
        tensors[name] = t if name.endswith("A_log") else t.to(store_dtype)
        n_params += p.numel()
    if not cfg.tie_word_embeddings:
        assert "lm_head.weight" in tensors
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    cfg.dtype = store_dtype  # recorded as "dtype" in config.json
    cfg.save_pretrained(out_dir)
    summary = {"preset": preset, "dir": str(out_dir), "params": n_params, "dtype": dtype, "seed": seed,
               "config": json.loads((out_dir / "config.json").read_text())}
    if tokenizer:
        summary["tokenizer"] = build_tokenizer(cfg.vocab_size, out_dir)
    summary["write_s"] = time.perf_counter() - t0
    summary["bytes"] = sum(f.stat().st_size for f in out_dir.iterdir())
    (out_dir / "random_checkpoint.json").write_text(json.dumps(
        {k: v for k, v in summary.items() if k != "config"}, indent=2))
    return summary


def ensure_random_checkpoint(preset: str, out_dir: str | Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Reuse out_dir if it holds a checkpoint written with the same preset/seed/dtype."""
    out_dir = Path(out_dir)
    stamp = out_dir / "random_checkpoint.json"
    if stamp.exists() and (out_dir / "model.safetensors").exists():
        s = json.loads(stamp.read_text())
        if (s.get("preset"), s.get("seed"), s.get("dtype")) == (preset, seed, dtype):
            return out_dir
    write_random_checkpoint(preset, out_dir, seed=seed, dtype=dtype)
    return out_dir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", help="name in models/presets or a JSON path")
    ap.add_argument("--out", default=None, help="output folder (default /tmp/qwen35_rand_<preset>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--no-tokenizer", action="store_true")
    a = ap.parse_args(argv)
    out = a.out or f"/tmp/qwen35_rand_{Path(a.preset).stem}"
    s = write_random_checkpoint(a.preset, out, seed=a.seed, dtype=a.dtype, tokenizer=not a.no_tokenizer)
    s.pop("config")
    print(json.dumps(s, indent=2))


if __name__ == "__main__":
    main()
