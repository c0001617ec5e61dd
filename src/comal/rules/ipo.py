"""Online IPO (Azar et al. 2023, arXiv 2310.12036; the COMAL paper's "IPO" baseline): IPO against
the fixed start policy μ, on pairs drawn from the current policy.

Tabular: ``log π_{t+1} = log μ + η a_{π_t}``, IPO's population optimum ``μ · exp(P(y ≻ π_t)/τ_IPO)``
with ``η = 1/τ_IPO``. The reference never moves, so a fixed point is ``π*_{1/η}(μ)`` (a gap of
order 1/η remains) and a large η makes the iteration a damped best response that can cycle.
Sampled form: anchor ``log μ``, target ``η (â(y) − â(y'))`` (soft rows) or ``η/2`` for a judged
(chosen, rejected) pair (hard rows): IPO's loss ``(log-ratio margin − 1/(2τ_IPO))²``.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, REFERENCE, ProxStep, Rule


@dataclass(frozen=True)
class IPO(Rule):
    name = "ipo"
    keeps = (CURRENT, REFERENCE)

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "IPO":
        # η·scale = 1/2, as ONPO: a damped best response, gentle enough not to cycle on small games
        return cls(**{"eta": 0.5 / scale, **overrides})

    def prox_steps(self):
        return (ProxStep(CURRENT, {REFERENCE: 1.0}, CURRENT, self.eta),)
