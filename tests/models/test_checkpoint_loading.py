"""Loading local HF folders: round trips, key layouts, and every bad input with an error that names it."""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_mobile.models import CheckpointError, ConfigError, Qwen35ForCausalLM

LOGITS_ATOL = 1e-4


def logits_of(model, ids):
    model.reset()
    with torch.no_grad():
        return model(ids, torch.arange(ids.shape[1]))


def assert_loaded_as_saved(model, folder, skipped: tuple[str, ...]):
    """Every parameter of `model` is bit-equal to the tensor saved under its name (the multimodal layout's
    `model.language_model.` prefix read as `model.`), and every saved tensor but the `skipped` ones was loaded."""
    saved = load_file(folder / "model.safetensors")
    text = {k.replace("model.language_model.", "model.", 1): v for k, v in saved.items() if not k.startswith(skipped)}
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(text)
    for name, p in params.items():
        assert torch.equal(p, text[name]), name


@pytest.mark.parametrize("kind", ["causal", "cond"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
def test_round_trip(hf_checkpoint, kind, sharded):
    folder, hf = hf_checkpoint(kind, "hv2x", True, sharded)
    assert (folder / "model.safetensors.index.json").is_file() == sharded
    ours = Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=64, gdn_impl="reference")
    ids = torch.randint(0, 160, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(logits_of(ours, ids), expected, atol=LOGITS_ATOL, rtol=0)


def test_half_precision_checkpoint_loads_as_requested_dtype(hf_checkpoint, tmp_path):
    folder, hf = hf_checkpoint("causal", "hv1x", True)
    bf16 = tmp_path / "bf16"
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(bf16)  # a copy: the session fixture is shared
    ours = Qwen35ForCausalLM.from_pretrained(bf16, dtype=torch.float32, max_seq_len=32, gdn_impl="reference")
    assert ours.model.embed_tokens.weight.dtype == torch.float32
    assert ours.model.layers[0].linear_attn.A_log.dtype == torch.float32
    ours16 = Qwen35ForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16, max_seq_len=32, gdn_impl="reference")
    assert ours16.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 160, (1, 9), generator=torch.Generator().manual_seed(0))
    # bf16 weights promoted to fp32 give the same function as the bf16 checkpoint upcast by transformers.
    with torch.no_grad():
        ref = type(hf).from_pretrained(bf16, dtype=torch.float32)(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(logits_of(ours, ids), ref, atol=LOGITS_ATOL, rtol=0)


def test_vision_and_mtp_keys_are_skipped(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("cond", "hv1x", True)
    dst = tmp_path / "with-mtp"
    shutil.copytree(folder, dst)
    tensors = load_file(dst / "model.safetensors")
    assert any(k.startswith("model.visual.") for k in tensors)
    tensors["mtp.fc.weight"] = torch.zeros(64, 128)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    model = Qwen35ForCausalLM.from_pretrained(dst, max_seq_len=32, gdn_impl="reference")
    assert_loaded_as_saved(model, dst, skipped=("model.visual.", "mtp."))


def rewrite(folder, dst, edit):
    shutil.copytree(folder, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Qwen35ForCausalLM.from_pretrained(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Qwen35ForCausalLM.from_pretrained(tmp_path / "nope")


def test_unknown_model_type(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint()
    dst = tmp_path / "ck"
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "qwen3_next"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_missing_tensor_named(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint()
    key = "model.layers.1.linear_attn.A_log"
    dst = rewrite(folder, tmp_path / "ck", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=f"'{key}' is missing"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_missing_untied_lm_head_named(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("causal", "hv2x", False)
    dst = rewrite(folder, tmp_path / "ck", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="'lm_head.weight' is missing"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_extra_unknown_tensor_named(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint()
    dst = rewrite(folder, tmp_path / "ck", lambda t: t.__setitem__("model.layers.0.linear_attn.surprise", torch.ones(2)))
    with pytest.raises(CheckpointError, match=r"model.safetensors: unexpected tensor 'model.layers.0.linear_attn.surprise'"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_wrong_shape_named(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint()
    key = "model.layers.3.self_attn.q_proj.weight"
    dst = rewrite(folder, tmp_path / "ck", lambda t: t.__setitem__(key, t[key][:64]))
    with pytest.raises(CheckpointError, match=rf"'{key}' has shape \(64, 64\), expected \(256, 64\)"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_nonzero_conv_bias_rejected_zero_bias_tolerated(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint()
    key = "model.layers.0.linear_attn.conv1d.bias"
    ok = rewrite(folder, tmp_path / "zero", lambda t: t.__setitem__(key, torch.zeros(256)))
    model = Qwen35ForCausalLM.from_pretrained(ok, max_seq_len=16, gdn_impl="reference")
    assert_loaded_as_saved(model, ok, skipped=(key,))  # a zero bias adds nothing: our conv has none
    bad = rewrite(folder, tmp_path / "nonzero", lambda t: t.__setitem__(key, torch.ones(256)))
    with pytest.raises(CheckpointError, match="non-zero conv bias"):
        Qwen35ForCausalLM.from_pretrained(bad)


def test_truncated_safetensors_named(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint()
    dst = tmp_path / "ck"
    shutil.copytree(folder, dst)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*truncated or corrupt"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_garbage_safetensors_named(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint()
    dst = tmp_path / "ck"
    shutil.copytree(folder, dst)
    (dst / "model.safetensors").write_bytes(b"\x00" * 1000)
    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot be read as safetensors \(truncated or corrupt"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_missing_shard_named(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(sharded=True)
    dst = tmp_path / "ck"
    shutil.copytree(folder, dst)
    shard = sorted(dst.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard {shard.name}, which is missing"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_pickles_are_never_loaded(hf_checkpoint, tmp_path):
    folder, hf = hf_checkpoint()
    dst = tmp_path / "ck"
    dst.mkdir()
    shutil.copy(folder / "config.json", dst)
    torch.save(hf.state_dict(), dst / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickles are never loaded"):
        Qwen35ForCausalLM.from_pretrained(dst)


def test_prompt_longer_than_cache(hf_checkpoint):
    folder, _ = hf_checkpoint()
    model = Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=16, gdn_impl="reference")
    with pytest.raises(ValueError, match="max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long), torch.arange(17))
    with pytest.raises(ValueError, match="max_seq_len=16"):
        model.generate([1] * 10, max_new_tokens=7)


def test_max_seq_len_beyond_model(hf_checkpoint):
    folder, _ = hf_checkpoint()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=4096)
