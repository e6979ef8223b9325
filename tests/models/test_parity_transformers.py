"""Our model vs transformers' Qwen3_5ForCausalLM / Qwen3_5ForConditionalGeneration on random tiny checkpoints."""

import pytest
import torch

from qwen_mobile.models import Qwen35ForCausalLM

LOGITS_ATOL = 1e-4  # fp32 logits; issue bound. Measured ~5e-7 on these configs.
STEPWISE_ATOL = 1e-5  # our own prefill vs our own token-by-token path: same weights, different delta-rule forms
PREFILL_LENGTHS = [1, 7, 63, 64, 65, 130]  # 1: decode branch; 63/64/65: chunk edges; 130: ragged multi-chunk

CHECKPOINTS = [
    pytest.param("causal", "hv1x", True, id="causal-hv1x-tied"),  # 0.8B/2B head regime
    pytest.param("causal", "hv1x", False, id="causal-hv1x-untied"),
    pytest.param("causal", "hv2x", True, id="causal-hv2x-tied"),  # 4B head regime
    pytest.param("causal", "hv2x", False, id="causal-hv2x-untied"),  # 9B head regime, own lm_head
    pytest.param("cond", "hv1x", True, id="condgen-hv1x-tied"),  # real releases: model.language_model.*
    pytest.param("cond", "hv2x", False, id="condgen-hv2x-untied"),
]


def hf_logits(hf_model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(input_ids=ids, use_cache=False).logits.float()


def token_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


# "op": our native kernel (the default, what export uses); "reference": the pure-PyTorch references.
IMPLS = ["op", "reference"]


@pytest.fixture(scope="module")
def loaded(hf_checkpoint):
    cache = {}

    def get(kind, regime, tied, impl="reference"):
        key = (kind, regime, tied)
        if key not in cache:
            folder, hf = hf_checkpoint(kind, regime, tied)
            ours = Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=256, gdn_impl="reference")
            cache[key] = (ours, hf)
        ours, hf = cache[key]
        return ours.set_gdn_impl(impl), hf

    return get


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind,regime,tied", CHECKPOINTS)
def test_prefill_logits_match(loaded, kind, regime, tied, impl):
    ours, hf = loaded(kind, regime, tied, impl)
    ids = token_ids(max(PREFILL_LENGTHS), ours.config.vocab_size)
    expected = hf_logits(hf, ids)
    for t in PREFILL_LENGTHS:
        ours.reset()
        with torch.no_grad():
            got = ours(ids[:, :t], torch.arange(t))
        # Causal: the first t positions of the long reference are the reference for a t-token prefill.
        torch.testing.assert_close(got, expected[:, :t], atol=LOGITS_ATOL, rtol=0, msg=lambda m: f"T={t}: {m}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind,regime,tied", CHECKPOINTS)
def test_decode_after_prefill_matches(loaded, kind, regime, tied, impl):
    ours, hf = loaded(kind, regime, tied, impl)
    prefill, steps = 65, 32
    ids = token_ids(prefill + steps, ours.config.vocab_size, seed=1)
    expected = hf_logits(hf, ids)
    ours.reset()
    with torch.no_grad():
        ours(ids[:, :prefill], torch.arange(prefill))
        for i in range(prefill, prefill + steps):
            got = ours(ids[:, i:i + 1], torch.tensor([i]))
            torch.testing.assert_close(got[:, 0], expected[:, i], atol=LOGITS_ATOL, rtol=0,
                                       msg=lambda m: f"decode step at position {i}: {m}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind,regime,tied", CHECKPOINTS[:3])
def test_prefill_equals_single_token_steps(loaded, kind, regime, tied, impl):
    ours, _ = loaded(kind, regime, tied, impl)
    t = 70
    ids = token_ids(t, ours.config.vocab_size, seed=2)
    with torch.no_grad():
        ours.reset()
        whole = ours(ids, torch.arange(t))
        ours.reset()
        steps = torch.cat([ours(ids[:, i:i + 1], torch.tensor([i])) for i in range(t)], dim=1)
    torch.testing.assert_close(steps, whole, atol=STEPWISE_ATOL, rtol=0)


def test_batch_of_two_matches_each_row(hf_checkpoint):
    folder, hf = hf_checkpoint("causal", "hv2x", True)
    ours = Qwen35ForCausalLM.from_pretrained(folder, max_seq_len=128, max_batch_size=2, gdn_impl="reference")
    ids = torch.cat([token_ids(40, 160, seed=3), token_ids(40, 160, seed=4)])
    with torch.no_grad():
        got = ours(ids, torch.arange(40))
    torch.testing.assert_close(got, hf_logits(hf, ids), atol=LOGITS_ATOL, rtol=0)


def test_reset_clears_state(loaded):
    ours, hf = loaded("causal", "hv2x", True)
    ids = token_ids(20, ours.config.vocab_size, seed=5)
    with torch.no_grad():
        ours.reset()
        ours(token_ids(30, ours.config.vocab_size, seed=6), torch.arange(30))  # leaves non-zero state behind
        ours.reset()
        got = ours(ids, torch.arange(20))
    torch.testing.assert_close(got, hf_logits(hf, ids), atol=LOGITS_ATOL, rtol=0)


# At transformers' default init (std 0.02) a tied tiny model's greedy output is one token repeated ([151] * 24), which
# feeds decode a constant input; std 0.1 gives varied tokens (21 distinct of 24 here).
VARIED_GREEDY_INIT = 0.1
MIN_DISTINCT_GREEDY = 8


@pytest.mark.parametrize("regime,tied", [("hv1x", True), ("hv2x", False)], ids=["hv1x-tied", "hv2x-untied"])
def test_greedy_generation_matches_transformers(tmp_path, regime, tied):
    """Our greedy tokens and every step's logits equal transformers' own generate() on a prompt whose greedy
    continuation varies, so each decode step is fed a different token."""
    from checkpoints import make_hf_causal_lm

    hf = make_hf_causal_lm(regime, tied, initializer_range=VARIED_GREEDY_INIT)
    hf.save_pretrained(tmp_path)
    ours = Qwen35ForCausalLM.from_pretrained(tmp_path, max_seq_len=256)  # the native op, as export uses
    prompt = token_ids(12, ours.config.vocab_size, seed=7)
    with torch.no_grad():
        out = hf.generate(prompt, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0,
                          output_logits=True, return_dict_in_generate=True)
    expected = out.sequences[0, 12:].tolist()
    assert len(set(expected)) >= MIN_DISTINCT_GREEDY, f"the reference's greedy tokens barely vary: {expected}"
    assert ours.generate(prompt[0].tolist(), max_new_tokens=24) == expected
    ours.reset()
    with torch.no_grad():
        got = [ours(prompt, torch.arange(12))[0, -1]]
        for i, token in enumerate(expected[:-1], start=12):
            got.append(ours(torch.tensor([[token]]), torch.tensor([i]))[0, -1])
    torch.testing.assert_close(torch.stack(got), torch.cat(out.logits).float(), atol=LOGITS_ATOL, rtol=0)


def test_tied_table_is_stored_once(loaded):
    ours, _ = loaded("causal", "hv1x", True)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    names = [n for n, _ in ours.named_parameters()]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
