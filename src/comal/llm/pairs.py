"""Training rows from judged samples of one prompt.

``wins[i, j]`` is the judged probability that sample i beats sample j (both orders averaged, so
``wins + winsᵀ = 1``). The estimated advantage of a sample against the sampling policy is its
average win rate over the *other* samples minus 1/2, ``â(i) = mean_{j≠i} wins[i, j] − 1/2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairRow:
    """One regression row: responses ``first``/``second`` (indices into the samples) and target."""

    first: int
    second: int
    target: float  # â(first) − â(second) for soft rows; 1/2 for a hard (chosen, rejected) row


def estimated_advantages(wins: np.ndarray) -> np.ndarray:
    """``â(i) = mean_{j≠i} wins[i, j] − 1/2`` for k ≥ 2 samples of one prompt."""
    wins = np.asarray(wins, dtype=np.float64)
    k = wins.shape[0]
    if wins.shape != (k, k) or k < 2:
        raise ValueError(f"need a square matrix of at least 2 judged samples, got shape {wins.shape}")
    return (wins.sum(axis=1) - np.diag(wins)) / (k - 1) - 0.5


def soft_rows(wins: np.ndarray) -> list[PairRow]:
    """All ordered pairs of distinct samples, target ``â(i) − â(j)``."""
    advantages = estimated_advantages(wins)
    k = len(advantages)
    return [PairRow(i, j, float(advantages[i] - advantages[j])) for i in range(k) for j in range(k) if i != j]


def hard_rows(wins: np.ndarray) -> list[PairRow]:
    """Chosen = best average win rate, rejected = second best (the official COMAL code); target 1/2.

    Ties are broken by sample order. A prompt whose samples all score the same gives no row.
    """
    advantages = estimated_advantages(wins)
    order = np.argsort(-advantages, kind="stable")
    best, second = int(order[0]), int(order[1])
    return [] if advantages[best] == advantages[second] else [PairRow(best, second, 0.5)]
