"""SOURCE: what `qwen-mobile export` and `check` take (an HF folder, a shipped model name, or a size preset's random
weights), opened once for every recipe: config, tokenizer, stop ids, the manifest's model section."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen_mobile.models import Qwen35Config, Qwen35ForCausalLM, available_presets
from qwen_mobile.runtime.bundle import check_out

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED_MODELS = {"nano": MODELS_DIR / "nano"}  # name -> HF folder shipped with the package
DEFAULT_SOURCE = "nano"


def resolve_source(source: str) -> Path | str:
    """A local HF folder, the name of a shipped model (`nano`), or a preset name (random weights) -> path or preset."""
    path = Path(source)
    if path.is_dir():
        return path
    if source in SHIPPED_MODELS:
        shipped = SHIPPED_MODELS[source]
        if not (shipped / "config.json").is_file():
            raise FileNotFoundError(f"shipped model '{source}' is missing its files at {shipped}")
        return shipped
    if source in available_presets():
        return source
    raise FileNotFoundError(f"SOURCE '{source}' is neither a folder, a shipped model {sorted(SHIPPED_MODELS)}, "
                            f"nor a preset {available_presets()}")


def load_model(source: str, *, max_seq_len: int | None = None, gdn_impl: str = "op",
               dtype: torch.dtype = torch.float32, seed: int = 0, keep_bf16: bool = False) -> Qwen35ForCausalLM:
    """keep_bf16: a checkpoint's bf16 tensors stay bf16 (see models/weights.py); run it under fp32_compute."""
    resolved = resolve_source(source)
    if isinstance(resolved, Path):
        return Qwen35ForCausalLM.from_pretrained(resolved, dtype=dtype, max_seq_len=max_seq_len, gdn_impl=gdn_impl,
                                                 keep_bf16=keep_bf16)
    torch.manual_seed(seed)
    model = Qwen35ForCausalLM.from_preset(resolved, max_seq_len=max_seq_len, gdn_impl=gdn_impl)
    randomize_small_params(model, seed)
    return model.to(dtype).eval().requires_grad_(False)


@torch.no_grad()
def randomize_small_params(model: torch.nn.Module, seed: int) -> None:
    """Random-weight presets: give norms and gates non-default values so nothing is trivially identity."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith(("A_log", "dt_bias")):
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        elif p.dim() >= 2:
            p.normal_(0.0, 0.02, generator=gen)


@dataclass
class OpenedSource:
    """What every exporter needs to know about SOURCE before it loads any weight."""

    source_dir: Path | None  # None for a preset (random weights)
    config: Qwen35Config
    tokenizer: object | None  # tokenizers.Tokenizer when the folder has tokenizer.json
    random_weights: bool
    quality_gate: bool  # the caller's choice, or by default on for checkpoints and off for random weights


def open_source(source: str, out: str | Path, *, force: bool, quality_gate: bool | None = None) -> OpenedSource:
    """Refuse an existing --out without --force, resolve SOURCE, read its config and tokenizer (warning without one).

    quality_gate None: enforce quantization floors only on trained weights, where agreement means something."""
    resolved = resolve_source(source)
    source_dir = resolved if isinstance(resolved, Path) else None
    check_out(out, force, source_dir)
    config = Qwen35Config.from_json(source_dir) if source_dir else Qwen35Config.from_preset(str(resolved))
    tokenizer = None
    if source_dir and (source_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
    else:
        warnings.warn(f"SOURCE {source}: no tokenizer.json; the bundle will be run with token ids only")
    if not stop_ids(config, tokenizer):
        warnings.warn(f"SOURCE {source}: config.json has no eos_token_id and there is no tokenizer with <|im_end|> or "
                      "<|endoftext|>; the bundle will have no stop ids (generation stops only at the token limit)")
    random_weights = source_dir is None
    return OpenedSource(source_dir, config, tokenizer, random_weights,
                        quality_gate=not random_weights if quality_gate is None else quality_gate)


def vision_config(source_dir: Path | None):
    """SOURCE's vision tower config when it has one: config.json has a vision_config and the safetensors hold
    model.visual.* tensors; else None (a preset, a CausalLM save, or a config whose tower weights were left out)."""
    from qwen_mobile.models.config import Qwen35VisionConfig
    from qwen_mobile.models.weights import checkpoint_files, map_vision_key

    if source_dir is None:
        return None
    config = Qwen35VisionConfig.from_json(source_dir)
    if config is None:
        return None
    if not any(map_vision_key(key) is not None for key in checkpoint_files(source_dir)):
        warnings.warn(f"SOURCE {source_dir}: config.json has a vision_config but the safetensors hold no "
                      "model.visual.* tensors; exporting the text model only")
        return None
    return config


def check_context(max_seq_len: int, config: Qwen35Config) -> None:
    if max_seq_len > config.max_position_embeddings:
        raise ValueError(f"--max-seq-len {max_seq_len} exceeds the model's max_position_embeddings "
                         f"({config.max_position_embeddings})")


def model_section(source: str, config: Qwen35Config, n_params: int, random_weights: bool) -> dict:
    """The manifest's `model`: which model, from where, its size preset and config."""
    return {"id": Path(str(source)).name, "source": str(source), "size": size_name(config), "params": n_params,
            "random_weights": random_weights, "config": config.to_hf_dict()}


def stop_ids(config: Qwen35Config, tokenizer) -> list[int]:
    ids = list(config.eos_token_id)
    if tokenizer is not None:
        for token in ("<|im_end|>", "<|endoftext|>"):
            tid = tokenizer.token_to_id(token)
            if tid is not None and tid not in ids:
                ids.append(tid)
    return ids


def chat_template(source_dir: Path | None) -> str | None:
    path = source_dir / "tokenizer_config.json" if source_dir else None
    if path is None or not path.is_file():
        return None
    template = json.loads(path.read_text()).get("chat_template")
    if template is None and (source_dir / "chat_template.jinja").is_file():  # transformers >= 4.50 saves it apart
        template = (source_dir / "chat_template.jinja").read_text()
    return template


def dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def size_name(config: Qwen35Config) -> str | None:
    for name in ("0_8b", "2b", "4b", "9b"):
        preset = Qwen35Config.from_preset(name)
        if (preset.hidden_size, preset.num_hidden_layers, preset.linear_num_value_heads) == (
                config.hidden_size, config.num_hidden_layers, config.linear_num_value_heads):
            return name
    return None
