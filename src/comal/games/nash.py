"""Solvers: the exact Nash policy by linear programming, and the KL-regularised Nash ``π*_τ(μ)``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.special import log_softmax

from comal.games.measures import advantage


def payoff_scale(game: np.ndarray) -> float:
    """``L = max |P − 1/2|``: the largest payoff, a bound on how fast advantages can change.

    It is the Lipschitz constant of ``π ↦ a_π`` from ℓ1 to ℓ∞, and it bounds the rotation speed
    of every mirror-descent rule on the game, so step sizes are set from it.
    """
    return float(np.max(np.abs(game - 0.5)))


class TimeLimitReached(RuntimeError):
    """The LP did not finish within the time it was given."""


def _out_of_time(time_limit: float, solved: int, prompts: int, n: int) -> TimeLimitReached:
    return TimeLimitReached(f"the Nash LP did not finish within {time_limit:g} s ({solved} of {prompts:,} prompts "
                            f"solved, {n:,} actions); raise --time-limit, or let `game run` measure the gap "
                            "without it (--no-nash)")


def nash_lp(game: np.ndarray, time_limit: float | None = None,
            on_prompt: Callable[[int], None] | None = None) -> np.ndarray:
    """Nash policy of each prompt's symmetric game by linear programming (HiGHS).

    Solves ``max v  s.t.  Σ_i π_i A_ij ≥ v ∀j, π ∈ Δ`` with ``A = P − 1/2``; the value is 0.
    Returns ``[prompts, n]``. The LP is dense (n² coefficients): about 1 s at n = 500 and 10 s at
    1,000 on one CPU core, growing as n^3.5. ``time_limit`` (seconds, all prompts together) stops
    it with :class:`TimeLimitReached`; ``on_prompt(x)`` is called as each prompt is solved.
    """
    prompts, n, _ = game.shape
    started = time.perf_counter()
    cost = np.zeros(n + 1)
    cost[-1] = -1.0  # maximise v
    equality = np.concatenate([np.ones(n), [0.0]])[None]
    bounds = [(0.0, None)] * n + [(None, None)]
    options = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
    policies = np.empty((prompts, n))
    for x in range(prompts):
        payoff = game[x] - 0.5
        # v − (Aᵀ π)_j ≤ 0 for every column j
        upper = np.concatenate([-payoff.T, np.ones((n, 1))], axis=1)
        if time_limit is not None:
            left = time_limit - (time.perf_counter() - started)
            if left <= 0:
                raise _out_of_time(time_limit, x, prompts, n)
            options["time_limit"] = left
        result = linprog(cost, A_ub=upper, b_ub=np.zeros(n), A_eq=equality, b_eq=[1.0],
                         bounds=bounds, method="highs", options=options)
        if result.status == 1 and time_limit is not None:
            raise _out_of_time(time_limit, x, prompts, n)
        if result.status != 0:  # a symmetric matrix game always has a solution
            raise RuntimeError(f"LP solver failed on prompt {x}: {result.message}")
        policy = np.clip(result.x[:n], 0.0, None)
        policies[x] = policy / policy.sum()
        if on_prompt is not None:
            on_prompt(x + 1)
    return policies


@dataclass(frozen=True)
class RegularizedNash:
    """``π*_τ(μ)`` with the fixed-point residual it was solved to."""

    policy: np.ndarray  # [prompts, n]
    residual: float  # max |log π − log softmax(log μ + a_π / τ)| over the support of μ
    iterations: int


def fixed_point_residual(log_policy: np.ndarray, log_reference: np.ndarray, advantages: np.ndarray,
                         tau: float) -> float:
    """``max |log π − log softmax(log μ + a_π/τ)|`` given ``a_π``: zero exactly at ``π*_τ(μ)``.

    ``a_π`` is shifted by its maximum over the support of μ before the division, which leaves the
    softmax unchanged and keeps ``a/τ`` from overflowing at a tiny τ (the residual is then inf, not NaN).
    """
    support = np.isfinite(log_reference)
    highest = np.max(np.where(support, advantages, -np.inf), axis=-1, keepdims=True)
    with np.errstate(over="ignore", under="ignore"):  # to −inf or 0: both are the right limits
        scaled = np.where(support, (advantages - highest) / tau, -np.inf)
    target = log_softmax(log_reference + scaled, axis=-1)
    return float(np.max(np.abs(np.where(support, log_policy - target, 0.0))))


def regularized_nash(game: np.ndarray, reference: np.ndarray, tau: float, *,
                     tolerance: float = 1e-12, max_iterations: int = 1_000_000) -> RegularizedNash:
    """Unique Nash of ``J_τ(π1, π2) = P(π1 ≻ π2) − τ KL(π1‖μ) + τ KL(π2‖μ)``.

    It is the fixed point ``π(y) ∝ μ(y) exp(a_π(y)/τ)``. Solved by mirror-prox (extragradient)
    with the KL term taken implicitly (magnetic step, stable for any τ):
    ``log π⁺ = (log π + ητ log μ + η a) / (1 + ητ)``, contracting by ``1/(1+ητ)`` per step.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    log_reference = np.log(np.broadcast_to(reference, game.shape[:2]))
    eta = 1.0 / max(payoff_scale(game), 1e-12)
    anchored = eta * tau * np.where(np.isfinite(log_reference), log_reference, 0.0)

    def magnetic_step(log_policy, log_opponent):
        logits = (log_policy + anchored + eta * advantage(game, np.exp(log_opponent))) / (1 + eta * tau)
        return np.where(np.isfinite(log_reference), log_softmax(logits, axis=-1), -np.inf)

    log_policy = np.where(np.isfinite(log_reference), log_softmax(log_reference, axis=-1), -np.inf)
    def residual_of(log_policy):
        return fixed_point_residual(log_policy, log_reference, advantage(game, np.exp(log_policy)), tau)

    residual = residual_of(log_policy)
    iteration = 0
    while residual > tolerance and iteration < max_iterations:
        half = magnetic_step(log_policy, log_policy)
        log_policy = magnetic_step(log_policy, half)
        iteration += 1
        if iteration % 10 == 0 or iteration == max_iterations:
            residual = residual_of(log_policy)
    return RegularizedNash(np.exp(log_policy), residual, iteration)


