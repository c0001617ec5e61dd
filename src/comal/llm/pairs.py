"""Training rows from the judged samples of one prompt.

The k samples of a prompt are kept as m distinct responses with their ``counts`` (Σ counts = k;
positive reals for expected counts);
``wins[u, v]`` is the judged probability that response u beats response v (both orders averaged,
so ``wins + winsᵀ = 1``). The estimated advantage of a sample against the sampling policy is its
average win rate over the *other* samples minus 1/2,

    â(u) = (Σ_v counts[v] · wins[u, v] − 1/2) / (k − 1) − 1/2,

the same for every copy of u. Rows are built once per distinct response (pair) and weighted by
the number of samples (sample pairs) they stand for, which gives the loss over all samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comal.games import advantage_from_draws


@dataclass(frozen=True)
class PairRow:
    """One regression row: responses ``first``/``second`` (indices into the distinct responses)."""

    first: int
    second: int | None  # None: a pointwise row (SPPO)
    target: float  # â(first) − â(second) for soft rows; 1/2 for a hard (chosen, rejected) row; â(first) pointwise
    weight: float = 1.0  # how many sample pairs (or samples) with this loss the row stands for


def _counts(wins: np.ndarray, counts) -> np.ndarray:
    wins = np.asarray(wins)
    m = wins.shape[0] if wins.ndim == 2 else 0
    counts = np.ones(m) if counts is None else np.asarray(counts, dtype=np.float64)
    if wins.shape != (m, m) or counts.shape != (m,) or counts.sum() < 2 or (counts <= 0).any():
        raise ValueError(f"need a square matrix of at least 2 judged samples, got shape {wins.shape} "
                         f"with counts {counts.tolist()}")
    return counts


def estimated_advantages(wins: np.ndarray, counts=None) -> np.ndarray:
    """``â(u)`` for each distinct response; ``counts`` default to one sample each."""
    return advantage_from_draws(np.asarray(wins, dtype=np.float64), _counts(wins, counts))


def soft_rows(wins: np.ndarray, counts=None) -> list[PairRow]:
    """One row per unordered pair of distinct responses, target ``â(u) − â(v)``, weight
    ``counts[u] · counts[v]``: the loss over all ``k(k − 1)`` ordered sample pairs up to a factor 2
    (the reversed pair has the same squared loss; two copies of one response have margin 0 for
    every θ, so no gradient and no row)."""
    advantages, counts = estimated_advantages(wins, counts), _counts(wins, counts)
    m = len(advantages)
    return [PairRow(u, v, float(advantages[u] - advantages[v]), float(counts[u] * counts[v]))
            for u in range(m) for v in range(u + 1, m)]


def pointwise_rows(wins: np.ndarray, counts=None) -> list[PairRow]:
    """SPPO's rows: each distinct response with target ``â(u)``, weighted by its count."""
    advantages, counts = estimated_advantages(wins, counts), _counts(wins, counts)
    return [PairRow(u, None, float(advantages[u]), float(counts[u])) for u in range(len(advantages))]


def hard_rows(wins: np.ndarray, counts=None, min_margin: float = 0.0) -> list[PairRow]:
    """Chosen = best average win rate, rejected = second best (the official COMAL code); target 1/2.

    Ties are broken by order. A prompt whose responses all score the same gives no row, nor one
    whose chosen beats its rejected by less than ``min_margin`` (``|P(chosen ≻ rejected) − 1/2| <
    min_margin``: a near-tie the loss would still push to a margin of η/2).
    """
    advantages = estimated_advantages(wins, counts)
    if len(advantages) < 2:
        return []
    order = np.argsort(-advantages, kind="stable")
    best, second = int(order[0]), int(order[1])
    if advantages[best] == advantages[second] or abs(wins[best, second] - 0.5) < min_margin:
        return []
    return [PairRow(best, second, 0.5)]
