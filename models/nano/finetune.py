"""Fine-tune a trained nano against its own greedy loops, on CPU: maximum likelihood with one of seven objectives.

    python models/nano/finetune.py --from models/nano --out /tmp/nano_ditto --until 15:40            # DITTO
    python models/nano/finetune.py --objective unlikelihood --from models/nano --out /tmp/nano_ul --until 03:50
    python models/nano/finetune.py --objective mask-repeats --lr 2e-4 --bf16 --compile --out /tmp/nano_mask_line --until 18:50

Why: greedy decoding of this small model loops (a line written again and again) and more tokens do not fix it
(README.md, "Greedy loops"). Each objective changes what the model learns from repetition; the
maximum-likelihood term on ordinary training batches keeps its perplexity.

- ``ditto`` (Xu et al., "Learning to Break the Loop", NeurIPS 2022). Pseudo-repetitive rows are built from the
  training stream: a window of real code ending at a line break, then its last 1-3 lines (the unit) repeated until
  the row is full. At every token of the n-th repeat the loss is -log(1 - |p_n - lambda * p_{n-1}|), p_{n-1} being
  the (detached) probability of the same token one unit earlier; the model learns that each repeat of a line is
  lambda times as likely as the one before, instead of more likely (the self-reinforcement that makes loops).
  No generation is needed, so a step costs one forward/backward.
- ``mask-repeats`` (after Li et al., "Repetition In Repetition Out", NeurIPS 2023, who trace loops to the repetitions
  in the training data and penalise them). Plain maximum likelihood, except that tokens repeating an earlier line of the
  same window (``--mask-unit line``) or completing an n-gram seen earlier in it (``--mask-unit ngram``) carry no loss:
  the model is never rewarded for copying, while every ordinary token still pushes wrong copies down.
- ``rep-dropout`` (Li et al.'s own method, "repetition dropout"): plain maximum likelihood while every layer hides
  each bigram that repeats in the row from its token mixer with probability ``--rep-rate`` (0.6, the paper's), so
  the model cannot learn to predict by copying what repeats (``train.RepetitionDropout``; ``train.py --rep-dropout``
  applies it from scratch).
- ``token-unlikelihood`` (Welleck et al., ICLR 2020, token level). On ordinary batches, beside maximum likelihood,
  -log(1 - p(c)) for every token c already in the context except the target: copying is pushed down wherever the
  data did not copy.
- ``unlikelihood`` (Welleck et al., ICLR 2020, sequence level; session 10's attempt). Every step the model greedily
  continues a few training prefixes, and -log(1 - p) is added at each token completing a 4-gram it already wrote.
- ``best-of-n`` (rejection-sampling self-training, as in STaR or RFT; session 16). Every step the current model
  samples ``--bon-samples`` continuations of each of ``--bon-prefixes`` training prefixes (``--bon-temperature``,
  top-p 0.9); those that repeat no line and complete at most ``--bon-max-repeats`` already-seen 4-grams are kept,
  and one of them per prefix becomes a maximum-likelihood target (``--bon-pick random``, the plain REINFORCE gradient
  of a pass/fail reward without baseline, or ``likeliest``, which collapsed to one canned docstring). Sampled at
  T = 1 this model repeats a line in 10 % of continuations, greedy in 70 %: the non-looping paths are in its own
  distribution, and training on them is a positive signal where unlikelihood only pushes the copy down.
- ``loop-branch`` (session 17). Best-of-n on the states greedy decoding actually visits: every step the model greedily
  continues ``--bon-prefixes`` training prefixes; where a continuation repeats a line, it samples ``--bon-samples``
  branches from the start of that line (the greedy path before it kept), draws one among those that repeat no line,
  and trains on it (maximum likelihood from the branch point) while pushing down the greedy token at the fork where
  the branch leaves the loop (-log(1 - p), weight ``--branch-ul-weight``). Best-of-n trained on sampled states, and
  its samples improved while its greedy loops barely moved; here the correction lands where greedy decoding goes wrong.
  ``--branch-prompts definitions`` (session 18) draws the prefixes as a user writes them instead of 48-token windows:
  a top-level ``def``/``class`` line of the training stream, or it and its first body line, with nothing before it
  (``evaluate.definition_prompt``, the shape of the demo's ``def fibonacci(n):``). The prompt's lines then count for
  the line rule, a loop inside a line is a branch point too, and a decode may stop at end of text.

Nothing here looks at the held-out packages or chooses by the demo prompts: every ``--checkpoint-minutes`` the
run saves a bf16 checkpoint with the held-out stdlib sample's perplexity (``heldout.json``, as train.py
monitors) and the share of 32 greedy continuations of *training* prefixes that repeat a line. ``evaluate.py``
then scores the chosen checkpoint on the held-out packages.

Results (README.md, "Tried against the loops"): ``loop-branch`` cut greedy loops on held-out prefixes the most
(70 % -> 30 %, at +15 % perplexity) with varied text; with ``--branch-prompts definitions``, held-out definition
prompts failing the goal's rules went 79 % -> 17-18 % (+11-12 % perplexity). The shipped weights are that objective's
session 19 run D (README.md, "The fine-tune against greedy loops"):

    python models/nano/finetune.py --objective loop-branch --branch-prompts definitions --out /tmp/nano_ft \
        --steps 628 --cosine-steps 592 --lr 2e-4 --warmup 20 --batch 2 --weight 1 --branch-max-4gram-share 1 \
        --bon-temperature 0.8 --threads 1      # from the pre-trained weights (--from), about 94 minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import train  # run as a script: models/nano/ is on sys.path
from evaluate import (
    definition_loops,
    definition_prompt,
    definition_starts,
    greedy_loops,
    inline_loop_runs,
    loop_counts,
)
from prepare import _token_bytes

HERE = Path(__file__).resolve().parent
FIRST_SPECIAL_ID = 8166  # <|endoftext|> and the ChatML tokens after it never go into a repeated unit


def newline_token_mask(tokenizer_path: Path, vocab: int) -> np.ndarray:
    """[vocab] bool: token ids whose bytes contain a line break (byte-level BPE merges "\\n" with indentation)."""
    from tokenizers import Tokenizer

    out = np.zeros(vocab, dtype=bool)
    for i, raw in _token_bytes(Tokenizer.from_file(str(tokenizer_path))).items():
        out[i] = b"\n" in raw
    return out


def ditto_row(train_ids: np.ndarray, has_newline: np.ndarray, rng: np.random.Generator, seq_len: int,
              max_context: int = 192, max_unit_lines: int = 3, max_unit_tokens: int = 64) -> tuple[np.ndarray, int, int]:
    """One pseudo-repetitive row: (tokens [seq_len], unit length U, first position of the first repeat E).

    tokens[:E] is real code ending at a line break; tokens[E - U:E] (its last lines) is the unit, and
    tokens[E:] repeats it, cut at seq_len. Token t >= E is the same token as t - U, one repeat earlier.
    """
    while True:
        start = int(rng.integers(0, len(train_ids) - max_context))
        window = train_ids[start: start + int(rng.integers(48, max_context + 1))]
        breaks = np.flatnonzero(has_newline[window])
        lines = int(rng.integers(1, max_unit_lines + 1))
        if len(breaks) < lines + 1:
            continue
        unit_from, end = breaks[-lines - 1] + 1, breaks[-1] + 1
        unit = window[unit_from:end]
        if not 4 <= len(unit) <= max_unit_tokens or unit.max() >= FIRST_SPECIAL_ID:
            continue
        repeats = math.ceil((seq_len - end) / len(unit))
        row = np.concatenate([window[:end], np.tile(unit, repeats)])[:seq_len]  # [seq_len]
        return row.astype(np.int64), len(unit), int(end)


def ditto_loss(logits: torch.Tensor, rows: torch.Tensor, unit_lens: list[int], ends: list[int], lam: float,
               line_starts: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over repeated tokens of -log(1 - |p_t - lam * p_{t-U}|); logits [B, L, V] for rows [B, L].

    With line_starts ([B, L] bool), only the tokens that open a line count: copying inside a line (an identifier
    written again) is left alone, and the choice that starts a repeat is the one pushed down."""
    probs = torch.softmax(logits[:, :-1].float(), dim=-1).gather(-1, rows[:, 1:, None])[..., 0]  # [B, L-1]: p of token t at t-1
    losses = []
    for b, (unit, end) in enumerate(zip(unit_lens, ends)):
        if end - unit < 1:
            raise ValueError(f"ditto_loss: row {b}: the unit starts at token {end - unit}; it needs a token before it")
        now = probs[b, end - 1:]  # tokens end..L-1
        before = probs[b, end - 1 - unit: probs.shape[1] - unit].detach()  # the same tokens one repeat earlier
        term = -torch.log((1 - (now - lam * before).abs()).clamp_min(1e-5))  # [L - end]
        losses.append(term if line_starts is None else term[line_starts[b, end:]])
    return torch.cat(losses).mean()


