"""Token sampling: greedy, temperature, top-k, top-p, repetition penalty; seeded and reproducible.

The filters follow transformers' generation semantics (so a user's settings mean the same thing here as there), in
the same order: repetition penalty, temperature, top-k, top-p. Temperature 0 is greedy (argmax after the penalty).
Every random draw comes from one `torch.Generator` owned by the sampler: the same seed, bundle and prompt give the
same tokens on every run.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already in the context
    seed: int | None = None  # None = a fresh seed, reported by Sampler.seed so the run can be repeated

    def __post_init__(self):
        for flag, ok in (("--temperature", self.temperature >= 0), ("--top-k", self.top_k >= 0),
                         ("--top-p", 0 < self.top_p <= 1), ("--repetition-penalty", self.repetition_penalty > 0)):
            if not ok:
                value = {"--temperature": self.temperature, "--top-k": self.top_k, "--top-p": self.top_p,
                         "--repetition-penalty": self.repetition_penalty}[flag]
                raise ValueError(f"{flag} {value}: out of range (temperature >= 0, top-k >= 0, 0 < top-p <= 1, "
                                 "repetition-penalty > 0)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        return asdict(self)


class Sampler:
    def __init__(self, config: SamplingConfig = SamplingConfig()):
        self.config = config
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**63)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, logits: torch.Tensor, context: list[int] | None = None) -> int:
        """One token from logits [vocab]; `context` = every token so far (prompt and generated), for the penalty."""
        scores = filtered_scores(logits, context, self.config)
        if self.config.greedy:
            return int(scores.argmax())
        return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator)[0])


def filtered_scores(logits: torch.Tensor, context: list[int] | None, cfg: SamplingConfig) -> torch.Tensor:
    """The scores [vocab] a token is drawn from: penalised, tempered, and -inf outside top-k / top-p."""
    scores = logits.detach().float().clone()
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
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        # Drop the low tail whose mass is <= 1 - top_p; the most likely token always survives.
        drop_sorted = cumulative <= (1 - cfg.top_p)
        drop_sorted[-1] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores
