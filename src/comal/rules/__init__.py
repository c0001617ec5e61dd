"""Update rules, one file each; every rule is a list of :class:`ProxStep` s (see ``base``).

The registry :data:`RULES` is built by importing every module of this package and keeping the
:class:`Rule` subclasses defined there, so adding an algorithm is adding its file: the tabular
engine, ``comal game``, the LLM loop, its config and ``comal demo`` all read this registry.
``make_rule(name, game_or_scale, **overrides)`` builds a rule with defaults set from the game's
payoff scale ``L = max |P − 1/2|``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np

from comal.games import payoff_scale
from comal.rules.base import (
    CURRENT, REFERENCE, ProxStep, Rule, State, apply_prox_steps, heaviest_anchor, rows_policy,
)

SCALE_FLOOR = 1e-3  # a game with all payoffs below this is treated as this flat


def _discover() -> dict[str, type[Rule]]:
    """Every concrete Rule defined in a module of this package, keyed by its name, sorted by name."""
    found = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, Rule) and not inspect.isabstract(value)
                    and value.__module__ == module.__name__):
                if value.name in found:
                    raise RuntimeError(f"two rules are named '{value.name}': {found[value.name]} and {value}")
                found[value.name] = value
    return dict(sorted(found.items()))


RULES: dict[str, type[Rule]] = _discover()


def inner_rules() -> dict[str, type[Rule]]:
    """The rules COMAL can use to solve each regularised subgame."""
    return {name: rule for name, rule in RULES.items() if rule.solves_subgame}


def make_rule(name: str, game: np.ndarray | float, **overrides) -> Rule:
    """Rule ``name`` with defaults for ``game`` (or its payoff scale), then ``overrides``."""
    if name not in RULES:
        raise ValueError(f"unknown algorithm '{name}'; choose one of: {', '.join(RULES)}")
    scale = game if np.isscalar(game) else payoff_scale(game)
    return RULES[name].for_game(max(float(scale), SCALE_FLOOR), **overrides)


__all__ = ["CURRENT", "REFERENCE", "RULES", "ProxStep", "Rule", "State", "apply_prox_steps", "heaviest_anchor",
           "inner_rules", "make_rule", "rows_policy"]
