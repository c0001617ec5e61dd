"""INPO (Zhang et al. 2024, arXiv 2407.00617): mirror descent on the KL-regularised game.

Tabular: ``log π_{t+1} = (1 − ητ) log π_t + ητ log μ + η a_{π_t}`` (COMAL's Algorithm 2). Its
last iterate converges to ``π*_τ(μ)``, the fixed point ``π ∝ μ exp(a_π/τ)``, which is *not* the
Nash policy: a gap of order τ remains. Sampled form: anchor ``(1 − ητ) log π_t + ητ log μ``,
target ``η (â(y) − â(y'))``; the official code's ``nash_loss`` with ``eta = 1/η`` and
``tau_eta_ratio = ητ``.

Step size: linearised at the fixed point the step multiplies each rotation mode ``iω`` of the
game by ``(1 − ητ) + iηω`` with ``|ω| ≤ L = max|P − 1/2|``; ``η = τ / (τ² + L²)`` keeps every
mode contracting (half the largest stable step).
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, REFERENCE, ProxStep, Rule


def stable_eta(tau: float, scale: float) -> float:
    """Half the largest step for which ``(1 − ητ) + iηω`` contracts for every ``|ω| ≤ scale``."""
    return 1.0 / (tau + scale * scale / tau)  # = τ / (τ² + scale²), without squaring a large τ


@dataclass(frozen=True)
class INPO(Rule):
    name = "inpo"
    keeps = (CURRENT, REFERENCE)
    uses_tau = True
    solves_subgame = True

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.eta * self.tau <= 1:
            raise ValueError(f"{self.name}: needs 0 < η·τ ≤ 1 (the weight on μ), got {self.eta * self.tau}")

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "INPO":
        tau = overrides.pop("tau", scale / 4)
        if "eta" not in overrides and not tau > 0:
            raise ValueError(f"inpo: tau must be positive (η·τ is the weight on μ), got {tau}")
        return cls(**{"eta": overrides.pop("eta") if "eta" in overrides else stable_eta(tau, scale), "tau": tau,
                      **overrides})

    def prox_steps(self):
        mix = self.eta * self.tau
        return (ProxStep(CURRENT, {CURRENT: 1 - mix, REFERENCE: mix}, CURRENT, self.eta),)
