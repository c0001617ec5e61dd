"""Update rules, one file each; every rule is a list of :class:`ProxStep` s (see ``base``).

``make_rule(name, game_or_scale, **overrides)`` builds a rule with defaults set from the game's
payoff scale ``L = max |P − 1/2|``.
"""

from __future__ import annotations

import numpy as np

from comal.games import payoff_scale
from comal.rules.base import CURRENT, REFERENCE, ProxStep, Rule, State, apply_prox_steps
from comal.rules.comal import Comal
from comal.rules.extragradient import Extragradient
from comal.rules.inpo import INPO
from comal.rules.iter_ipo import IterIPO
from comal.rules.mpo import MPO
from comal.rules.mwu import MWU
from comal.rules.nash_md import NashMD
from comal.rules.onpo import ONPO
from comal.rules.sppo import SPPO

RULES: dict[str, type[Rule]] = {
    rule.name: rule for rule in (MWU, SPPO, IterIPO, INPO, NashMD, MPO, ONPO, Extragradient, Comal)
}
SCALE_FLOOR = 1e-3  # a game with all payoffs below this is treated as this flat


def make_rule(name: str, game: np.ndarray | float, **overrides) -> Rule:
    """Rule ``name`` with defaults for ``game`` (or its payoff scale), then ``overrides``."""
    if name not in RULES:
        raise ValueError(f"unknown algorithm '{name}'; choose one of: {', '.join(RULES)}")
    scale = game if np.isscalar(game) else payoff_scale(game)
    return RULES[name].for_game(max(float(scale), SCALE_FLOOR), **overrides)


__all__ = ["CURRENT", "REFERENCE", "RULES", "ProxStep", "Rule", "State", "apply_prox_steps", "make_rule"]
