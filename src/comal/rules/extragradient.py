"""Extragradient / mirror-prox (Korpelevich 1976; Nemirovski 2004; EGPO, arXiv 2503.08942).

Tabular: a half step from π_t with its own advantage, then the full step from the same point
with the half step's advantage. With ``τ > 0`` it solves the game regularised toward μ, the KL
taken implicitly (magnetic form, stable for any ητ):

    log π_{t+½} = (log π_t + ητ log μ + η a_{π_t}) / (1 + ητ)
    log π_{t+1} = (log π_t + ητ log μ + η a_{π_{t+½}}) / (1 + ητ)

Two advantage evaluations (two rounds of samples) per iteration. With ``τ = 0`` the last iterate
converges to a Nash policy for ``η < 1/L``; with ``τ > 0`` to ``π*_τ(μ)``, linearly at a rate
``1/(1+ητ)``, which makes it COMAL's fastest inner solver.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, REFERENCE, Rule, magnetic_step

HALF = "half"


@dataclass(frozen=True)
class Extragradient(Rule):
    name = "extragradient"
    uses_tau = True
    solves_subgame = True

    @property
    def keeps(self) -> tuple[str, ...]:
        return (CURRENT, REFERENCE) if self.tau else (CURRENT,)

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "Extragradient":
        return cls(**{"eta": 0.5 / scale, **overrides})

    def prox_steps(self):
        return (magnetic_step(HALF, CURRENT, CURRENT, self.eta, self.tau),
                magnetic_step(CURRENT, CURRENT, HALF, self.eta, self.tau))
