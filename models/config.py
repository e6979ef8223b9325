"""Qwen3.5 text-decoder and vision-tower configuration.

`Qwen35Config` keeps the Hugging Face keys it knows and derives the rest (conv_dim, rotary_dim, ...). It reads
either a flat `Qwen3_5TextConfig` (`model_type: qwen3_5_text`) or the nested `Qwen3_5Config`
(`model_type: qwen3_5`, text fields under `text_config`). Unknown keys are ignored; missing structural keys are an
error naming the key. Optional keys default to what transformers 5.23 uses, so that a sparse config means the same
model here and there. `Qwen35VisionConfig` reads the nested config's `vision_config` by the same rules.
"""

from __future__ import annotations

import dataclasses
import json
import math
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


def read_config_json(path: str | Path) -> tuple[dict, Path]:
    """A checkpoint's config.json (given the folder or the file) parsed, with the path it was read from."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        return json.loads(path.read_text()), path
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


def known_fields(cls, section: dict) -> dict:
    """The keys of an HF config section that the dataclass `cls` keeps (unknown keys and nulls are left out)."""
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in section.items() if k in known and v is not None}


def build_config(cls, kwargs: dict, source: str):
    """`cls(**kwargs)`, with a validation error prefixed by the file it came from."""
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


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

        kwargs = known_fields(cls, text)
        kwargs.update({k: rope[k] for k in ("rope_theta", "partial_rotary_factor", "mrope_section") if k in rope})
        return build_config(cls, kwargs | {"model_type": "qwen3_5_text"}, source)

    @classmethod
    def from_json(cls, path: str | Path) -> "Qwen35Config":
        raw, path = read_config_json(path)
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


# Vision tower -----------------------------------------------------------------------------------------------------
# `vision_config` of a `qwen3_5` config.json; old checkpoints wrote model_type 'qwen3_5' there (transformers fixes it
# up the same way).
VISION_MODEL_TYPES = ("qwen3_5_vision", "qwen3_5")

# Structural keys with no safe default (transformers' defaults are the 9B tower, which a smaller checkpoint is not).
VISION_REQUIRED_KEYS = ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size")

# Token ids live at the top level of the composite config; they tell the prompt where image embeddings go.
VISION_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


@dataclass
class Qwen35VisionConfig:
    """The ViT beside the text decoder (`Qwen3_5VisionConfig`) plus the composite config's vision token ids.

    Like `Qwen35Config`: unknown keys are ignored, missing structural keys are an error naming the key, optional keys
    default to transformers 5.23's values.
    """

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    # Defaults below are transformers' Qwen3_5VisionConfig / Qwen3_5Config defaults.
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0
    image_token_id: int = 248056
    video_token_id: int = 248057
    vision_start_token_id: int = 248053
    vision_end_token_id: int = 248054
    model_type: str = "qwen3_5_vision"

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ConfigError(f"vision_config field '{key}': {why}")

        for key in ("patch_size", "temporal_patch_size"):
            if not isinstance(getattr(self, key), int):
                fail(key, f"{getattr(self, key)!r} is not an int (non-square patches are not supported)")
        if self.hidden_size % self.num_heads:
            fail("num_heads", f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
        if self.head_dim % 4:
            # The 2-D rotary embedding gives half of each head to rows and half to columns, each rotated in halves.
            fail("num_heads", f"head_dim={self.head_dim} (hidden_size / num_heads) is not a multiple of 4")
        side = math.isqrt(self.num_position_embeddings)
        if side * side != self.num_position_embeddings:
            fail("num_position_embeddings", f"{self.num_position_embeddings} is not a square (the learned positions "
                 "form a square grid)")
        if self.hidden_act != "gelu_pytorch_tanh":
            fail("hidden_act", f"'{self.hidden_act}' is not supported (Qwen3.5's tower uses 'gelu_pytorch_tanh')")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch: channels x temporal x patch x patch (1536 for 3 x 2 x 16 x 16)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def num_grid_per_side(self) -> int:
        """Side of the square grid of learned positions (48 for 2304)."""
        return math.isqrt(self.num_position_embeddings)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "Qwen35VisionConfig":
        """From a composite `qwen3_5` config (the `vision_config` object plus the top-level token ids)."""
        if raw.get("model_type") not in NESTED_MODEL_TYPES:
            raise ConfigError(f"{source}: field 'model_type' is {raw.get('model_type')!r}; a vision tower needs a "
                              f"composite config, one of {list(NESTED_MODEL_TYPES)}")
        vision = raw.get("vision_config")
        if not isinstance(vision, dict):
            raise ConfigError(f"{source}: field 'vision_config' is missing or not an object")
        if vision.get("model_type", "qwen3_5_vision") not in VISION_MODEL_TYPES:
            raise ConfigError(f"{source}: field 'vision_config.model_type' is {vision.get('model_type')!r}; expected "
                              f"one of {list(VISION_MODEL_TYPES)}")
        missing = [k for k in VISION_REQUIRED_KEYS if vision.get(k) is None]
        if missing:
            raise ConfigError(f"{source}: required field 'vision_config.{missing[0]}' is missing"
                              + (f" (also missing: {missing[1:]})" if missing[1:] else ""))
        rope = dict(vision.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", "axial")
        if rope_type != "axial":
            raise ConfigError(f"{source}: field 'vision_config.rope_parameters.rope_type' is {rope_type!r}; only "
                              "'axial' is supported")
        kwargs = known_fields(cls, vision)
        if rope.get("rope_theta") is not None:
            kwargs["rope_theta"] = rope["rope_theta"]
        kwargs.update({k: raw[k] for k in VISION_TOKEN_KEYS if raw.get(k) is not None})
        return build_config(cls, kwargs | {"model_type": "qwen3_5_vision"}, source)

    @classmethod
    def from_json(cls, path: str | Path) -> "Qwen35VisionConfig | None":
        """The tower of a checkpoint folder (or its config.json), or None when it has none (a text-only save)."""
        raw, path = read_config_json(path)
        if raw.get("model_type") not in NESTED_MODEL_TYPES or raw.get("vision_config") is None:
            return None
        return cls.from_dict(raw, source=str(path))
