"""Run a rule on a tabular game and record what a user compares: gap, KL to Nash, thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from comal.games import gap_from_advantage, kl_divergence, sampled_advantage, win_rates
from comal.rules import CURRENT, REFERENCE, Rule
from comal.rules.base import run_fraction

THRESHOLDS = (1e-3, 1e-6)


class Diverged(ArithmeticError):
    """The iterate stopped being a probability distribution (NaN): the step sizes are too large for
    floating point."""


@dataclass
class RunResult:
    """A finished run: the last iterate, its gap, and the history of the last iterate."""

    algorithm: str
    policy: np.ndarray  # final iterate, [prompts, n]
    duality_gap: float
    kl_to_nash: float | None
    history: list[dict] = field(default_factory=list)  # iteration, duality_gap, kl_to_nash
    steps_to: dict[float, int | None] = field(default_factory=dict)  # first iteration with gap ≤ t
    reference_kl: list[float] = field(default_factory=list)  # KL(π*‖μ_k) at every reference move
    trajectory: np.ndarray | None = None  # the policy at every iteration, if asked

    def to_json(self) -> dict:
        """Strict JSON: a KL that is infinite (π gives no mass to a response the Nash plays) or not
        measured (no Nash given) is null."""
        return {
            "algorithm": self.algorithm,
            "policy": _policy_json(self.policy),
            "duality_gap": self.duality_gap,
            "kl_to_nash": _finite(self.kl_to_nash),
            "steps_to": {f"{t:g}": s for t, s in self.steps_to.items()},
            "reference_kl": [_finite(kl) for kl in self.reference_kl],
            "history": [{**point, "kl_to_nash": _finite(point["kl_to_nash"])} for point in self.history],
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and np.isfinite(value) else None


def _policy_json(policy: np.ndarray) -> list:
    """One list for a one-prompt game, a list of lists otherwise."""
    return policy[0].tolist() if len(policy) == 1 else policy.tolist()


def record_points(iterations: int, points: int = 200) -> set[int]:
    """Iterations to record: ``points`` spread evenly over ``0..iterations`` (all when fewer)."""
    return set(np.unique(np.linspace(0, iterations, min(points, iterations + 1)).round().astype(int)).tolist())


def initial_policy(init: str | np.ndarray | None, n: int, *, seed: int = 0) -> np.ndarray:
    """``None``/"uniform", "random" (Dirichlet(1), seeded) or weights ``a,b,c`` (n positive numbers)."""
    if init is None or (isinstance(init, str) and init.strip() == "uniform"):
        return np.full(n, 1.0 / n)
    if isinstance(init, str) and init.strip() == "random":
        return np.random.default_rng(seed).dirichlet(np.ones(n))
    try:
        weights = np.array([float(v) for v in init.split(",")]) if isinstance(init, str) else np.asarray(init, float)
    except ValueError:
        raise ValueError(f"init '{init}' is not 'uniform' or comma-separated numbers like 0.2,0.5,0.3") from None
    if weights.shape != (n,):
        raise ValueError(f"init has {weights.size} weights but the game has {n} actions; give one per action")
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError("init weights must be positive finite numbers: every action needs probability > 0 "
                         "(the Nash must lie in the initial support)")
    weights = weights / weights.max()  # the sum of weights near the float maximum would overflow
    return weights / weights.sum()


def run(rule: Rule, game: np.ndarray, init: np.ndarray, iterations: int, *,
        nash: np.ndarray | None = None, until: float | None = None, points: int = 200,
        keep_trajectory: bool = False, on_step: Callable[[int], None] | None = None,
        samples: int | None = None, seed: int = 0, eta_final: float | None = None) -> RunResult:
    """Run ``rule`` for ``iterations`` steps from ``init`` and record the last iterate.

    The gap of π_t comes free from the advantage the step computes; it is checked against
    :data:`THRESHOLDS` at every iteration, and stored at ``points`` iterations spread over the
    run (and at the end). With ``until``, the run stops at the first iterate whose gap is at most
    ``until`` and returns that iterate. With ``samples``, every advantage the rule uses is
    estimated from that many draws of its policy per prompt (seeded by ``seed``), as the LLM loop
    estimates it (:func:`comal.games.sampled_advantage`): the sampled rule with perfect fits.
    With ``eta_final``, η decays geometrically to it over the iterations, ητ held (:meth:`Rule.annealed`).
    """
    if iterations < 0:
        raise ValueError(f"iterations must be ≥ 0, got {iterations}")
    estimate = None
    if samples is not None:
        rng = np.random.default_rng(seed)

        def estimate(game: np.ndarray, policy: np.ndarray) -> np.ndarray:
            return sampled_advantage(game, policy, samples, rng)

    state = rule.init(np.log(np.broadcast_to(init, game.shape[:2])))
    recorded = record_points(iterations, points)
    result = RunResult(rule.name, np.empty(0), np.nan, None, steps_to={t: None for t in THRESHOLDS})
    snapshots = []

    def measure(t: int, policy: np.ndarray, current_advantage: np.ndarray | None) -> float:
        """Gap of π_t (from the step's advantage when there is one); marks the thresholds reached."""
        if current_advantage is None:
            current_advantage = win_rates(game, policy) - 0.5
        gap = float(np.mean(np.maximum(gap_from_advantage(current_advantage), 0.0)))
        for threshold, reached in result.steps_to.items():
            if reached is None and gap <= threshold:
                result.steps_to[threshold] = t
        if keep_trajectory:
            snapshots.append(policy)
        return gap

    def record(t: int, policy: np.ndarray, gap: float) -> None:
        kl = kl_divergence(nash, policy) if nash is not None else None
        result.history.append({"iteration": t, "duality_gap": gap, "kl_to_nash": kl})

    for t in range(iterations):
        next_state, advantages = rule.annealed(run_fraction(t, iterations), eta_final).update(game, state, estimate)
        if np.isnan(next_state.policies[CURRENT]).any():
            raise Diverged(f"{rule.name} diverged at iteration {t + 1}: the policy became NaN (η = {rule.eta:.4g}, "
                           f"τ = {rule.tau:.4g}); use smaller steps")
        policy = np.exp(state.policies[CURRENT])
        gap = measure(t, policy, None if estimate else advantages.get(CURRENT))
        stopped = until is not None and gap <= until
        if t in recorded or stopped:
            record(t, policy, gap)
        if stopped:
            break
        if nash is not None and next_state.reference_updates > state.reference_updates:
            result.reference_kl.append(kl_divergence(nash, np.exp(next_state.policies[REFERENCE])))
        state = next_state
        if on_step is not None:
            on_step(t + 1)
    else:
        policy = np.exp(state.policies[CURRENT])
        record(iterations, policy, measure(iterations, policy, None))
    result.duality_gap = result.history[-1]["duality_gap"]
    result.policy = np.exp(state.policies[CURRENT])
    if nash is not None:
        result.kl_to_nash = kl_divergence(nash, result.policy)
    if keep_trajectory:
        result.trajectory = np.stack(snapshots)
    return result
