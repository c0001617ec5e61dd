"""Multiplicative weights (online mirror descent with entropy) in self-play.

Tabular: ``log π_{t+1} = log π_t + η a_{π_t}`` (renormalised). It is the population form of SPPO
and of iterative IPO with reference π_t. Its average iterate converges to a Nash policy; its last
iterate spirals away (``KL(π*‖π_t)`` is non-decreasing when the Nash is interior).
Sampled form: anchor ``log π_t``, target ``η (â(y) − â(y'))`` with responses drawn from π_t.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, ProxStep, Rule


@dataclass(frozen=True)
class MWU(Rule):
    name = "mwu"

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "MWU":
        # η·scale = 1/10: the outward spiral is visible before the iterate reaches the boundary
        return cls(**{"eta": 0.1 / scale, **overrides})

    def prox_steps(self):
        return (ProxStep(CURRENT, {CURRENT: 1.0}, CURRENT, self.eta),)