def repeated_line_mask(tokens: np.ndarray, has_newline: np.ndarray, min_tokens: int = 3) -> np.ndarray:
    """[T] bool: the tokens of every line that already occurred, token for token, earlier in the row.

    A line here is the run of tokens after one holding a line break, up to and including the next such token (byte-level
    BPE merges a line break with the next line's indentation, so a line's own indentation closes the line before it).
    Lines of fewer than ``min_tokens`` tokens (``)``, ``else:``, a blank line) are never marked: code repeats those
    legitimately. The first line of the row may be cut and is never marked either.
    """
    mask = np.zeros(len(tokens), dtype=bool)
    seen: set[tuple[int, ...]] = set()
    start = None  # the row's first line is cut at the window's start
    for t in np.flatnonzero(has_newline[tokens]).tolist():
        if start is not None and t + 1 - start >= min_tokens:
            line = tuple(tokens[start: t + 1].tolist())
            if line in seen:
                mask[start: t + 1] = True
            seen.add(line)
        start = t + 1
    return mask


def context_token_unlikelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Welleck et al.'s token-level unlikelihood on rows x [B, T] with logits [B, T, V]: at each position t the
    candidates are the tokens of x[:, :t+1] other than the target x[:, t+1]; mean over positions of
    -sum_c log(1 - p(c))."""
    seen = F.one_hot(x[:, :-1], logits.shape[-1]).cummax(dim=1).values.bool()  # [B, T-1, V]: in the context so far
    seen.scatter_(-1, x[:, 1:, None], False)  # the target itself is never a negative
    probs = torch.softmax(logits[:, :-1].float(), dim=-1)  # [B, T-1, V]
    return -(torch.log((1 - probs).clamp_min(1e-5)) * seen).sum(-1).mean()


def repeated_ngram_mask(tokens: list[int], start: int, n: int) -> torch.Tensor:
    """[len(tokens)] bool: positions >= start whose token completes an n-gram already seen since `start - n + 1`."""
    mask = torch.zeros(len(tokens), dtype=torch.bool)
    seen: set[tuple[int, ...]] = set()
    for t in range(max(start, n - 1), len(tokens)):
        gram = tuple(tokens[t - n + 1: t + 1])
        if gram in seen:
            mask[t] = True
        seen.add(gram)
    return mask


@torch.no_grad()
def greedy_continue(model, prefix: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """prefix [B, P] -> [B, P + new_tokens], greedy, without a cache (short sequences of a tiny model)."""
    x = prefix
    for _ in range(new_tokens):
        nxt = model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
        x = torch.cat([x, nxt], dim=1)
    return x


def unlikelihood_loss(model, seqs: torch.Tensor, prefix_len: int, n: int) -> tuple[torch.Tensor, float]:
    """seqs [B, L]: -mean log(1 - p(x_t | x_<t)) over the continuation's repeated-n-gram positions; the marked share."""
    masks = torch.stack([repeated_ngram_mask(s.tolist(), prefix_len, n) for s in seqs])  # [B, L]
    if not masks.any():
        return torch.zeros(()), 0.0
    logits = model(input_ids=seqs[:, :-1]).logits.float()  # [B, L-1, V]: position t-1 predicts token t
    probs = torch.softmax(logits, dim=-1).gather(-1, seqs[:, 1:, None])[..., 0]  # [B, L-1]
    marked = masks[:, 1:]
    loss = -torch.log((1 - probs[marked]).clamp_min(1e-5)).mean()
    share = marked.sum().item() / (seqs.shape[0] * (seqs.shape[1] - prefix_len))
    return loss, share


