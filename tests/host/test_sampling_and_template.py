"""Sampling filters against transformers' logits processors, and our turn-by-turn ChatML against the shipped Jinja
template (rendered by transformers itself)."""

import json

import pytest
import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from qwen_mobile.export.api import SHIPPED_MODELS
from qwen_mobile.runtime.chat import ChatTemplate, thinking_default, thinking_default_from_template
from qwen_mobile.runtime.sampling import Sampler, SamplingConfig, filtered_scores

CASES = [dict(temperature=0.7), dict(temperature=1.0, top_k=5), dict(temperature=0.8, top_p=0.9),
         dict(temperature=1.3, top_k=40, top_p=0.5, repetition_penalty=1.3), dict(repetition_penalty=1.5)]


def reference_scores(logits, context, cfg: SamplingConfig):
    scores = logits[None].clone()
    ids = torch.tensor([context])
    if cfg.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty)(ids, scores)
    if cfg.temperature > 0:
        scores = TemperatureLogitsWarper(cfg.temperature)(ids, scores)
        if cfg.top_k:
            scores = TopKLogitsWarper(cfg.top_k)(ids, scores)
        if cfg.top_p < 1:
            scores = TopPLogitsWarper(cfg.top_p)(ids, scores)
    return scores[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_filters_match_transformers(case):
    gen = torch.Generator().manual_seed(0)
    cfg = SamplingConfig(**case)
    for trial in range(20):
        logits = torch.randn(300, generator=gen) * 3
        context = torch.randint(0, 300, (25,), generator=gen).tolist()
        ours, ref = filtered_scores(logits, context, cfg), reference_scores(logits, context, cfg)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), f"trial {trial}: different tokens kept"
        kept = ~torch.isinf(ref)
        torch.testing.assert_close(ours[kept], ref[kept], atol=1e-6, rtol=1e-6)


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    cfg = SamplingConfig(temperature=0.8, top_k=4, seed=11)
    sampler = Sampler(cfg)
    counts = torch.bincount(torch.tensor([sampler(logits) for _ in range(20000)]), minlength=6).double() / 20000
    expected = torch.softmax(filtered_scores(logits, None, cfg), -1).double()
    assert counts[4:].sum() == 0, "top-k let a filtered token through"
    torch.testing.assert_close(counts, expected, atol=0.015, rtol=0)  # ~4 sigma at n=20000


def test_bad_sampling_values_name_the_flag():
    with pytest.raises(ValueError, match="--top-p"):
        SamplingConfig(temperature=1, top_p=0)
    with pytest.raises(ValueError, match="--temperature"):
        SamplingConfig(temperature=-1)


@pytest.fixture(scope="module")
def nano_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SHIPPED_MODELS["nano"])


@pytest.mark.parametrize("thinking", [False, True])
def test_first_turn_matches_the_shipped_jinja_template(nano_tokenizer, thinking):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
    ref = nano_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=thinking)
    t = ChatTemplate(thinking=thinking)
    assert t.system("You write Python.") + t.user("def add(a, b):") == ref


def test_later_turns_match_the_template_where_it_keeps_history(nano_tokenizer):
    """Turn by turn equals the Jinja rendering except for the think block the template strips from older replies."""
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}]
    ref = nano_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    t = ChatTemplate(thinking=False)
    ours = t.user("a") + "b<|im_end|>" + t.close_assistant(True) + t.user("c")
    assert ours.replace("<think>\n\n</think>\n\n", "", 1) == ref


def test_thinking_default_read_from_the_template():
    template = json.loads((SHIPPED_MODELS["nano"] / "tokenizer_config.json").read_text())["chat_template"]
    assert thinking_default_from_template(template) is False
    on = template.replace("enable_thinking is defined and enable_thinking",
                          "enable_thinking is not defined or enable_thinking")
    assert thinking_default_from_template(on) is True
    assert thinking_default("9b", None) is True and thinking_default("0_8b", None) is False
