"""MPO (Wang et al. 2024, arXiv 2410.16714): magnetic mirror descent with a refreshed magnet.

Tabular: ``log π_{t+1} = (log π_t + ητ log μ + η a_{π_t}) / (1 + ητ)`` — the KL to the magnet μ
taken implicitly, stable for any η when τ ≥ the game's rotation speed — and ``μ ← π_t`` every
``period`` steps. Sampled form: anchor ``(log π_t + ητ log μ)/(1 + ητ)``, step ``η/(1 + ητ)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, REFERENCE, Rule, check_period, magnetic_step


def magnetic_eta(tau: float, scale: float) -> float:
    """A stable step for the magnetic (implicit-KL) update: it multiplies a rotation mode ``iω`` by
    ``(1 + iηω)/(1 + ητ)``, which contracts for every ``|ω| ≤ scale`` when ``η (scale² − τ²) < 2τ``;
    half that bound, and at most ``1/scale``."""
    return 1.0 / scale if tau >= scale else min(1.0 / scale, tau / (scale**2 - tau**2))


@dataclass(frozen=True)
class MPO(Rule):
    name = "mpo"
    keeps = (CURRENT, REFERENCE)
    uses_tau = True
    solves_subgame = True  # with period None (COMAL moves the reference itself)
    period: int | None = 100  # magnet refresh every this many steps; None: never

    def __post_init__(self):
        super().__post_init__()
        check_period(self.name, self.period)

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "MPO":
        tau = overrides.pop("tau", scale)
        return cls(**{"eta": magnetic_eta(tau, scale), "tau": tau, **overrides})

    def prox_steps(self):
        return (magnetic_step(CURRENT, CURRENT, CURRENT, self.eta, self.tau),)

    def reference_due(self, state, advantages):
        return self.period is not None and state.since_reference >= self.period
