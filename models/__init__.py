"""qwen_mobile.models: the Qwen3.5 text decoder we own, its config and checkpoint loading."""

from .config import ConfigError, Qwen35Config, available_presets
from .gated_delta import chunked_reference, gated_delta_rule, recurrent_reference
from .qwen35 import Qwen35ForCausalLM
from .weights import CheckpointError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Qwen35Config",
    "Qwen35ForCausalLM",
    "available_presets",
    "chunked_reference",
    "gated_delta_rule",
    "recurrent_reference",
]
