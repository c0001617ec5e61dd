"""ONPO (Zhang et al. 2025, arXiv 2502.16852): optimistic online mirror descent in self-play.

Two sequences: the centre π′ and the played π. With ``r_t = a_{π_t}`` and the prediction
``m_{t+1} = r_t``: ``log π′_{t+1} = log π′_t + η r_t`` and ``log π_{t+1} = log π′_{t+1} + η r_t``,
i.e. ``log π_{t+1} = log π_t + η (2 r_t − r_{t−1})`` (optimistic MWU). Last iterate → Nash for
``η ≤ 1/(8L)`` in theory. Sampled form: two fits on the same pairs from π_t, anchors ``log π′_t``
and ``log π′_{t+1}``, target ``η (â(y) − â(y'))`` each.

With ``τ > 0`` both steps are taken on the game regularised toward μ, the KL taken implicitly as
in extragradient's magnetic form (``s = 1 + ητ``):

    log π′_{t+1} = (log π′_t + ητ log μ + η r_t) / s,    log π_{t+1} = (log π′_{t+1} + ητ log μ + η r_t) / s

whose fixed point is ``π′ = π = π*_τ(μ)`` (``log π = log μ + a_π/τ``): an inner rule for COMAL that
samples one policy an iteration where mirror-prox samples two.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, REFERENCE, Rule, magnetic_step

CENTRE = "centre"


@dataclass(frozen=True)
class ONPO(Rule):
    name = "onpo"
    uses_tau = True
    solves_subgame = True

    @property
    def keeps(self) -> tuple[str, ...]:
        return (CURRENT, CENTRE, REFERENCE) if self.tau else (CURRENT, CENTRE)

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "ONPO":
        return cls(**{"eta": 0.5 / scale, **overrides})

    def prox_steps(self):
        return (magnetic_step(CENTRE, CENTRE, CURRENT, self.eta, self.tau),
                magnetic_step(CURRENT, CENTRE, CURRENT, self.eta, self.tau))
