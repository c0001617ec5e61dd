"""Preference games: matrices, generators, exact Nash and the measures of a policy.

This package never imports :mod:`comal.rules`: game, solver and measurement stay apart.
"""

from comal.games.generators import (
    GENERATORS,
    bradley_terry,
    bradley_terry_cyclic,
    interior_nash,
    paper_3x3,
    random_intransitive,
)
from comal.games.measures import (
    advantage,
    advantage_from_draws,
    best_response_win_rate,
    duality_gap,
    gap_from_advantage,
    kl_divergence,
    sampled_advantage,
    win_rates,
)
from comal.games.nash import (
    RegularizedNash,
    TimeLimitReached,
    fixed_point_residual,
    rotation_speed,
    nash_lp,
    payoff_scale,
    regularized_nash,
)
from comal.games.validate import GameError, as_game, load_game

__all__ = [
    "GENERATORS", "GameError", "RegularizedNash", "advantage", "advantage_from_draws", "as_game", "best_response_win_rate",
    "bradley_terry", "bradley_terry_cyclic", "duality_gap", "fixed_point_residual",
    "gap_from_advantage", "interior_nash", "kl_divergence", "load_game", "nash_lp", "paper_3x3", "payoff_scale",
    "random_intransitive", "regularized_nash", "rotation_speed", "sampled_advantage", "TimeLimitReached", "win_rates",
]