@torch.no_grad()
def best_of_n_targets(model, tok, prefixes: torch.Tensor, samples: int, temperature: float, new_tokens: int,
                      max_repeats: int, pick: str = "likeliest", gen: torch.Generator | None = None) -> torch.Tensor:
    """prefixes [B, P] -> [<=B, P + new_tokens]: per prefix, one of `samples` sampled continuations that repeat no
    line and complete at most `max_repeats` 4-grams already seen (the likeliest, or one drawn at random: the plain
    pass/fail REINFORCE gradient); prefixes with none are dropped."""
    batch, prefix_len = prefixes.shape
    seqs = model.generate(input_ids=prefixes.repeat_interleave(samples, 0),  # [B * S, P] -> [B * S, P + new]
                          attention_mask=torch.ones(batch * samples, prefix_len, dtype=torch.long),
                          do_sample=True, temperature=temperature, top_p=0.9, top_k=0, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, pad_token_id=model.config.eos_token_id)
    nll = next_token_nll(model(input_ids=seqs).logits, seqs)[:, prefix_len - 1:].mean(-1)  # [B * S]
    kept = []
    for b in range(batch):
        passing = []
        for i in range(b * samples, (b + 1) * samples):
            line, repeats, _ = loop_counts(tok, seqs[i].tolist(), prefix_len)
            if not line and repeats <= max_repeats:
                passing.append(i)
        if passing and pick == "likeliest":
            kept.append(seqs[min(passing, key=lambda i: nll[i].item())])
        elif passing:
            kept.append(seqs[passing[torch.randint(len(passing), (1,), generator=gen).item()]])
    return torch.stack(kept) if kept else seqs[:0]


