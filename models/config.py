"""Qwen3.5 text-decoder configuration.

`Qwen35Config` keeps the Hugging Face keys it knows and derives the rest (conv_dim, rotary_dim, ...). It reads
either a flat `Qwen3_5TextConfig` (`model_type: qwen3_5_text`) or the nested `Qwen3_5Config`
(`model_type: qwen3_5`, text fields under `text_config`). Unknown keys are ignored; missing structural keys are an
error naming the key. Optional keys default to what transformers 5.23 uses, so that a sparse config means the same
model here and there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent / "presets"

TEXT_MODEL_TYPES = ("qwen3_5_text",)
NESTED_MODEL_TYPES = ("qwen3_5",)

# Structural keys with no safe default: a config without them describes some other model.
REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "linear_num_key_heads",
    "linear_num_value_heads",
)


class ConfigError(ValueError):
    """A config.json (or preset) that does not describe a Qwen3.5 text decoder we can build."""


@dataclass
class Qwen35Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    # Defaults below are transformers' Qwen3_5TextConfig defaults.
    head_dim: int = 256
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.25
    mrope_section: list[int] = field(default_factory=lambda: [11, 11, 10])
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    layer_types: list[str] | None = None
    full_attention_interval: int = 4
    hidden_act: str = "silu"
    attention_bias: bool = False
    eos_token_id: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    model_type: str = "qwen3_5_text"

    def __post_init__(self) -> None:
        if self.layer_types is None:
            interval = self.full_attention_interval
            self.layer_types = [
                "full_attention" if (i + 1) % interval == 0 else "linear_attention"
                for i in range(self.num_hidden_layers)
            ]
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        self.eos_token_id = list(self.eos_token_id or [])
        self._validate()

    def _validate(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ConfigError(f"config field '{key}': {why}")

        if len(self.layer_types) != self.num_hidden_layers:
            fail("layer_types", f"has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}")
        unknown = sorted(set(self.layer_types) - {"linear_attention", "full_attention"})
        if unknown:
            fail("layer_types", f"unknown layer type(s) {unknown}")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            fail("linear_num_value_heads", f"{self.linear_num_value_heads} is not a multiple of "
                 f"linear_num_key_heads={self.linear_num_key_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_attention_heads", f"{self.num_attention_heads} is not a multiple of "
                 f"num_key_value_heads={self.num_key_value_heads}")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            fail("partial_rotary_factor", f"{self.partial_rotary_factor} gives rotary_dim={self.rotary_dim} "
                 f"for head_dim={self.head_dim}; it must be even and in (0, head_dim]")
        if self.hidden_act != "silu":
            fail("hidden_act", f"'{self.hidden_act}' is not supported (Qwen3.5 uses 'silu')")
        if self.attention_bias:
            fail("attention_bias", "true is not supported (Qwen3.5 attention has no biases)")

    # Derived sizes ------------------------------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: q | k | v of the delta-net layers."""
        return 2 * self.linear_num_key_heads * self.linear_key_head_dim + self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def num_linear_layers(self) -> int:
        return self.layer_types.count("linear_attention")

    @property
    def num_full_layers(self) -> int:
        return self.layer_types.count("full_attention")

    # Construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "Qwen35Config":
        model_type = raw.get("model_type")
        tie = raw.get("tie_word_embeddings")
        if model_type in NESTED_MODEL_TYPES:
            text = raw.get("text_config")
            if not isinstance(text, dict):
                raise ConfigError(f"{source}: field 'text_config' is missing or not an object "
                                  f"(model_type '{model_type}' nests the text decoder under it)")
            # The composite config's tie flag is the one transformers applies to ConditionalGeneration.
            text = dict(text)
            if tie is not None:
                text["tie_word_embeddings"] = tie
            text.setdefault("eos_token_id", raw.get("eos_token_id"))
        elif model_type in TEXT_MODEL_TYPES:
            text = dict(raw)
        else:
            raise ConfigError(f"{source}: field 'model_type' is {model_type!r}; expected one of "
                              f"{list(TEXT_MODEL_TYPES + NESTED_MODEL_TYPES)}")

        missing = [k for k in REQUIRED_KEYS if text.get(k) is None]
        if missing:
            raise ConfigError(f"{source}: required field '{missing[0]}' is missing"
                              + (f" (also missing: {missing[1:]})" if missing[1:] else ""))

        # RoPE settings live in `rope_parameters` (transformers 5) or at top level (older exports).
        rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
        for key in ("rope_theta", "partial_rotary_factor", "mrope_section"):
            if key not in rope and text.get(key) is not None:
                rope[key] = text[key]
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"{source}: field 'rope_parameters.rope_type' is {rope_type!r}; only 'default' is supported")

        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in text.items() if k in known and v is not None}
        kwargs.update({k: rope[k] for k in ("rope_theta", "partial_rotary_factor", "mrope_section") if k in rope})
        kwargs["model_type"] = "qwen3_5_text"
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "Qwen35Config":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_preset(cls, name: str) -> "Qwen35Config":
        path = PRESETS_DIR / f"{name}.json"
        if not path.is_file():
            raise ConfigError(f"unknown preset '{name}'; available: {available_presets()}")
        return cls.from_json(path)

    def to_hf_dict(self) -> dict[str, Any]:
        """The flat `qwen3_5_text` config.json form (what `Qwen3_5TextConfig(**d)` accepts)."""
        d = dataclasses.asdict(self)
        rope = {"rope_type": "default", "rope_theta": d.pop("rope_theta"),
                "partial_rotary_factor": d.pop("partial_rotary_factor"), "mrope_section": d.pop("mrope_section"),
                "mrope_interleaved": True}
        d.pop("full_attention_interval")
        d["rope_parameters"] = rope
        return d


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
