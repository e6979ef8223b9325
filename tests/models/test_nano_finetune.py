"""models/nano/finetune.py's DITTO pieces: the pseudo-repetitive rows and the loss, against direct re-statements."""

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