def loop_branch_point(tok, seq: list[int], prefix_len: int, inline: bool = False, judge_prompt: bool = False
                      ) -> int | None:
    """Index in seq of the first token of the first line of the continuation (seq[prefix_len:]) that repeats an
    earlier line of it, indentation stripped (``train.repeats_a_line``, the goal's rule): where decoding chose to write
    a line again. None when no line repeats. The branch keeps the line break before that line, not its indentation.

    judge_prompt: a line of the prompt counts as earlier (a definition prompt is whole lines the user wrote; a window's
    first line is cut). inline: a loop inside a line (a piece repeated four times in a row, the goal's second rule)
    is a branch point too, at the token holding the piece's third copy, when it comes before a repeated line."""
    cont = seq[prefix_len:]
    head = seq[:prefix_len] if judge_prompt else []
    closing = next((k for k in range(1, len(cont) + 1) if train.repeats_a_line(tok.decode(head + cont[:k]))), None)
    line_point = None
    if closing is not None:
        # cont[closing - 1] ends the repeated line; the line began after the last token before it holding a line
        # break (the pre-tokenizer never joins a line break to the next line's words).
        breaks = [j for j in range(closing - 1) if "\n" in tok.decode([cont[j]])]
        line_point = prefix_len + (breaks[-1] + 1 if breaks else 0)
    inline_point = None
    if inline:
        text = tok.decode(cont)
        runs = inline_loop_runs(text)
        if runs:
            third = min(m.start(2) + len(m.group(1)) for m in runs)  # char offset of the first run's third copy
            inline_point = prefix_len + next(k for k in range(len(cont)) if len(tok.decode(cont[:k + 1])) > third)
    points = [p for p in (line_point, inline_point) if p is not None]
    return min(points) if points else None


@torch.no_grad()
def loop_branch_targets(model, tok, prefixes: torch.Tensor, samples: int, temperature: float, new_tokens: int,
                        max_4gram_share: float, gen: torch.Generator | None = None, user_prompts: bool = False
                        ) -> tuple[list[tuple], int]:
    """Greedy continuations of prefixes [B, P]; for each that repeats a line, sampled branches from the start of the
    repeated line (its greedy path up to there kept), and one branch drawn at random among those after which no line
    of the continuation repeats and at most `max_4gram_share` of the branch's tokens complete a 4-gram already seen
    (a loop inside a line; the greedy part before the branch, on its way to a loop, is not counted).

    Returns ([(sequence [<= P + new_tokens], branch b, fork d, greedy token at d)], greedy continuations that loop):
    the sequence equals the greedy one before d and differs at d, the token where greedy decoding went on to loop.

    user_prompts (definition prompts, whole lines): the prompt's lines count for the line rule, a loop inside a line
    is a branch point too, and a kept branch loops inside no line."""
    batch, prefix_len = prefixes.shape
    eos = model.config.eos_token_id
    common = dict(pad_token_id=eos, top_k=0)

    def ended(seq: torch.Tensor) -> torch.Tensor:
        """seq cut after its first end of text in the continuation: a user's decode stops there (user_prompts)."""
        stops = (seq[prefix_len:] == eos).nonzero()
        return seq[:prefix_len + int(stops[0, 0]) + 1] if user_prompts and len(stops) else seq

    # A window's continuation always runs new_tokens (no end of text mid-file); a user's prompt may end early.
    length = {} if user_prompts else dict(min_new_tokens=new_tokens)
    greedy = model.generate(input_ids=prefixes, attention_mask=torch.ones_like(prefixes), do_sample=False,
                            max_new_tokens=new_tokens, **length, **common)  # [B, P + new]
    out, looping = [], 0
    for seq in map(ended, greedy):
        branch = loop_branch_point(tok, seq.tolist(), prefix_len, inline=user_prompts, judge_prompt=user_prompts)
        if branch is None:
            continue
        looping += 1
        context = seq[:branch][None].repeat(samples, 1)  # [S, branch]
        rest = prefix_len + new_tokens - branch
        length = {} if user_prompts else dict(min_new_tokens=rest)
        cand = model.generate(input_ids=context, attention_mask=torch.ones_like(context), do_sample=True,
                              temperature=temperature, top_p=0.9, max_new_tokens=rest, **length,
                              **common)  # [S, <= P + new]
        passing = []
        for i in range(samples):
            ids = ended(cand[i]).tolist()
            line = loop_counts(tok, ids, prefix_len)[0]
            if user_prompts:  # the prompt's lines count, and so does a loop inside a line
                line = (line or train.repeats_a_line(tok.decode(ids))
                        or bool(inline_loop_runs(tok.decode(ids[prefix_len:]))))
            _, repeats, scored = loop_counts(tok, ids, branch)
            if not line and repeats <= max_4gram_share * max(scored, 1):
                passing.append(i)
        if not passing:
            continue
        pick = ended(cand[passing[torch.randint(len(passing), (1,), generator=gen).item()]])
        both = min(len(pick), len(seq))
        differ = (pick[branch:both] != seq[branch:both]).nonzero()
        if not len(differ):  # one is the other cut at an end of text: no fork to push down
            continue
        fork = branch + int(differ[0, 0])
        out.append((pick, branch, fork, int(seq[fork])))
    return out, looping


