"""Config parsing and the size presets, checked against the architecture document's numbers."""

import json

import pytest
import torch

from qwen_mobile.models import ConfigError, Qwen35Config, Qwen35ForCausalLM, available_presets
from checkpoints import tiny_text_config

# Text-decoder parameters counting a tied table once, from ../shared/qwen35-architecture.md section 3.
DOC_PARAMS = {"0_8b": 752_393_024, "2b": 1_881_825_088, "4b": 4_205_751_296, "9b": 8_953_803_264}
DOC_CONV_DIM = {"0_8b": 6144, "2b": 6144, "4b": 8192, "9b": 8192}


def test_presets_listed():
    assert set(DOC_PARAMS) | {"tiny"} <= set(available_presets())


@pytest.mark.parametrize("name", sorted(DOC_PARAMS))
def test_preset_parameter_count_matches_document(name):
    with torch.device("meta"):
        model = Qwen35ForCausalLM.from_preset(name, max_seq_len=16, gdn_impl="reference")
    n = sum(p.numel() for p in model.parameters())  # a tied Parameter is yielded once
    assert n == DOC_PARAMS[name]
    assert model.config.conv_dim == DOC_CONV_DIM[name]
    assert model.config.layer_types[3::4] == ["full_attention"] * (model.config.num_hidden_layers // 4)


def test_flat_and_nested_configs_agree():
    flat = dict(tiny_text_config("hv2x"), model_type="qwen3_5_text")
    nested = {"model_type": "qwen3_5", "tie_word_embeddings": True,
              "text_config": {k: v for k, v in flat.items() if k != "tie_word_embeddings"},
              "vision_config": {"depth": 1}}
    a, b = Qwen35Config.from_dict(flat), Qwen35Config.from_dict(nested)
    assert a == b
    assert a.rope_theta == 1e4 and a.partial_rotary_factor == 0.25 and a.rotary_dim == 8


def test_unknown_keys_ignored_and_legacy_rope_keys_read():
    raw = dict(tiny_text_config("hv1x"), model_type="qwen3_5_text", some_future_key={"x": 1})
    raw.pop("rope_parameters")
    raw.update(rope_theta=1e7, partial_rotary_factor=0.5)
    cfg = Qwen35Config.from_dict(raw)
    assert cfg.rope_theta == 1e7 and cfg.rotary_dim == 16


@pytest.mark.parametrize("key", ["hidden_size", "linear_num_value_heads", "vocab_size"])
def test_missing_required_key_is_named(key):
    raw = dict(tiny_text_config(), model_type="qwen3_5_text")
    del raw[key]
    with pytest.raises(ConfigError, match=f"'{key}'"):
        Qwen35Config.from_dict(raw)


def test_unknown_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(tiny_text_config(), model_type="llama")))
    with pytest.raises(ConfigError, match=r"model_type.*'llama'"):
        Qwen35Config.from_json(tmp_path)


def test_inconsistent_heads_are_named():
    raw = dict(tiny_text_config(), model_type="qwen3_5_text", linear_num_key_heads=3, linear_num_value_heads=4)
    with pytest.raises(ConfigError, match="linear_num_value_heads"):
        Qwen35Config.from_dict(raw)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="available"):
        Qwen35Config.from_preset("70b")
