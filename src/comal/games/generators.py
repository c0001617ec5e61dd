"""Seeded generators of preference games, each returning a valid stack ``[prompts, n, n]``."""

from __future__ import annotations

import numpy as np
from scipy.special import expit


def paper_3x3() -> np.ndarray:
    """COMAL's 3×3 cyclic game (b ≻ a 0.9, c ≻ b 0.9, a ≻ c 0.8); unique Nash [4/11, 3/11, 4/11]."""
    return np.array([[[0.5, 0.1, 0.8], [0.9, 0.5, 0.1], [0.2, 0.9, 0.5]]])


def _preference(logits: np.ndarray) -> np.ndarray:
    """``σ(z)`` of antisymmetric logits ``[prompts, n, n]``, in place, made exactly complementary."""
    game = expit(logits, out=logits)
    lower = np.tril_indices(game.shape[-1], k=-1)
    for matrix in game:  # one prompt at a time keeps the peak memory near one matrix
        matrix[lower] = 1.0 - matrix.T[lower]
        np.fill_diagonal(matrix, 0.5)
    return game


def bradley_terry(n: int, prompts: int = 1, *, scale: float = 2.0, seed: int = 0) -> np.ndarray:
    """Transitive game ``P(y_i ≻ y_j) = σ(r_i − r_j)`` with rewards ``r ~ N(0, scale²)``; Nash is pure."""
    rewards = np.random.default_rng(seed).normal(scale=scale, size=(prompts, n))
    return _preference(np.subtract(rewards[:, :, None], rewards[:, None, :]))


def random_intransitive(n: int, prompts: int = 1, *, rank: int = 4, scale: float = 4.0,
                        seed: int = 0) -> np.ndarray:
    """Intransitive game ``P = σ(s (U Vᵀ − V Uᵀ) / √rank)`` with Gaussian ``U, V ∈ ℝ^{n×rank}``.

    The logits are skew-symmetric of rank ``2·rank``; with ``scale`` ≳ 3 many entries are near 0
    or 1, as real judges' preferences are. Small ``scale`` gives a Nash with small support.
    """
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(2, prompts, n, rank))
    logits = np.empty((prompts, n, n))
    for x in range(prompts):
        np.matmul(u[x], v[x].T, out=logits[x])
        logits[x] -= logits[x].T.copy()
        logits[x] *= scale / np.sqrt(rank)
    return _preference(logits)


def bradley_terry_cyclic(n: int, prompts: int = 1, *, weight: float = 0.5, rank: int = 4,
                         scale: float = 4.0, seed: int = 0) -> np.ndarray:
    """Mixture ``w · P_BT + (1 − w) · P_intransitive``: a reward signal plus a cyclic part."""
    return (weight * bradley_terry(n, prompts, scale=scale / 2, seed=seed)
            + (1 - weight) * random_intransitive(n, prompts, rank=rank, scale=scale, seed=seed + 1))


def interior_nash(n: int, prompts: int = 1, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A game whose Nash set contains a known full-support policy π (returned with the game).

    ``P = 1/2 + c · Bᵀ M B`` with ``M`` random skew-symmetric and ``B = I − π 1ᵀ``, so
    ``(P − 1/2) π = 0`` and π is a Nash policy; ``c`` puts the largest entry at 0 or 1. The
    Nash is unique for odd ``n`` (generically); for even ``n`` the set is a segment through π.
    """
    rng = np.random.default_rng(seed)
    games, nashes = [], []
    for _ in range(prompts):
        nash = rng.dirichlet(np.full(n, 2.0))
        skew = rng.normal(size=(n, n))
        project = np.eye(n) - np.outer(nash, np.ones(n))
        payoff = project.T @ (skew - skew.T) @ project
        payoff = (payoff - payoff.T) / 2  # exactly antisymmetric in floating point
        payoff *= 0.5 / np.abs(payoff).max()
        games.append(0.5 + payoff)
        nashes.append(nash)
    return np.stack(games), np.stack(nashes)


GENERATORS = {  # name → f(n, prompts, seed, **options of the generator)
    "paper-3x3": lambda n=3, prompts=1, seed=0: paper_3x3(),
    "bradley-terry": lambda n, prompts=1, seed=0, **options: bradley_terry(n, prompts, seed=seed, **options),
    "intransitive": lambda n, prompts=1, seed=0, **options: random_intransitive(n, prompts, seed=seed, **options),
    "bt-cyclic": lambda n, prompts=1, seed=0, **options: bradley_terry_cyclic(n, prompts, seed=seed, **options),
    "interior-nash": lambda n, prompts=1, seed=0: interior_nash(n, prompts, seed=seed)[0],
}
