"""ONPO (Zhang et al. 2025, arXiv 2502.16852): optimistic online mirror descent in self-play.

Two sequences: the centre π′ and the played π. With ``r_t = a_{π_t}`` and the prediction
``m_{t+1} = r_t``: ``log π′_{t+1} = log π′_t + η r_t`` and ``log π_{t+1} = log π′_{t+1} + η r_t``,
i.e. ``log π_{t+1} = log π_t + η (2 r_t − r_{t−1})`` (optimistic MWU). Last iterate → Nash for
``η ≤ 1/(8L)`` in theory. Sampled form: two fits on the same pairs from π_t, anchors ``log π′_t``
and ``log π′_{t+1}``, target ``η (â(y) − â(y'))`` each.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, ProxStep, Rule

CENTRE = "centre"


@dataclass(frozen=True)
class ONPO(Rule):
    name = "onpo"
    keeps = (CURRENT, CENTRE)

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "ONPO":
        return cls(**{"eta": 0.5 / scale, **overrides})

    def prox_steps(self):
        return (ProxStep(CENTRE, {CENTRE: 1.0}, CURRENT, self.eta),
                ProxStep(CURRENT, {CENTRE: 1.0}, CURRENT, self.eta))
