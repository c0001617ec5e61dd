"""Property tests (hypothesis) over random valid games and policies."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from comal.games import GameError, as_game, duality_gap, nash_lp
from comal.rules import RULES, make_rule
from comal.tabular import run

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def games(draw, max_n=7):
    n = draw(st.integers(2, max_n))
    upper = draw(arrays(np.float64, (n, n), elements=st.floats(0, 1)))
    game = np.triu(upper, 1) + np.tril(1 - upper.T, -1) + 0.5 * np.eye(n)
    return game[None]


@st.composite
def game_and_policy(draw):
    game = draw(games())
    weights = draw(arrays(np.float64, game.shape[-1], elements=st.floats(0.01, 1)))
    return game, weights / weights.sum()


@PROPERTY
@given(game_and_policy(), st.sampled_from(list(RULES)))
def test_every_rule_keeps_a_distribution(case, name):
    game, policy = case
    result = run(make_rule(name, game), game, policy, 25)
    assert np.all(result.policy >= 0)
    np.testing.assert_allclose(result.policy.sum(-1), 1.0, atol=1e-12)
    assert all(h["duality_gap"] >= 0 for h in result.history)


@PROPERTY
@given(game_and_policy())
def test_gap_is_non_negative_and_zero_at_the_lp_nash(case):
    game, policy = case
    assert duality_gap(game, policy) >= 0
    assert duality_gap(game, nash_lp(game)) < 1e-7


@PROPERTY
@given(game_and_policy(), st.sampled_from(list(RULES)), st.randoms(use_true_random=False))
def test_rules_are_equivariant_under_relabelling(case, name, random):
    game, policy = case
    n = game.shape[-1]
    order = np.array(random.sample(range(n), n))
    relabelled = game[:, order][:, :, order]
    direct = run(make_rule(name, game), game, policy, 20)
    permuted = run(make_rule(name, relabelled), relabelled, policy[order], 20)
    np.testing.assert_allclose(permuted.policy, direct.policy[:, order], atol=1e-10)
    assert permuted.duality_gap == pytest.approx(direct.duality_gap, abs=1e-12)


@PROPERTY
@given(games(), st.integers(0, 48), st.floats(0.01, 0.4))
def test_asymmetric_matrices_are_refused(game, position, shift):
    n = game.shape[-1]
    i, j = divmod(position % (n * n), n)
    broken = game.copy()
    broken[0, i, j] = broken[0, i, j] + shift if broken[0, i, j] + shift <= 1 else broken[0, i, j] - shift
    with pytest.raises(GameError, match=rf"entry \[{min(i, j)}, {max(i, j)}\]|entry \[{i}, {j}\]"):
        as_game(broken)


@PROPERTY
@given(games())
def test_valid_games_are_accepted_unchanged(game):
    np.testing.assert_array_equal(as_game(game), game)


@PROPERTY
@given(game_and_policy())
def test_comal_defaults_never_diverge(case):
    """Theorem 1 on any valid game: KL(π*‖μ_k) never grows, and the gap ends below where it began."""
    game, policy = case
    nash = nash_lp(game)
    result = run(make_rule("comal", game), game, policy, 1_500, nash=nash)
    assert np.all(np.diff(result.reference_kl) <= 1e-9)
    assert result.duality_gap <= result.history[0]["duality_gap"] + 1e-12
