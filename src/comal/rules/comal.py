"""COMAL (Liu et al. 2024, arXiv 2410.23223): the conceptual prox-method made practical.

Outer loop (Algorithm 1): ``μ_{k+1} ≈ π*_τ(μ_k)``, the Nash of the game regularised toward the
current reference; implicitly ``μ_{k+1} = Prox(μ_k, a_{μ_{k+1}}/τ)``, a proximal-point step, so
``KL(π*‖μ_{k+1}) ≤ KL(π*‖μ_k) − KL(μ_{k+1}‖μ_k)`` (Theorem 1) and the last iterate converges to
an exact Nash policy. Inner loop (Algorithm 2): an inner rule with a reference (INPO by
default) solves each regularised subgame, started from the current policy. The reference moves
``μ ← π_t`` after ``period`` inner steps (the LLM setting) or sooner, once the subgame is
solved to a relative accuracy: the fixed-point residual ``max|log π − log softmax(log μ + a_π/τ)|``
is below ``tolerance · max|log π − log μ|``, the distance the subgame has moved from μ. A
relative test is what inexact proximal-point methods need (errors shrink with the steps); an
absolute one would move μ every step near the Nash and turn COMAL back into MWU.
Sampled form: that of the inner rule, with μ the latest reference checkpoint.

The inner rules are those that declare ``solves_subgame`` (:func:`comal.rules.inner_rules`).
Defaults on a game with payoff scale ``L = max|P − 1/2|``: the inner rule is extragradient
(mirror-prox on ``J_τ``, ``η = 1/L``) with ``τ = L/1000``. A proximal-point step contracts a
rotation mode of speed ω by ``1/√(1 + ω²/τ²)``, so τ must be small for the slow modes of large
games; mirror-prox solves a subgame in O(ω/τ) steps where INPO needs O(ω²/τ²), because INPO is
only stable for ``η < 2τ/(τ² + ω²)``. ONPO with τ > 0 (optimistic steps toward μ, ``inner="onpo"``,
same defaults) takes about as many steps as mirror-prox with one advantage a step instead of two:
in the LLM loop, one round of samples an iteration instead of two. INPO (the paper's LLM recipe, ``inner="inpo"``) keeps its
own defaults (``τ = L/4``) and converges too, more slowly (see README, "Results").
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from comal.games import fixed_point_residual
from comal.rules.base import CURRENT, REFERENCE, Rule, check_period
from comal.rules.extragradient import Extragradient
from comal.rules.onpo import ONPO

FAST_INNER_RULES = (Extragradient.name, ONPO.name)  # defaults η = 1/L, τ = L/1000 (below)


def _inner_rules() -> dict[str, type[Rule]]:
    from comal.rules import inner_rules  # the registry imports this module: look it up when used

    return inner_rules()


@dataclass(frozen=True)
class Comal(Rule):
    name = "comal"
    uses_tau = True
    inner: str = "inpo"  # rule that solves each regularised subgame (see inner_rules())
    period: int | None = 2000  # move the reference after at most this many inner steps
    tolerance: float = 0.1  # ... or once residual ≤ tolerance · distance moved from μ; 0: period only

    def __post_init__(self):
        super().__post_init__()
        if self.inner not in _inner_rules():
            raise ValueError(f"comal: unknown inner rule '{self.inner}'; choose one of {sorted(_inner_rules())}")
        check_period(self.name, self.period)
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"comal: tolerance is relative and must be in [0, 1), got {self.tolerance}")
        if self.tau <= 0:
            raise ValueError("comal: tau must be positive (each subgame is regularised toward μ)")
        self.inner_rule  # validates η, τ for the inner rule

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "Comal":
        inner = overrides.setdefault("inner", Extragradient.name)
        if inner in FAST_INNER_RULES:
            defaults = {"eta": 1.0 / scale, "tau": scale / 1000}
        elif inner in _inner_rules():  # the inner rule's own defaults, given any η or τ passed in
            given = {key: overrides[key] for key in ("eta", "tau") if key in overrides}
            rule = _inner_rules()[inner].for_game(scale, **given)
            defaults = {"eta": rule.eta, "tau": rule.tau}
        else:
            defaults = {"eta": 1.0, "tau": 1.0}  # __post_init__ names the unknown inner rule
        return cls(**{**defaults, **overrides})

    @property
    def keeps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((CURRENT, REFERENCE) + self.inner_rule.keeps))

    @property
    def inner_rule(self) -> Rule:
        rule = _inner_rules()[self.inner](eta=self.eta, tau=self.tau)
        if "period" in {field.name for field in fields(rule)}:
            rule = replace(rule, period=None)  # COMAL moves the reference, not the inner rule
        return rule

    def prox_steps(self):
        return self.inner_rule.prox_steps()

    def reference_due(self, state, advantages):
        if self.period is not None and state.since_reference >= self.period:
            return True
        if self.tolerance == 0:
            return False
        current, reference = state.policies[CURRENT], state.policies[REFERENCE]
        residual = fixed_point_residual(current, reference, advantages[CURRENT], self.tau)
        moved = np.where(np.isfinite(reference), current - reference, 0.0)  # −inf: outside the support
        return residual <= self.tolerance * float(np.max(np.abs(moved)))
