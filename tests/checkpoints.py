"""Tiny random Qwen3.5 checkpoints built by transformers itself, for tests to save with `save_pretrained`.

A plain module (not conftest.py) so test files import it by a name no other folder's conftest shadows.
"""

from __future__ import annotations

import torch

# Two head regimes: value heads == key heads (0.8B/2B) and value heads == 2x key heads (4B/9B).
HEAD_REGIMES = {"hv1x": dict(linear_num_key_heads=2, linear_num_value_heads=2),
                "hv2x": dict(linear_num_key_heads=2, linear_num_value_heads=4)}


def tiny_text_config(regime: str = "hv2x", tied: bool = True, **overrides) -> dict:
    """Tiny Qwen3_5TextConfig kwargs; head dims are multiples of 32 so kernel fast paths are exercised."""
    cfg = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, linear_key_head_dim=32, linear_value_head_dim=32,
               linear_conv_kernel_dim=4, max_position_embeddings=512, tie_word_embeddings=tied, rms_norm_eps=1e-6,
               rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.25,
                                    mrope_section=[1, 1, 2], mrope_interleaved=True),
               eos_token_id=1)
    cfg.update(HEAD_REGIMES[regime])
    cfg.update(overrides)
    return cfg


@torch.no_grad()
def perturb_small_params(model: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights start at 0/1 and A_log/dt_bias at fixed values; random ones make offset or sign bugs visible."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith(("A_log", "dt_bias")):
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def make_hf_causal_lm(regime="hv2x", tied=True, seed=0, **overrides):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(seed)
    model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**tiny_text_config(regime, tied, **overrides))).eval()
    perturb_small_params(model, seed)
    return model


def make_hf_conditional_generation(regime="hv2x", tied=True, seed=0):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    torch.manual_seed(seed)
    text = tiny_text_config(regime, tied)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text["hidden_size"],
                  num_position_embeddings=16)
    config = Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=tied)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    perturb_small_params(model, seed)
    return model


SPECIAL = {"<|image_pad|>": 150, "<|video_pad|>": 151, "<|vision_start|>": 152, "<|vision_end|>": 153,
           "<|im_start|>": 154, "<|im_end|>": 155, "<think>": 156, "</think>": 157}


def write_word_tokenizer(folder) -> None:
    """A word-level tokenizer over the tiny VLM's 160 ids: w0..w149 are words, the vision and ChatML tokens sit at the
    ids the checkpoint's config names (image 150, vision_start 152, vision_end 153), 159 is unknown; whitespace splits.
    Enough for the chat template and the image span to go through real tokenization."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    # No <|endoftext|>: this random model answers this prompt with id 158 first, which would end every reply at once.
    vocab = {f"w{i}": i for i in range(150)} | SPECIAL | {"w158": 158, "<unk>": 159}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(list(SPECIAL))
    tok.save(str(folder / "tokenizer.json"))
