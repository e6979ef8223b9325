"""`qwen-mobile check`: our eager model against transformers on a checkpoint (logits, greedy tokens, speed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qwen_mobile.models import Qwen35Config, Qwen35ForCausalLM

from .source import resolve_source


@dataclass
class ParityReport:
    source: str
    prompt_len: int
    new_tokens: int
    max_abs_logit_diff: float
    greedy_ours: list[int]
    greedy_transformers: list[int]
    decode_tok_s_ours: float
    decode_tok_s_transformers: float
    extra: dict = field(default_factory=dict)

    @property
    def greedy_match(self) -> bool:
        return self.greedy_ours == self.greedy_transformers


@torch.no_grad()
def check_against_transformers(source: str, prompt_ids: list[int], new_tokens: int = 16,
                               gdn_impl: str = "op") -> ParityReport:
    """Load `source` (HF folder) with our model and with transformers; compare prefill logits and greedy decoding."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_source(source)
    if not isinstance(resolved, Path):
        raise ValueError(f"check needs a checkpoint folder or shipped model, not the random preset '{source}'")
    ours = Qwen35ForCausalLM.from_pretrained(resolved, max_seq_len=len(prompt_ids) + new_tokens + 1,
                                             gdn_impl=gdn_impl)
    theirs = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    ours.reset()
    diff = (ours(ids, torch.arange(len(prompt_ids))) - theirs(input_ids=ids, use_cache=False).logits).abs().max()

    t0 = time.perf_counter()
    greedy_ours = ours.generate(prompt_ids, new_tokens)
    dt_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    greedy_theirs = theirs.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=0)[0, len(prompt_ids):].tolist()
    dt_theirs = time.perf_counter() - t0
    return ParityReport(str(source), len(prompt_ids), new_tokens, float(diff), greedy_ours, greedy_theirs,
                        new_tokens / dt_ours, new_tokens / dt_theirs)


def describe(config: Qwen35Config) -> dict:
    return {
        "layers": f"{config.num_hidden_layers} ({config.num_linear_layers} delta-net + {config.num_full_layers} attention)",
        "hidden / intermediate": f"{config.hidden_size} / {config.intermediate_size}",
        "delta-net heads k/v x dim": f"{config.linear_num_key_heads}/{config.linear_num_value_heads} x "
                                     f"{config.linear_key_head_dim}",
        "attention heads q/kv x dim": f"{config.num_attention_heads}/{config.num_key_value_heads} x {config.head_dim}",
        "vocab": config.vocab_size,
        "tied embeddings": config.tie_word_embeddings,
    }
