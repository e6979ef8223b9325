"""Sampling filters against transformers' logits processors, and our turn-by-turn ChatML against the shipped Jinja
template (rendered by transformers itself)."""

import json

import pytest
import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from qwen_mobile.export.source import SHIPPED_MODELS
from qwen_mobile.runtime.chat import ChatTemplate, thinking_default, thinking_default_from_template
from qwen_mobile.runtime.sampling import Sampler, SamplingConfig, SplitMix64, filtered_scores

CASES = [dict(temperature=0.7), dict(temperature=1.0, top_k=5), dict(temperature=0.8, top_p=0.9),
         dict(temperature=1.3, top_k=40, top_p=0.5, repetition_penalty=1.3), dict(repetition_penalty=1.5)]


def reference_scores(logits, context, cfg: SamplingConfig):
    scores = logits[None].double()  # our rule works in float64 (runtime/SAMPLING.md)
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
        torch.testing.assert_close(ours[kept], ref[kept], atol=1e-12, rtol=1e-12)


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    cfg = SamplingConfig(temperature=0.8, top_k=4, seed=11)
    sampler = Sampler(cfg)
    counts = torch.bincount(torch.tensor([sampler(logits) for _ in range(20000)]), minlength=6).double() / 20000
    expected = torch.softmax(filtered_scores(logits, None, cfg), -1).double()
    assert counts[4:].sum() == 0, "top-k let a filtered token through"
    torch.testing.assert_close(counts, expected, atol=0.015, rtol=0)  # ~4 sigma at n=20000


def test_splitmix64_matches_the_published_sequence():
    # Vigna's splitmix64.c (and Java's SplittableRandom) from seed 0; every runtime's generator is checked against
    # the same numbers, so they cannot drift apart.
    rng = SplitMix64(0)
    assert [rng.next_u64() for _ in range(4)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
                                                 0xF88BB8A8724C81EC]


def loop_sample(logits, context, cfg: SamplingConfig, draws: int) -> list[int]:
    """runtime/SAMPLING.md step by step with Python floats and lists: the independent reference for Sampler."""
    import math

    s = [float(x) for x in logits.float().tolist()]
    if cfg.repetition_penalty != 1.0 and context:
        for i in set(context):
            s[i] = s[i] * cfg.repetition_penalty if s[i] < 0 else s[i] / cfg.repetition_penalty
    if cfg.temperature == 0:
        return [max(range(len(s)), key=lambda i: (s[i], -i))] * draws
    s = [x / cfg.temperature for x in s]
    if 0 < cfg.top_k < len(s):
        kth = sorted(s, reverse=True)[cfg.top_k - 1]
        s = [x if x >= kth else -math.inf for x in s]
    if cfg.top_p < 1:
        order = sorted(range(len(s)), key=lambda i: (s[i], i))
        top = s[order[-1]]
        c, acc = [], 0.0
        for i in order:
            acc += math.exp(s[i] - top) if s[i] != -math.inf else 0.0
            c.append(acc)
        for j, i in enumerate(order[:-1]):
            if c[j] / c[-1] <= 1 - cfg.top_p:
                s[i] = -math.inf
    top = max(s)
    p = [math.exp(x - top) if x != -math.inf else 0.0 for x in s]
    a, acc = [], 0.0
    for x in p:
        acc += x
        a.append(acc)
    state, out = cfg.seed, []
    for _ in range(draws):
        state = (state + 0x9E3779B97F4A7C15) % 2**64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        u = ((z ^ (z >> 31)) >> 11) * 2.0**-53
        hits = [i for i in range(len(a)) if a[i] > u * a[-1]]
        out.append(hits[0] if hits else max(i for i in range(len(p)) if p[i] > 0))
    return out


@pytest.mark.parametrize("case", CASES + [dict(), dict(temperature=0.9, top_k=3)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "greedy")
def test_sampler_follows_the_written_rule(case):
    gen = torch.Generator().manual_seed(1)
    for trial in range(10):
        # Rounded logits make ties, so the tie rules of top-k, top-p and greedy are exercised too.
        logits = (torch.randn(200, generator=gen) * 2).round(decimals=1)
        context = torch.randint(0, 200, (15,), generator=gen).tolist()
        cfg = SamplingConfig(**case, seed=1000 + trial)
        sampler = Sampler(cfg)
        ours = [sampler(logits, context) for _ in range(12)]
        assert ours == loop_sample(logits, context, cfg, 12), f"trial {trial}"


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