def rotation_speed(game: np.ndarray, policy: np.ndarray, *, iterations: int = 30,
                   start: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Largest rotation speed ``ω = max |λ(A Σ)|`` of the game around ``policy``, and its vector.

    Mirror descent in log coordinates moves along ``η A Σ`` with ``Σ = diag(π) − ππᵀ`` and
    ``A = P − 1/2`` antisymmetric, so ``A Σ`` has eigenvalues ``± iω`` with ``ω ≤ max|A|``. Power
    iteration on ``(A Σ)²`` (eigenvalues ``−ω²``); pass the returned vector as ``start`` to warm
    up the next estimate. Returns the largest ``ω`` over prompts.
    """
    policy = np.broadcast_to(policy, game.shape[:2])
    payoff = game - 0.5

    def rotate(v):
        centred = policy * (v - np.sum(policy * v, axis=-1, keepdims=True))  # Σ v
        return np.matmul(payoff, centred[..., None])[..., 0]

    vector = np.random.default_rng(0).normal(size=policy.shape) if start is None else start
    speed_squared = np.zeros(len(policy))
    for _ in range(iterations):
        image = rotate(rotate(vector))
        norm_before = np.linalg.norm(vector, axis=-1)
        norm_after = np.linalg.norm(image, axis=-1)
        speed_squared = norm_after / np.maximum(norm_before, 1e-300)
        vector = image / np.maximum(norm_after, 1e-300)[:, None]
    return float(np.sqrt(np.max(speed_squared))), vector
