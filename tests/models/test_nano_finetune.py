"""models/nano/finetune.py's objectives (DITTO, repeat masks, unlikelihood, best-of-n, loop branches) and train.py's
repetition dropout, against direct re-statements."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

NANO = Path(__file__).resolve().parents[2] / "models" / "nano"
sys.path.insert(0, str(NANO))  # the scripts import their siblings (train, prepare) as top-level modules
finetune = pytest.importorskip("finetune")


@pytest.fixture(scope="module")
def has_newline():
    return finetune.newline_token_mask(NANO / "tokenizer.json", 8192)


def test_newline_mask_matches_decoded_tokens(has_newline):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(NANO / "tokenizer.json"))
    expect = np.array(["\n" in tok.decode([i]) for i in range(8166)])  # ordinary ids only; specials come after
    assert has_newline[:8166].tolist() == expect.tolist()
    assert not has_newline[8166:].any()


def test_ditto_row_is_real_code_then_its_last_lines_repeated(has_newline):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(NANO / "tokenizer.json"))
    code = (NANO / "train.py").read_text()  # any Python text
    stream = np.array(tok.encode(code).ids, dtype=np.int64)
    rng = np.random.default_rng(0)
    for _ in range(20):
        row, unit, end = finetune.ditto_row(stream, has_newline, rng, 256)
        assert row.shape == (256,) and 4 <= unit <= 64 and end < 256
        # The prefix is a contiguous piece of the stream that ends at a line break.
        hits = [s for s in range(len(stream) - end + 1) if (stream[s:s + end] == row[:end]).all()]
        assert hits and has_newline[row[end - 1]]
        # The unit starts right after a line break (whole lines), and the rest repeats it.
        assert has_newline[row[end - unit - 1]]
        for t in range(end, 256):
            assert row[t] == row[end - unit + (t - end) % unit]


def test_ditto_loss_matches_a_direct_loop():
    torch.manual_seed(0)
    rows = torch.randint(0, 50, (2, 24))  # [B, L]
    unit_lens, ends = [5, 3], [9, 12]
    logits = torch.randn(2, 24, 50) * 3  # [B, L, V]
    lam = 0.3
    starts = torch.rand(2, 24) < 0.4
    for mask in (None, starts):
        got = finetune.ditto_loss(logits, rows, unit_lens, ends, lam, mask)
        probs = torch.softmax(logits, dim=-1)
        terms = []
        for b in range(2):
            for t in range(ends[b], 24):
                if mask is not None and not mask[b, t]:
                    continue
                p_now = probs[b, t - 1, rows[b, t]].item()
                p_before = probs[b, t - 1 - unit_lens[b], rows[b, t - unit_lens[b]]].item()
                terms.append(-math.log(max(1 - abs(p_now - lam * p_before), 1e-5)))
        assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_ditto_loss_gradient_stops_at_the_earlier_repeat():
    rows = torch.tensor([[0, 1, 2, 3, 1, 2, 3, 1]])  # unit [1, 2, 3] at 1..3, repeated from 4
    logits = torch.zeros(1, 8, 4, requires_grad=True)
    finetune.ditto_loss(logits, rows, [3], [4], 0.5).backward()
    # Positions 3..6 predict the repeated tokens 4..7; positions 0..2 predict the first copy, which is only a target.
    assert logits.grad[0, :3].abs().sum() == 0 and logits.grad[0, 3:7].abs().sum() > 0
    with pytest.raises(ValueError, match="unit"):
        finetune.ditto_loss(logits, rows, [4], [4], 0.5)  # the unit would start at token 0: nothing predicts it


def test_repeated_line_mask_marks_exactly_the_lines_written_before(has_newline):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(NANO / "tokenizer.json"))
    lines = ["result = compute(first)", "items.append(result)", "print(result)", ")", "items.append(result)",
             "value = compute(second)", ")", "print(result)", "items.append(result)"]
    ids = np.array(tok.encode("\n".join(lines) + "\n").ids, dtype=np.int64)
    mask = finetune.repeated_line_mask(ids, has_newline)
    # Marked runs, decoded, against the text's own repeats: every non-first occurrence of a line of 3+ tokens.
    runs, t = [], 0
    while t < len(ids):
        if mask[t]:
            end = t
            while end < len(ids) and mask[end]:
                end += 1
            runs.append(tok.decode(ids[t:end].tolist()))
            t = end
        else:
            t += 1
    seen, expect = set(), []
    for i, ln in enumerate(lines):
        if i and ln in seen and len(tok.encode(ln + "\n").ids) >= 3:  # the first line counts as possibly cut
            expect.append(ln + "\n")
        seen.add(ln)
    assert expect == ["items.append(result)\n", "print(result)\n", "items.append(result)\n"]  # the text's design
    assert "".join(runs) == "".join(expect)
    # A line equal to the row's first (possibly cut) line is not marked: that line was never seen whole.
    ids = np.array(tok.encode("print(result)\nprint(result)\nprint(result)\n").ids, dtype=np.int64)
    assert tok.decode(ids[finetune.repeated_line_mask(ids, has_newline)].tolist()) == "print(result)\n"


def test_context_token_unlikelihood_matches_a_direct_loop():
    torch.manual_seed(0)
    x = torch.randint(0, 12, (2, 10))  # [B, T]: a small vocabulary, so tokens recur
    logits = torch.randn(2, 10, 12) * 2  # [B, T, V]
    probs = torch.softmax(logits, dim=-1)
    per_position = []
    for b in range(2):
        for t in range(9):  # position t predicts x[b, t + 1]
            negatives = set(x[b, :t + 1].tolist()) - {x[b, t + 1].item()}
            per_position.append(sum(-math.log(1 - probs[b, t, c].item()) for c in negatives))
    got = finetune.context_token_unlikelihood(logits, x)
    assert got.item() == pytest.approx(sum(per_position) / len(per_position), rel=1e-5)


def test_next_token_nll_is_minus_log_softmax_at_the_next_token():
    torch.manual_seed(0)
    x = torch.randint(0, 20, (3, 7))  # [B, T]
    logits = torch.randn(3, 7, 20, dtype=torch.bfloat16)  # [B, T, V], as under bf16 autocast
    log_p = torch.log_softmax(logits.float(), dim=-1)
    expect = torch.tensor([[-log_p[b, t, x[b, t + 1]].item() for t in range(6)] for b in range(3)])
    torch.testing.assert_close(finetune.next_token_nll(logits, x), expect, rtol=1e-6, atol=1e-6)


def _repeated_ngram_spans(row: list[int], n: int) -> dict[tuple, list[int]]:
    """Start positions of every n-gram that occurs at least twice in row, by n-gram (a direct restatement)."""
    starts: dict[tuple, list[int]] = {}
    for i in range(len(row) - n + 1):
        starts.setdefault(tuple(row[i:i + n]), []).append(i)
    return {gram: at for gram, at in starts.items() if len(at) >= 2}


@pytest.mark.parametrize("n", [2, 3])
def test_repetition_drop_mask_hides_whole_repeated_ngrams_per_layer(n):
    train = finetune.train
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, (3, 96), generator=gen)  # a small vocabulary, so n-grams repeat
    everything = train.repetition_drop_mask(x, n, 4, 1.0, gen)  # [L, B, T]
    assert not train.repetition_drop_mask(x, n, 4, 0.0, gen).any()
    half = train.repetition_drop_mask(x, n, 4, 0.5, gen)
    for b, row in enumerate(x.tolist()):
        spans = _repeated_ngram_spans(row, n)
        expect = torch.zeros(len(row), dtype=torch.bool)
        for at in spans.values():
            for i in at:
                expect[i:i + n] = True
        assert spans and all((everything[layer, b] == expect).all() for layer in range(4))
        # At rate 0.5 each repeated n-gram is hidden or not as a whole, in each layer on its own: a token hidden
        # in a layer lies in some n-gram whose every occurrence that layer hides.
        for layer in range(4):
            hidden = half[layer, b]
            kept_whole = torch.zeros(len(row), dtype=torch.bool)
            for at in spans.values():
                if all(hidden[i:i + n].all() for i in at):
                    for i in at:
                        kept_whole[i:i + n] = True
            assert (hidden == kept_whole).all()
        assert 0 < half[:, b].sum() < everything[:, b].sum()
    assert not (half[0] == half[1]).all()  # layers draw apart


def test_repetition_dropout_hooks_cut_hidden_tokens_out_of_every_mixer():
    """A token hidden in every layer must not reach any other position: change it and only its own logits move.

    The gated delta layers' short conv would carry it to its next three neighbours, so its taps other than the
    current token are zeroed here; what is left to carry the token is the attention keys and the recurrent
    state, which the hooks close. Without the hooks the same change moves the later positions' logits.
    """
    train = finetune.train
    cfg = dict(train.CONFIG, vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
               layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
               linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
               eos_token_id=63, pad_token_id=63)
    torch.manual_seed(0)
    model = train.make_model(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer, "linear_attn"):
                layer.linear_attn.conv1d.weight[..., :-1] = 0  # [channels, 1, kernel]: keep the current token only
    rep = train.RepetitionDropout(model, 2, 0.6, 0)
    x = torch.randint(0, 63, (1, 24))
    y = x.clone()
    y[0, 9] = (x[0, 9] + 1) % 63
    hidden = torch.zeros(4, 1, 24, dtype=torch.bool)
    hidden[:, 0, 9] = True
    with torch.no_grad():
        rep.hidden = hidden
        masked = model(input_ids=x).logits, model(input_ids=y).logits
        rep.hidden = None
        plain = model(input_ids=x).logits, model(input_ids=y).logits
    others = [t for t in range(24) if t != 9]
    assert torch.allclose(masked[0][0, others], masked[1][0, others], atol=1e-5)
    assert not torch.allclose(masked[0][0, 9], masked[1][0, 9], atol=1e-3)
    assert (plain[0][0, 10:] - plain[1][0, 10:]).abs().max() > 1e-2


def test_bf16_is_refused_where_the_cpu_would_emulate_it(monkeypatch):
    train = finetune.train
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(SystemExit, match="train.py: --bf16: .* neither AVX512-BF16 nor AMX"):
        train.require_bf16_hardware("train.py")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    train.require_bf16_hardware("train.py")  # AMX alone is enough


def test_best_of_n_keeps_the_likeliest_continuation_that_repeats_no_line():
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(NANO)
    prefix = tok("def f(x):\n", return_tensors="pt")["input_ids"]  # [1, P]
    texts = {"loop": "    return x\n    return x\n    return x\n    return x\n",
             "plain": "    y = x + 1\n    print(y)\n    return y\n",
             "liked": "    z = x * 2\n    print(z)\n    return z\n"}
    bodies = {k: tok(v)["input_ids"] for k, v in texts.items()}
    n = min(map(len, bodies.values()))  # one length for all; the cut last line is not judged
    rows = {k: torch.cat([prefix[0], torch.tensor(v[:n])]) for k, v in bodies.items()}  # [P + n] each
    # Prefix 0 samples all three, prefix 1 only loops; the loop is the likeliest of all, then "liked".
    samples = torch.stack([rows["loop"], rows["plain"], rows["liked"], rows["loop"], rows["loop"], rows["loop"]])
    boost = {0: 9.0, 2: 4.0, 3: 9.0, 4: 9.0, 5: 9.0}  # sample row -> logit added at its own next tokens

    class Model:
        config = SimpleNamespace(eos_token_id=1)

        def generate(self, input_ids, **kwargs):
            assert input_ids.shape == (6, prefix.shape[1]) and kwargs["max_new_tokens"] == n
            return samples

        def __call__(self, input_ids):
            logits = torch.zeros(*input_ids.shape, 8192)  # [6, T, V]
            for row, b in boost.items():
                logits[row, torch.arange(input_ids.shape[1] - 1), input_ids[row, 1:]] = b
            return SimpleNamespace(logits=logits)

    prefixes = prefix.repeat(2, 1)  # [2, P]
    kept = finetune.best_of_n_targets(Model(), tok, prefixes, 3, 0.8, n, 4)
    assert kept.tolist() == [rows["liked"].tolist()]  # the loop and the all-looping prefix are dropped
    gen = torch.Generator().manual_seed(0)
    drawn = {tuple(finetune.best_of_n_targets(Model(), tok, prefixes, 3, 0.8, n, 4, "random", gen)[0].tolist())
             for _ in range(20)}
    assert drawn == {tuple(rows["plain"].tolist()), tuple(rows["liked"].tolist())}


@pytest.fixture(scope="module")
def nano_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(NANO)


@pytest.mark.parametrize("body, before_branch", [
    ("    if n < 2:\n        return n\n    if n < 2:\n        return n\n", "    if n < 2:\n        return n\n"),
    ("    return n\n        return n\n", "    return n\n"),  # the goal's rule strips indentation
    ("    y = n\n    return y\n", None),
    ("    y = n\n    y = n", None),  # a cut last line is not judged
])
def test_loop_branch_point_is_the_start_of_the_first_repeated_line(nano_tok, body, before_branch):
    prefix = nano_tok("def f(n):\n")["input_ids"]
    seq = prefix + nano_tok(body)["input_ids"]
    branch = finetune.loop_branch_point(nano_tok, seq, len(prefix))
    if before_branch is None:
        assert branch is None
    else:
        assert nano_tok.decode(seq[len(prefix):branch]) == before_branch


def test_loop_branch_targets_keep_a_branch_that_leaves_the_loop_from_the_greedy_path(nano_tok):
    from types import SimpleNamespace

    prefix = nano_tok("def f(n):\n")["input_ids"]
    looping = prefix + nano_tok("    if n < 2:\n        return n\n    if n < 2:\n        return n\n")["input_ids"]
    new = len(looping) - len(prefix)
    clean = prefix + nano_tok("    x = n + 1\n    print(x)\n    y = x * 2\n    return y\n    # end\n")["input_ids"][:new]
    branch = finetune.loop_branch_point(nano_tok, looping, len(prefix))
    rest = len(looping) - branch
    bodies = {"loop again": "    if n < 2:\n        return n\n",
              "loop in a line": "    x = x, x, x, x, x, x, x, x, x, x, x, x, x\n",
              "leave": "    if n == 1:\n        return 1\n    return f(n - 1) + f(n - 2)\n"}
    branches = {k: looping[:branch] + nano_tok(v)["input_ids"][:rest] for k, v in bodies.items()}
    assert all(len(b) == len(looping) for b in branches.values())
    calls = []

    class Model:
        config = SimpleNamespace(eos_token_id=1)

        def generate(self, input_ids, do_sample, max_new_tokens, **kwargs):
            calls.append((input_ids.tolist(), do_sample, max_new_tokens))
            if not do_sample:  # greedy: prefix 0 loops, prefix 1 does not
                return torch.tensor([looping, clean])
            return torch.tensor(list(branches.values()))

    prefixes = torch.tensor([prefix, prefix])  # [2, P]
    targets, n_looping = finetune.loop_branch_targets(Model(), nano_tok, prefixes, 3, 1.0, new, 0.25,
                                                      torch.Generator().manual_seed(0))
    assert n_looping == 1 and len(calls) == 2  # only the looping prefix is branched
    assert calls[1] == ([looping[:branch]] * 3, True, rest)  # from the greedy path up to the repeated line
    (seq, b, fork, greedy_token), = targets
    assert seq.tolist() == branches["leave"] and b == branch
    assert nano_tok.decode(seq[b:fork]) == "    if n"  # the same as greedy up to the fork
    assert nano_tok.decode([seq[fork]]) == " ==" and nano_tok.decode([greedy_token]) == " <"


def test_loop_branch_loss_matches_a_direct_loop():
    torch.manual_seed(0)
    seqs = torch.randint(0, 50, (2, 12))
    logits = torch.randn(2, 12, 50)
    targets = [(seqs[0], 5, 7, 3), (seqs[1], 9, 9, 11)]  # (sequence, branch, fork, greedy token at the fork)
    branch_nll, fork_ul = [], []
    for k, (seq, b, d, g) in enumerate(targets):
        logp = [torch.log_softmax(logits[k, t - 1], -1)[seq[t]].item() for t in range(b, 12)]
        branch_nll.append(-sum(logp) / len(logp))
        fork_ul.append(-math.log(1 - torch.softmax(logits[k, d - 1], -1)[g].item()))
    mle, ul = finetune.loop_branch_loss(logits, targets)
    assert mle.item() == pytest.approx(sum(branch_nll) / 2, rel=1e-5)
    assert ul.item() == pytest.approx(sum(fork_ul) / 2, rel=1e-5)


# User-shaped prompts (session 18): definitions cut to their first lines, as `qwen-mobile demo` prompts.

STREAM_CODE = ("import os\n\n\ndef f(x):\n    return x\n\n\nclass C(\n        Base):\n    pass\n\n\n"
               "class D:\n    def method(self):\n        pass\n")


@pytest.fixture(scope="module")
def fast_tok():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(NANO / "tokenizer.json"))


def definition_stream(fast_tok) -> np.ndarray:
    eot = fast_tok.token_to_id("<|endoftext|>")
    ids = fast_tok.encode(STREAM_CODE).ids + [eot] + fast_tok.encode("def g():\n    y = 1\n    return y\n").ids
    return np.array(ids, dtype=np.int64)


def test_definition_starts_are_top_level_defs_and_classes(fast_tok):
    evaluate = pytest.importorskip("evaluate")
    ids = definition_stream(fast_tok)
    starts = evaluate.definition_starts(fast_tok, ids)
    # Where the text says so: the headers at column 0, after a line break or the document separator; the method
    # `    def method` is not a prompt a user starts a file with.
    heads = [fast_tok.decode(ids[s:].tolist()).split("\n")[0] for s in starts]
    assert heads == ["def f(x):", "class C(", "class D:", "def g():"]


def test_definition_prompt_cuts_whole_lines_and_keeps_the_code_that_follows(fast_tok):
    evaluate = pytest.importorskip("evaluate")
    ids = definition_stream(fast_tok)
    f, c, d, g = evaluate.definition_starts(fast_tok, ids).tolist()
    assert evaluate.definition_prompt(fast_tok, ids, f, 0)[0] == "def f(x):\n"
    prompt, truth = evaluate.definition_prompt(fast_tok, ids, f, 1)
    assert prompt == "def f(x):\n    return x\n"
    assert truth.startswith("\n\nclass C(\n")  # the code's own next tokens, from where the prompt stops
    assert evaluate.definition_prompt(fast_tok, ids, c, 0) is None  # a header over two lines
    assert evaluate.definition_prompt(fast_tok, ids, d, 1)[0] == "class D:\n    def method(self):\n"
    prompt, truth = evaluate.definition_prompt(fast_tok, ids, g, 1)
    assert prompt == "def g():\n    y = 1\n" and truth == "    return y\n"
    # The last definition of a document: its continuation stops at the separator, not in the next file.
    before_eot = evaluate.definition_prompt(fast_tok, ids, d, 0)[1]
    assert "<|endoftext|>" not in before_eot and "def g" not in before_eot


@pytest.mark.parametrize("text, line, inline", [
    ("def f(n):\n    if n < 2:\n        return n\n    if n < 2:\n        return 1\n", True, False),
    ("def f(n):\n    if n:\n        return n\n    return n\n", False, False),  # indentation kept, as the test does
    ("def f(n):\n    return g(n, n, n, n, n)\n", False, True),
    ("def f(n):\n    \"\"\"Doc.\n\n    Parameters\n    ----------\n    \"\"\"\n    x = 1\n    x = 1", False, False),
])
def test_goal_rules_match_the_goal_test(text, line, inline):
    evaluate = pytest.importorskip("evaluate")
    from tests.models.test_nano_checkpoint import looping_within_a_line

    assert evaluate.loops_as_the_goal_counts(text) == (line, inline)
    assert inline == looping_within_a_line(text)  # the goal test's own statement of the second rule


@pytest.mark.parametrize("prompt, body, before_branch", [
    # The prompt's lines count: the loop starts where the continuation writes the prompt's `if n < 2:` again.
    ("def fibonacci(n):\n    if n < 2:\n", "        return n\n    if n < 2:\n        return n\n", "        return n\n"),
    # A loop inside a line branches at the piece's third copy.
    ("def f(x):\n", "    return g(x, x, x, x, x, x, x)\n", "    return g(x, x,"),
    ("def f(x):\n", "    return g(x, y)\n    a = 1\n", None),
])
def test_loop_branch_point_on_user_prompts(nano_tok, prompt, body, before_branch):
    prefix = nano_tok(prompt)["input_ids"]
    seq = prefix + nano_tok(body)["input_ids"]
    branch = finetune.loop_branch_point(nano_tok, seq, len(prefix), inline=True, judge_prompt=True)
    if before_branch is None:
        assert branch is None
    else:
        assert nano_tok.decode(seq[len(prefix):branch]) == before_branch
    # Windows judge neither (their first line is cut): the first example then branches later, the second never.
    plain = finetune.loop_branch_point(nano_tok, seq, len(prefix))
    assert plain is None or branch is None or plain > branch


@pytest.fixture(scope="module")
def fibonacci_loop(nano_tok):
    """(end-of-text id, the demo prompt's ids, the shipped nano's greedy loop after it, the loop's branch point)."""
    eot = nano_tok.convert_tokens_to_ids("<|endoftext|>")
    prefix = nano_tok("def fibonacci(n):\n    if n < 2:\n")["input_ids"]
    looping = prefix + nano_tok("        return n\n    if n < 2:\n        return n\n")["input_ids"]
    return eot, prefix, looping, finetune.loop_branch_point(nano_tok, looping, len(prefix), inline=True,
                                                            judge_prompt=True)


def scripted_model(eos: int, greedy_rows: list, sampled_rows: list, calls: list | None = None):
    """Stands in for the model in loop_branch_targets: generate() returns greedy_rows when decoding greedily and
    sampled_rows when sampling, and appends each call's other keyword arguments to calls."""
    from types import SimpleNamespace

    def generate(input_ids, do_sample, max_new_tokens, **kwargs):
        if calls is not None:
            calls.append(kwargs)
        return torch.tensor(sampled_rows if do_sample else greedy_rows)

    return SimpleNamespace(config=SimpleNamespace(eos_token_id=eos), generate=generate)


def test_loop_branch_targets_on_user_prompts_stop_at_end_of_text_and_reject_inline_loops(nano_tok, fibonacci_loop):
    eot, prefix, looping, branch = fibonacci_loop
    new = len(looping) - len(prefix)
    bodies = {"repeats the prompt": "    if n < 2:\n        return 0\n",
              "loops in a line": "    return f(n, n, n, n, n, n, n, n)\n",
              "ends": "    return n * 3 + 1\n"}
    rows = []
    for name, body in bodies.items():
        ids = looping[:branch] + nano_tok(body)["input_ids"] + ([eot] if name == "ends" else [])
        rows.append((ids + [eot] * len(looping))[:len(looping) + 8])  # generate pads after an end of text
    calls = []
    model = scripted_model(eot, [looping], rows, calls)
    targets, n_looping = finetune.loop_branch_targets(model, nano_tok, torch.tensor([prefix]), 3, 1.0, new, 0.25,
                                                      torch.Generator().manual_seed(0), user_prompts=True)
    assert [c.get("min_new_tokens") for c in calls] == [None, None]  # a user's decode may end early: no forced length
    (seq, b, fork, greedy_token), = targets
    assert n_looping == 1 and b == branch
    assert nano_tok.decode(seq[b:].tolist()) == bodies["ends"] + "<|endoftext|>"  # cut after its end of text
    assert nano_tok.decode([greedy_token]) == nano_tok.decode([looping[fork]])
    assert seq[:fork].tolist() == looping[:fork] and seq[fork] != looping[fork]


def test_the_4gram_filter_rejects_the_recursive_fibonacci_and_share_1_turns_it_off(nano_tok, fibonacci_loop):
    # Session 18's runs kept --branch-max-4gram-share 0.25 on user prompts, where the goal's rules already judge loops
    # inside a line; this is the legitimate branch that filter threw away.
    eot, prefix, looping, branch = fibonacci_loop
    recursion = looping[:branch] + nano_tok("    return fibonacci(n - 1) + fibonacci(n - 2)\n")["input_ids"] + [eot]
    _, repeats, scored = finetune.loop_counts(nano_tok, recursion, branch)
    assert repeats > 0.25 * scored  # `fibonacci` is several tokens: its second copy completes seen 4-grams

    def kept(share):
        model, new_tokens = scripted_model(eot, [looping], [recursion] * 3), len(looping) - len(prefix)
        return finetune.loop_branch_targets(model, nano_tok, torch.tensor([prefix]), 3, 1.0, new_tokens, share,
                                            torch.Generator().manual_seed(0), user_prompts=True)[0]

    assert kept(0.25) == []
    (seq, b, _, _), = kept(1.0)
    assert b == branch and seq.tolist() == recursion


def test_definition_loops_scores_decodes_by_the_goal_rules(fast_tok):
    evaluate = pytest.importorskip("evaluate")
    from types import SimpleNamespace

    ids = definition_stream(fast_tok)
    eot = fast_tok.token_to_id("<|endoftext|>")

    class Model:
        name_or_path = str(NANO)
        config = SimpleNamespace(eos_token_id=eot)

        def __init__(self, echo: bool):
            self.echo = echo

        def generate(self, input_ids, **kwargs):  # writes the prompt again (a loop), or ends at once
            more = input_ids if self.echo else torch.tensor([[eot]])
            return torch.cat([input_ids, more], dim=1)

    looping, ending = evaluate.definition_loops(Model(True), ids, 8), evaluate.definition_loops(Model(False), ids, 8)
    # The four definitions are cut alternately to one line and two: f(x) to one, C's header spans two lines (none),
    # D to one, g to two.
    assert looping["prompts"] == ending["prompts"] == 3
    assert looping["repeated_line_share"] == 1.0 and ending["failing_share"] == 0.0
    assert looping["text_failing_share"] == ending["text_failing_share"]  # the code itself, scored the same way
    no_definitions = np.array(fast_tok.encode("x = 1\nprint(x)\n").ids, dtype=np.int64)
    with pytest.raises(ValueError, match="no top-level def/class"):
        evaluate.definition_loops(Model(False), no_definitions, 8)


def test_learning_rate_replays_the_shipped_runs_schedule():
    """The shipped weights' run (finetune_log.json, written by the run's own inline schedule before learning_rate
    existed) fixed its cosine at 592 steps from its pace and ran to 628: `--steps 628 --cosine-steps 592` must give
    every one of its logged rates, so that command reproduces its plan on any machine."""
    import json

    log = json.loads((NANO / "finetune_log.json").read_text())
    assert log["steps"] == 628 and "--warmup 20" in log["command"] and "--lr 0.0002" in log["command"]
    cosine = None
    for row in log["log"]:
        if row["step"] == finetune.PACE_STEP:
            cosine = 592
        assert finetune.learning_rate(row["step"], 2e-4, 20, cosine) == pytest.approx(row["lr"], rel=1e-12), row
    # The shape itself, independently: warmup to the peak, a tenth at the cosine's end and after it.
    assert finetune.learning_rate(0, 2e-4, 20, None) == pytest.approx(1e-5)
    assert finetune.learning_rate(19, 2e-4, 20, None) == pytest.approx(2e-4)
    assert finetune.learning_rate(296, 2e-4, 20, 592) == pytest.approx(2e-4 * (0.1 + 0.45))
    assert finetune.learning_rate(700, 2e-4, 20, 592) == pytest.approx(2e-5)