def loop_branch_loss(logits: torch.Tensor, targets: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [K, T, V] of the K target sequences: (mean over targets of the mean NLL of each branch's tokens from b,
    mean over targets of -log(1 - p(greedy token at the fork d)))."""
    seqs = torch.stack([t[0] for t in targets])  # [K, T]
    nll = next_token_nll(logits, seqs)  # [K, T-1]: entry t-1 is token t's
    mle = torch.stack([nll[k, b - 1:].mean() for k, (_, b, _, _) in enumerate(targets)]).mean()
    p_loop = torch.stack([torch.softmax(logits[k, d - 1].float(), -1)[g] for k, (_, _, d, g) in enumerate(targets)])
    return mle, -torch.log((1 - p_loop).clamp_min(1e-5)).mean()


def next_token_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B, T-1]: -log p(x[:, t+1] | x[:, :t+1]) from logits [B, T, V], in fp32 whatever the forward's precision."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                           reduction="none").view(x.shape[0], -1)  # [B * (T-1)] -> [B, T-1]


def save_bf16(model, folder: Path, source: Path) -> None:
    """A loadable nano folder (weights in bf16 like the shipped file, plus the source's tokenizer files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "heldout.json", "generation_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folder)


PACE_STEP = 30  # the step at which the cosine's length is fixed (a --until run measures its pace up to here)


def learning_rate(step: int, peak: float, warmup: int, cosine_steps: int | None) -> float:
    """Cosine from `peak` to a tenth of it over `cosine_steps` (None before it is fixed: the peak), held at the tenth
    after it, times a linear warmup over `warmup` steps: fresh AdamW moments' full-size steps at once jolt a trained
    model."""
    frac = min(1.0, step / cosine_steps) if cosine_steps else 0.0
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (step + 1) / warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objective", choices=("best-of-n", "ditto", "loop-branch", "mask-repeats", "rep-dropout",
                                             "token-unlikelihood", "unlikelihood"), default="ditto")
    ap.add_argument("--from", dest="source", type=Path, default=HERE, help="trained nano folder (default: this one)")
    ap.add_argument("--out", type=Path, required=True, help="final model here, checkpoints in OUT/ckpt-STEP")
    ap.add_argument("--data", type=Path, default=Path("/tmp/nano_data"))
    end = ap.add_mutually_exclusive_group(required=True)
    end.add_argument("--until", metavar="HH:MM", help="wall-clock end; the final evaluation follows; the cosine's "
                     "length is fitted at step %d from the pace" % PACE_STEP)
    end.add_argument("--steps", type=int, help="stop after this many steps instead (a plan that does not depend on the "
                     "machine's speed)")
    ap.add_argument("--cosine-steps", type=int, help="with --steps: the cosine's length (default --steps; the shipped "
                    "run's --until plan was 592, then it stayed at the floor to step 628)")
    ap.add_argument("--lr", type=float, default=2e-4, help="peak; cosine to a tenth over the steps --until allows or "
                    "--cosine-steps")
    ap.add_argument("--warmup", type=int, default=100, help="steps of linear warmup")
    ap.add_argument("--batch", type=int, default=4, help="maximum-likelihood rows per step")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--weight", type=float, default=1.0, help="weight of the objective beside maximum likelihood")
    ap.add_argument("--ditto-rows", type=int, default=2, help="pseudo-repetitive rows per step")
    ap.add_argument("--ditto-lambda", type=float, default=0.5, help="each repeat this times as likely as the last")
    ap.add_argument("--ditto-line-starts", action="store_true",
                    help="apply the loss only at tokens that open a line (after a token holding a line break)")
    ap.add_argument("--mask-unit", choices=("line", "ngram"), default="line",
                    help="mask-repeats: no loss on tokens of a repeated line, or on tokens completing a repeated --ngram")
    ap.add_argument("--ul-sequences", type=int, default=2, help="greedy continuations per step (unlikelihood)")
    ap.add_argument("--ul-prefix", type=int, default=48)
    ap.add_argument("--ul-new", type=int, default=64)
    ap.add_argument("--ngram", type=int, default=4)
    ap.add_argument("--rep-rate", type=float, default=0.6,
                    help="rep-dropout: chance that a layer hides a repeated --rep-ngram (train.RepetitionDropout)")
    ap.add_argument("--rep-ngram", type=int, default=2)
    ap.add_argument("--bon-prefixes", type=int, default=4, help="training prefixes sampled per step (best-of-n)")
    ap.add_argument("--bon-samples", type=int, default=8, help="continuations sampled per prefix")
    ap.add_argument("--bon-temperature", type=float, default=0.8)
    ap.add_argument("--bon-pick", choices=("likeliest", "random"), default="random",
                    help="which passing continuation to train on (likeliest collapsed to one canned docstring)")
    ap.add_argument("--bon-max-repeats", type=int, default=4,
                    help="a kept continuation completes at most this many 4-grams already seen (of --ul-new tokens)")
    ap.add_argument("--branch-max-4gram-share", type=float, default=0.25,
                    help="loop-branch: a kept branch has at most this share of tokens completing a seen 4-gram (the "
                         "held-out text's own continuations: 7 %%; greedy ones: 58 %%); 1 turns it off. "
                         "With --branch-prompts definitions the goal's inline rule already judges loops inside a line, "
                         "and the filter rejects code that repeats a long name (`fibonacci(n - 1) + fibonacci(n - 2)`: "
                         "33 %%); turning it off did not lower the loops by itself (README, session 19)")
    ap.add_argument("--branch-ul-weight", type=float, default=1.0,
                    help="loop-branch: weight of the unlikelihood of the greedy token at the fork, beside the branch's "
                         "likelihood")
    ap.add_argument("--branch-prompts", choices=("windows", "definitions"), default="windows",
                    help="loop-branch prefixes: 48-token training windows, or user-shaped prompts cut from training "
                         "definitions (a def/class line, or it and one more line, with nothing before it; decoding "
                         "may end at end of text; inline loops branch too)")
    ap.add_argument("--checkpoint-minutes", type=float, default=8.0)
    ap.add_argument("--monitor-prefixes", type=int, default=32, help="training prefixes continued at checkpoints")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward (as train.py --bf16)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward (not unlikelihood; ~2.5 min once)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.cosine_steps and not args.steps:
        ap.error("--cosine-steps goes with --steps (with --until the pace sets the cosine's length)")
    if args.compile and args.objective in ("unlikelihood", "best-of-n", "loop-branch"):
        raise SystemExit(f"finetune.py: --compile is not for --objective {args.objective} (it generates with varying "
                         "shapes)")

    if args.bf16:
        train.require_bf16_hardware("finetune.py")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32)
    train_ids = np.load(args.data / "train.npy")
    train_t = torch.from_numpy(train_ids.astype(np.int64))
    pkg_windows = train.windows_of(np.load(args.data / "heldout_packages.npy"), args.seq_len, train.EVAL_WINDOWS)
    sample_windows = torch.tensor(json.loads((args.source / "heldout.json").read_text())["windows"])  # [8, 512]
    token_bytes = train.token_byte_lengths(args.source / "tokenizer.json", train.CONFIG["vocab_size"])
    has_newline = newline_token_mask(args.source / "tokenizer.json", train.CONFIG["vocab_size"])
    tok = AutoTokenizer.from_pretrained(args.source)
    rng = np.random.default_rng(args.seed)
    user_prompts = args.objective == "loop-branch" and args.branch_prompts == "definitions"
    if user_prompts:
        from tokenizers import Tokenizer

        fast_tok = Tokenizer.from_file(str(args.source / "tokenizer.json"))
        definitions = definition_starts(fast_tok, train_ids)

    def checkpoint(step: int) -> dict:
        model.eval()
        sample = train.score(model, sample_windows, token_bytes)
        loops = greedy_loops(model, train_ids, args.monitor_prefixes)
        user = definition_loops(model, train_ids, args.monitor_prefixes) if user_prompts else None
        demo = train.greedy_samples(model, tok, train.DEMO_PROMPTS)
        model.train()
        row = dict(step=step, heldout_sample_ppl=round(sample["ppl"], 3),
                   train_prefix_repeated_line_share=loops["repeated_line_share"],
                   train_prefix_repeated_4gram_share=round(loops["repeated_4gram_share"], 4),
                   demo_repeated_line=[s["repeated_line"] for s in demo])
        if user:
            row["train_definition_failing_share"] = round(user["failing_share"], 4)
        print(f"checkpoint {step}: held-out sample ppl {row['heldout_sample_ppl']:.2f}; greedy on "
              f"{args.monitor_prefixes} training prefixes: {loops['repeated_line_share']:.0%} repeat a line, "
              f"{loops['repeated_4gram_share']:.0%} of tokens complete a repeated 4-gram; demo prompts looping "
              f"{sum(row['demo_repeated_line'])}/{len(demo)}"
              + (f"; {user['failing_share']:.0%} of {user['prompts']} training definition prompts fail the goal's "
                 "rules" if user else ""), flush=True)
        return row

    before = train.score(model, pkg_windows, token_bytes)
    checkpoints = [checkpoint(0)]

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    rep_dropout = (train.RepetitionDropout(model, args.rep_ngram, args.rep_rate, args.seed)
                   if args.objective == "rep-dropout" else None)
    forward = torch.compile(model) if args.compile else model

    def forward_logits(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            return forward(input_ids=batch).logits  # [rows, T, V]

    # The final evaluation and save take about 6 minutes here.
    deadline = train.deadline_of(args.until) - 6 * 60 if args.until else None
    t0, log, step, est_steps, last_ckpt = time.time(), [], 0, None, time.time()
    hi = len(train_t) - args.seq_len - 1

    def training_prefixes(count: int) -> torch.Tensor:
        """[count, --ul-prefix]: training-stream windows at the run generator's next offsets (generation objectives)."""
        return torch.stack([train_t[s: s + args.ul_prefix]
                            for s in torch.randint(0, hi, (count,), generator=gen).tolist()])

    def user_shaped_prompts(count: int) -> list[torch.Tensor]:
        """count [1, P] prompts cut from training definitions at the run generator's next draws."""
        out = []
        while len(out) < count:
            start = definitions[torch.randint(len(definitions), (1,), generator=gen).item()]
            cut = definition_prompt(fast_tok, train_ids, int(start), torch.randint(2, (1,), generator=gen).item())
            if cut:
                out.append(torch.tensor(fast_tok.encode(cut[0]).ids)[None])
        return out

    model.train()
    while step < args.steps if args.steps else time.time() < deadline:
        # The cosine's length is fixed at PACE_STEP: with --until, the steps the deadline allows at the pace of steps
        # 10-30 (after any compile); with --steps, --cosine-steps.
        if step == 10:
            t10 = time.time()
        if step == PACE_STEP:
            est_steps = ((args.cosine_steps or args.steps) if args.steps else
                         max(PACE_STEP + 1, PACE_STEP + int((deadline - time.time()) / ((time.time() - t10) / 20))))
        lr = learning_rate(step, args.lr, args.warmup, est_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, hi, (args.batch,), generator=gen)
        x = torch.stack([train_t[s: s + args.seq_len] for s in starts.tolist()])  # [B, T]
        if args.objective == "ditto":
            made = [ditto_row(train_ids, has_newline, rng, args.seq_len) for _ in range(args.ditto_rows)]
            rows = torch.from_numpy(np.stack([m[0] for m in made]))  # [R, T]
            logits = forward_logits(torch.cat([x, rows]))  # [B + R, T, V]
            mle = next_token_nll(logits[:args.batch], x).mean()
            line_starts = None
            if args.ditto_line_starts:  # token t opens a line when token t-1 holds a line break
                line_starts = torch.from_numpy(np.pad(has_newline[rows[:, :-1].numpy()], ((0, 0), (1, 0))))  # [R, T]
            extra = ditto_loss(logits[args.batch:], rows, [m[1] for m in made], [m[2] for m in made],
                               args.ditto_lambda, line_starts)
            share = None  # the marked share is an unlikelihood figure
        elif args.objective == "mask-repeats":
            repeats = np.stack([repeated_line_mask(r, has_newline) if args.mask_unit == "line"
                                else repeated_ngram_mask(r.tolist(), 0, args.ngram).numpy() for r in x.numpy()])  # [B, T]
            keep = torch.from_numpy(~repeats[:, 1:]).float()  # [B, T-1]: weight of each predicted token
            per_token = next_token_nll(forward_logits(x), x)  # [B, T-1]
            mle = (per_token * keep).sum() / keep.sum()
            extra = (per_token.detach() * (1 - keep)).sum() / (1 - keep).sum().clamp_min(1)  # logged, not trained
            share = 1 - keep.mean().item()
        elif args.objective == "rep-dropout":
            rep_dropout.draw(x)
            mle = next_token_nll(forward_logits(x), x).mean()
            extra = torch.zeros(())  # nothing beside maximum likelihood: the mask is the method
            share = rep_dropout.hidden.float().mean().item()
        elif args.objective == "token-unlikelihood":
            logits = forward_logits(x)  # [B, T, V]
            mle = next_token_nll(logits, x).mean()
            extra, share = context_token_unlikelihood(logits, x), None
        elif args.objective == "best-of-n":
            prefixes = training_prefixes(args.bon_prefixes)
            model.eval()
            targets = best_of_n_targets(model, tok, prefixes, args.bon_samples, args.bon_temperature, args.ul_new,
                                        args.bon_max_repeats, args.bon_pick, gen)  # [kept, P + new]
            model.train()
            mle = next_token_nll(forward_logits(x), x).mean()
            extra = (next_token_nll(model(input_ids=targets).logits, targets)[:, args.ul_prefix - 1:].mean()
                     if len(targets) else torch.zeros(()))
            share = len(targets) / args.bon_prefixes  # prefixes with a passing sample
        elif args.objective == "loop-branch":
            model.eval()
            if user_prompts:  # prompts of different lengths: one at a time
                targets, looping = [], 0
                for prompt in user_shaped_prompts(args.bon_prefixes):
                    got, loops_here = loop_branch_targets(model, tok, prompt, args.bon_samples, args.bon_temperature,
                                                          args.ul_new, args.branch_max_4gram_share, gen, True)
                    targets, looping = targets + got, looping + loops_here
            else:
                targets, looping = loop_branch_targets(model, tok, training_prefixes(args.bon_prefixes),
                                                       args.bon_samples, args.bon_temperature, args.ul_new,
                                                       args.branch_max_4gram_share, gen)
            model.train()
            mle = next_token_nll(forward_logits(x), x).mean()
            if targets:  # one forward per target: their lengths differ when a decode ended early
                parts = [loop_branch_loss(model(input_ids=t[0][None]).logits, [t]) for t in targets]
                branch_mle = torch.stack([m for m, _ in parts]).mean()
                fork_ul = torch.stack([u for _, u in parts]).mean()
                extra = branch_mle + args.branch_ul_weight * fork_ul
            else:
                extra = torch.zeros(())
            share = looping / args.bon_prefixes  # greedy continuations of the step's prefixes that repeat a line
        else:
            mle = model(input_ids=x, labels=x).loss
            prefixes = training_prefixes(args.ul_sequences)
            model.eval()
            seqs = greedy_continue(model, prefixes, args.ul_new)  # [S, prefix + new]
            model.train()
            extra, share = unlikelihood_loss(model, seqs, args.ul_prefix, args.ngram)
        loss = mle if args.objective == "mask-repeats" else mle + args.weight * extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if rep_dropout:
            rep_dropout.hidden = None  # checkpoints score and decode with every token visible
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.append(dict(step=step, mle=round(mle.item(), 4), objective=round(float(extra.detach()), 4),
                        repeated_share=None if share is None else round(share, 4), lr=lr, elapsed=round(time.time() - t0, 1)))
        if step % 10 == 0:
            print(f"step {step} mle {mle.item():.4f} {args.objective} {float(extra.detach()):.4f} lr {lr:.2e} "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
        step += 1
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            checkpoints.append(checkpoint(step))
            save_bf16(model, args.out / f"ckpt-{step}", args.source)
            last_ckpt = time.time()

    model.eval()
    save_bf16(model, args.out, args.source)
    shipped = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    after = train.score(shipped, pkg_windows, token_bytes)
    samples = train.greedy_samples(shipped, tok, train.DEMO_PROMPTS)
    print(f"after {step} steps: held-out packages ppl {after['ppl']:.3f} (before {before['ppl']:.3f}); demo prompts "
          f"repeating a line {sum(s['repeated_line'] for s in samples)}/{len(samples)}", flush=True)
    for smp in samples:
        print(f"sample (repeated line: {smp['repeated_line']}):\n{smp['prompt']}{smp['continuation']}\n", flush=True)
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
             if v is not False and v is not None]  # unset options (--until or --steps) are left out
    result = dict(command="python models/nano/finetune.py " + " ".join(flags).replace("--source", "--from"), steps=step,
        heldout_packages_before=before, heldout_packages=after, samples=samples, checkpoints=checkpoints, log=log)
    tmp = args.out / "finetune_log.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, args.out / "finetune_log.json")


if __name__ == "__main__":
    main()
