"""Exact measures of a policy in a preference game (per prompt, then averaged over prompts).

``policy`` arrays are ``[prompts, n]`` (or ``[n]`` for a one-prompt game) and rows sum to one.
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy


def win_rates(game: np.ndarray, policy: np.ndarray) -> np.ndarray:
    """``P(y ≻ π)`` for every response: the batched mat-vec ``P π``."""
    policy = np.broadcast_to(policy, game.shape[:2])
    return np.matmul(game, policy[..., None])[..., 0]


def advantage(game: np.ndarray, policy: np.ndarray) -> np.ndarray:
    """``a_π(y) = P(y ≻ π) − 1/2``, the payoff of each response against ``π``."""
    return win_rates(game, policy) - 0.5


def advantage_from_draws(wins: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``â(y)`` of a drawn response: its mean win rate against the *other* draws minus 1/2,
    ``(Σ_v counts[v] P(y ≻ v) − 1/2) / (k − 1) − 1/2`` with ``k = Σ counts`` (the draw itself, a tie
    at 1/2, left out); unbiased per draw. ``wins [..., m, m]``, ``counts [..., m]``."""
    counts = np.asarray(counts, dtype=np.float64)
    return (np.matmul(wins, counts[..., None])[..., 0] - 0.5) / (counts.sum(-1, keepdims=True) - 1) - 0.5


def sampled_advantage(game: np.ndarray, policy: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``a_π`` as the LLM loop estimates it from ``samples`` draws of ``π`` per prompt
    (:func:`advantage_from_draws`, as ``comal.llm.pairs`` does); a response not drawn gets 0, the
    policy's mean advantage (``E_π[a_π] = 0``)."""
    policy = np.broadcast_to(policy, game.shape[:2])
    counts = np.stack([rng.multinomial(samples, row / row.sum()) for row in policy])
    return np.where(counts > 0, advantage_from_draws(game, counts), 0.0)


def gap_from_advantage(advantages: np.ndarray) -> np.ndarray:
    """Per-prompt duality gap ``2 · max_y a_π(y)`` from precomputed advantages."""
    return 2.0 * advantages.max(axis=-1)


def duality_gap(game: np.ndarray, policy: np.ndarray) -> float:
    """``DG(π) = 2 · max_y P(y ≻ π) − 1``, averaged over prompts; zero exactly at a Nash policy."""
    return float(np.mean(np.maximum(gap_from_advantage(advantage(game, policy)), 0.0)))


def best_response_win_rate(game: np.ndarray, policy: np.ndarray) -> float:
    """``max_y P(y ≻ π)`` averaged over prompts: how often the best reply beats ``π`` (= (1 + DG)/2)."""
    return float(np.mean(win_rates(game, policy).max(axis=-1)))


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p ‖ q) = Σ p log(p / q)`` per prompt, averaged over prompts (``inf`` where q misses p's support)."""
    p, q = np.broadcast_arrays(np.atleast_2d(p), np.atleast_2d(q))
    with np.errstate(divide="ignore"):
        per_prompt = np.sum(xlogy(p, p) - xlogy(p, q), axis=-1)
    return float(np.mean(np.maximum(per_prompt, 0.0)))  # ≥ 0; clips rounding noise
