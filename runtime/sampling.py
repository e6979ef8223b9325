"""Token sampling: greedy, temperature, top-k, top-p, repetition penalty; seeded, reproducible and portable.

The filters follow transformers' generation semantics (so a user's settings mean the same thing here as there), in
the same order: repetition penalty, temperature, top-k, top-p. Temperature 0 is greedy (argmax after the penalty).

The rule is written once, in `SAMPLING.md` beside this file, and implemented the same way by every runtime that
samples: this module (the reference), the native runner `qwen-bench --serve`, and the iOS app's `QwenMobileKit`.
So the random source is not torch's generator but SplitMix64, one 64-bit draw per sampled token, and the arithmetic is
float64 with sequential sums in a stated order: the same seed, logits and context give the same token in Python, C++
and Swift (shared vectors under `tests/apps/vectors/`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import UsageError

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already in the context
    seed: int | None = None  # None = a fresh seed, reported by Sampler.seed so the run can be repeated

    def __post_init__(self):
        for flag, value, ok in (("--temperature", self.temperature, self.temperature >= 0),
                                ("--top-k", self.top_k, self.top_k >= 0),
                                ("--top-p", self.top_p, 0 < self.top_p <= 1),
                                ("--repetition-penalty", self.repetition_penalty, self.repetition_penalty > 0)):
            if not ok:
                raise UsageError(f"{flag} {value}: out of range (temperature >= 0, top-k >= 0, 0 < top-p <= 1, "
                                 "repetition-penalty > 0)")
        if self.seed is not None and not 0 <= self.seed <= _MASK64:
            raise UsageError(f"--seed {self.seed}: out of range (0 <= seed < 2**64)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        return asdict(self)


class SplitMix64:
    """Steele, Lea and Flood's SplitMix64 (as in Java's SplittableRandom): tiny, and bit-exact in every language."""

    def __init__(self, seed: int):
        self.state = seed & _MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def next_unit(self) -> float:
        """A float64 in [0, 1) from the top 53 bits of one draw."""
        return (self.next_u64() >> 11) * 2.0**-53


class Sampler:
    def __init__(self, config: SamplingConfig = SamplingConfig()):
        self.config = config
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**63)
        self.rng = SplitMix64(self.seed)

    def __call__(self, logits: torch.Tensor, context: list[int] | None = None) -> int:
        """One token from logits [vocab]; `context` = every token so far (prompt and generated), for the penalty."""
        scores = filtered_scores(logits, context, self.config).numpy()
        if self.config.greedy:
            return int(scores.argmax())  # numpy's argmax returns the first of equal maxima
        return draw(scores, self.rng.next_unit())


def draw(scores: np.ndarray, unit: float) -> int:
    """The token whose cumulative weight, summed in index order, first exceeds `unit` x the total (SAMPLING.md, 6)."""
    weights = np.exp(scores - scores.max())  # -inf -> 0
    cumulative = np.cumsum(weights)  # np.cumsum is a sequential scan: the order the other runtimes sum in
    picked = int(np.searchsorted(cumulative, unit * cumulative[-1], side="right"))
    if picked == len(weights):  # unit x total rounded up to the total
        picked = int(np.flatnonzero(weights > 0)[-1])
    return picked


def filtered_scores(logits: torch.Tensor, context: list[int] | None, cfg: SamplingConfig) -> torch.Tensor:
    """The float64 scores [vocab] a token is drawn from: penalised, tempered, and -inf outside top-k / top-p."""
    scores = logits.detach().float().double().clone()
    if cfg.repetition_penalty != 1.0 and context:
        seen = torch.tensor(sorted(set(context)), dtype=torch.long)
        picked = scores[seen]
        # CTRL's penalty as transformers applies it: shrink positive logits, push negative ones further down.
        scores[seen] = torch.where(picked < 0, picked * cfg.repetition_penalty, picked / cfg.repetition_penalty)
    if cfg.greedy:
        return scores
    scores = scores / cfg.temperature
    if 0 < cfg.top_k < scores.numel():
        kth = torch.topk(scores, cfg.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        # Ascending, ties by index (stable), so every runtime drops the same tokens.
        sorted_scores, order = torch.sort(scores, descending=False, stable=True)
        weights = np.exp(sorted_scores.numpy() - sorted_scores[-1].item())
        cumulative = np.cumsum(weights)
        # Drop the low tail whose mass is <= 1 - top_p; the most likely token always survives.
        drop_sorted = torch.from_numpy(cumulative / cumulative[-1] <= (1 - cfg.top_p))
        drop_sorted[-1] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores
