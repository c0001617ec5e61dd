"""Games: validation, loading, exact Nash, regularised Nash and measures against known values."""

import json
import warnings

import numpy as np
import pytest

from comal.games import (
    GameError, advantage, as_game, bradley_terry, bradley_terry_cyclic, duality_gap,
    best_response_win_rate, fixed_point_residual, interior_nash, kl_divergence, load_game,
    nash_lp, paper_3x3, random_intransitive, regularized_nash, rotation_speed,
)

PAPER_NASH = np.array([4, 3, 4]) / 11


def test_paper_game_nash_is_4_3_4_over_11():
    nash = nash_lp(paper_3x3())[0]
    np.testing.assert_allclose(nash, PAPER_NASH, atol=1e-9)
    assert duality_gap(paper_3x3(), nash) < 1e-12


@pytest.mark.parametrize("make", [
    lambda: random_intransitive(30, 3, seed=1),
    lambda: bradley_terry_cyclic(25, 2, seed=2),
    lambda: bradley_terry(12, 2, seed=3),
])
def test_generators_give_valid_games_whose_lp_nash_has_zero_gap(make):
    game = as_game(make())
    nash = nash_lp(game)
    np.testing.assert_allclose(nash.sum(-1), 1.0)
    assert duality_gap(game, nash) < 1e-8
    # every response wins at most half the time against the Nash
    assert advantage(game, nash).max() < 1e-8


def test_bradley_terry_nash_is_the_best_response():
    game = bradley_terry(15, seed=4)
    nash = nash_lp(game)[0]
    best = np.argmax(game[0].sum(axis=1))
    assert nash[best] == pytest.approx(1.0)


def test_interior_nash_is_a_full_support_nash():
    game, nash = interior_nash(11, 2, seed=5)
    as_game(game)
    assert nash.min() > 0 and duality_gap(game, nash) < 1e-12
    np.testing.assert_allclose(nash_lp(game), nash, atol=1e-7)  # odd n: unique


def test_gap_equals_twice_best_response_advantage():
    game = random_intransitive(8, seed=0)
    policy = np.random.default_rng(0).dirichlet(np.ones(8))
    gap = duality_gap(game, policy)
    assert gap == pytest.approx(2 * best_response_win_rate(game, policy) - 1)
    assert gap == pytest.approx(2 * (game[0] @ policy).max() - 1)


def test_kl_divergence_matches_formula_and_handles_zeros():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    assert kl_divergence(p, q) == pytest.approx(np.log(2))
    assert kl_divergence(q, p) == np.inf


@pytest.mark.parametrize("start, tau, expected, gap", [
    ([0.2, 0.5, 0.3], 0.1, [0.27492, 0.27972, 0.44536], 5.88e-2),
    ([1 / 3] * 3, 0.1, [0.33714, 0.28346, 0.37940], 2.45e-2),
])
def test_regularized_nash_of_paper_game(start, tau, expected, gap):
    solved = regularized_nash(paper_3x3(), np.array(start), tau)
    assert solved.residual < 1e-12
    np.testing.assert_allclose(solved.policy[0], expected, atol=1e-5)
    assert duality_gap(paper_3x3(), solved.policy) == pytest.approx(gap, rel=1e-2)


def test_regularized_nash_bias_shrinks_with_tau():
    game, reference = random_intransitive(20, seed=3), np.full(20, 1 / 20)
    gaps = [duality_gap(game, regularized_nash(game, reference, tau).policy) for tau in (0.3, 0.1, 0.03)]
    assert gaps[0] > gaps[1] > gaps[2] > 0


def test_fixed_point_residual_is_zero_only_at_the_fixed_point():
    game, reference = paper_3x3(), np.log(np.array([[0.2, 0.5, 0.3]]))
    solved = regularized_nash(game, np.exp(reference), 0.1)
    log_policy = np.log(solved.policy)
    assert fixed_point_residual(log_policy, reference, advantage(game, solved.policy), 0.1) < 1e-12
    assert fixed_point_residual(reference, reference, advantage(game, np.exp(reference)), 0.1) > 0.1
    with warnings.catch_warnings():  # a subnormal τ (found by the fuzz test): a/τ would overflow to NaN
        warnings.simplefilter("error")
        assert fixed_point_residual(log_policy, reference, advantage(game, solved.policy), 1e-310) == np.inf


def test_rotation_speed_matches_eigenvalues():
    game = random_intransitive(12, seed=7)
    policy = np.random.default_rng(1).dirichlet(np.ones(12))
    sigma = np.diag(policy) - np.outer(policy, policy)
    exact = np.abs(np.linalg.eigvals((game[0] - 0.5) @ sigma)).max()
    assert rotation_speed(game, policy)[0] == pytest.approx(exact, rel=1e-4)
    assert exact <= np.abs(game - 0.5).max()


BAD = [
    ([[0.5, 0.2], [0.7, 0.5]], r"entry \[0, 1\].*P\[0,1\] \+ P\[1,0\] = 0.9"),
    ([[0.5, 1.2], [-0.2, 0.5]], r"entry \[0, 1\] is 1.2, outside \[0, 1\]"),
    ([[0.5, np.nan], [0.5, 0.5]], r"entry \[0, 1\] is nan, not a finite number"),
    ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], r"shape \[2, 3\]; expected a square"),
    ([[[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.9], [0.2, 0.5]]], r"prompt 1, entry \[0, 1\]"),
    ([[0.4, 0.5], [0.5, 0.5]], r"entry \[0, 0\].*diagonal must be 0.5"),
    ([[0.5, "a"], [0.5, 0.5]], r"not numeric"),
]


@pytest.mark.parametrize("matrix, message", BAD)
def test_invalid_matrices_are_refused_naming_the_entry(matrix, message):
    with pytest.raises(GameError, match=message):
        as_game(matrix)


def test_load_all_formats(tmp_path):
    game = random_intransitive(4, 2, seed=0)
    np.save(tmp_path / "g.npy", game)
    np.savetxt(tmp_path / "g.csv", game[0], delimiter=",")
    (tmp_path / "g.json").write_text(json.dumps(game.tolist()))
    (tmp_path / "one.json").write_text(json.dumps(game[0].tolist()))
    np.testing.assert_allclose(load_game(tmp_path / "g.npy"), game)
    np.testing.assert_allclose(load_game(tmp_path / "g.csv"), game[:1])
    np.testing.assert_allclose(load_game(tmp_path / "g.json"), game)
    np.testing.assert_allclose(load_game(tmp_path / "one.json"), game[:1])


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(GameError, match="no such file"):
        load_game(tmp_path / "missing.npy")
    (tmp_path / "g.txt").write_text("0.5")
    with pytest.raises(GameError, match="unknown format '.txt'"):
        load_game(tmp_path / "g.txt")
    (tmp_path / "g.json").write_text("[[0.5, 0.5],")
    with pytest.raises(GameError, match="cannot be read as a json"):
        load_game(tmp_path / "g.json")


def test_sampled_advantage_is_unbiased_per_draw_and_zero_for_responses_not_drawn():
    """The estimate the LLM loop makes for a draw (its mean win rate against the other draws − 1/2)
    has the exact advantage as its mean over draws; a response not drawn gets 0."""
    from comal.games import advantage, sampled_advantage

    game = random_intransitive(5, seed=3)
    policy = np.array([[0.4, 0.3, 0.2, 0.09, 0.01]])
    estimates, replay = np.random.default_rng(0), np.random.default_rng(0)  # the same draws, twice
    rounds = [(sampled_advantage(game, policy, 50, estimates), replay.multinomial(50, policy[0] / policy[0].sum()))
              for _ in range(20_000)]
    estimate = np.stack([a[0] for a, _ in rounds])
    counts = np.stack([c for _, c in rounds])
    per_draw = (estimate * counts).sum(0) / counts.sum(0)
    np.testing.assert_allclose(per_draw, advantage(game, policy)[0], atol=2e-3)
    assert np.all(estimate[counts == 0] == 0)
