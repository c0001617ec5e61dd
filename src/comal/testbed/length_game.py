"""The paper's 3×3 game played by a real LLM: a response's class is its length.

A response is *short*, *medium* or *long* by its token count, with thresholds at the 20th and 70th
percentiles of the start model's response lengths on the prompts, so the start plays about the
paper's start ``[0.2, 0.5, 0.3]``. The judge sees only classes: ``P(a ≻ b | x) = M[c(a), c(b)]`` with
COMAL's cyclic matrix ``M`` (:func:`comal.games.paper_3x3`). The LLM policy therefore plays the 3×3
game through its class distribution ``p``, and its exact duality gap is that of ``p``,
``2 · max(M p) − 1``, zero exactly at the Nash ``[4/11, 3/11, 4/11]``: a real model's distance to
the Nash, measured from fresh samples with a bootstrap standard error over prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from comal.games import duality_gap, paper_3x3
from comal.llm.judge import Judge

CLASSES = ("short", "medium", "long")
START_QUANTILES = (0.2, 0.7)  # the start plays [0.2, 0.5, 0.3], as in the paper's 3×3 study


@dataclass(frozen=True)
class LengthClasses:
    """``short`` below ``thresholds[0]`` tokens, ``long`` from ``thresholds[1]`` on, ``medium`` between."""

    thresholds: tuple[float, float]

    @classmethod
    def calibrate(cls, lengths: Sequence[int], quantiles: tuple[float, float] = START_QUANTILES) -> LengthClasses:
        """Thresholds at the ``quantiles`` of the start model's response lengths."""
        lengths = np.asarray(lengths, dtype=np.float64)
        if lengths.size < 3:
            raise ValueError(f"calibrating three length classes needs at least 3 responses, got {lengths.size}")
        low, high = np.quantile(lengths, quantiles, method="higher")
        if low >= high:
            raise ValueError(f"the start model's responses are too alike in length to split into three classes "
                             f"(the {quantiles[0]:.0%} and {quantiles[1]:.0%} quantiles are both {low:g} tokens); "
                             "raise sampling.max_new_tokens or choose prompts with answers of varied length")
        return cls((float(low), float(high)))

    def classify(self, lengths) -> np.ndarray:
        """0 (short), 1 (medium) or 2 (long) for each length."""
        lengths = np.asarray(lengths)
        return (lengths >= self.thresholds[0]).astype(int) + (lengths >= self.thresholds[1]).astype(int)


def token_length(tokenizer, text: str) -> int:
    """A response's length as the judge counts it: the tokens of its text."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


class LengthClassJudge(Judge):
    """``P(a ≻ b) = matrix[c(a), c(b)]``, a response's class read from its token count."""

    def __init__(self, tokenizer, classes: LengthClasses, matrix: np.ndarray | None = None):
        self.tokenizer, self.classes = tokenizer, classes
        self.matrix = paper_3x3()[0] if matrix is None else np.asarray(matrix, dtype=np.float64)

    def length(self, text: str) -> int:
        return token_length(self.tokenizer, text)

    def prefer(self, prompts, first, second):
        a = self.classes.classify([self.length(text) for text in first])
        b = self.classes.classify([self.length(text) for text in second])
        return self.matrix[a, b]


def class_shares(classes_per_prompt: Sequence[Sequence[int]]) -> np.ndarray:
    """``[prompts, 3]``: the share of each class among each prompt's responses."""
    return np.stack([np.bincount(np.asarray(c, dtype=int), minlength=len(CLASSES)) / len(c)
                     for c in classes_per_prompt])


def class_gap(shares: np.ndarray, matrix: np.ndarray | None = None, resamples: int = 2000,
              seed: int = 0) -> dict:
    """The duality gap of the class distribution (the mean over prompts of ``shares``) with its
    bootstrap standard error over prompts: ``{"distribution", "gap", "standard_error"}``."""
    game = (paper_3x3() if matrix is None else np.asarray(matrix)[None]).astype(np.float64)
    shares = np.asarray(shares, dtype=np.float64)
    distribution = shares.mean(axis=0)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(shares), size=(resamples, len(shares)))
    gaps = [duality_gap(game, shares[rows].mean(axis=0)[None]) for rows in draws]
    return {"distribution": distribution.tolist(), "gap": duality_gap(game, distribution[None]),
            "standard_error": float(np.std(gaps, ddof=1))}
