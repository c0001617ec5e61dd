"""Soft and hard rows from a judged win matrix, checked by hand."""

import numpy as np
import pytest

from comal.llm.pairs import PairRow, estimated_advantages, hard_rows, pointwise_rows, soft_rows

WINS = np.array([[0.5, 0.8, 0.3],
                 [0.2, 0.5, 0.6],
                 [0.7, 0.4, 0.5]])


def test_estimated_advantages_use_the_other_samples():
    # (0.8 + 0.3)/2 − 0.5 = 0.05; (0.2 + 0.6)/2 − 0.5 = −0.1; (0.7 + 0.4)/2 − 0.5 = 0.05
    np.testing.assert_allclose(estimated_advantages(WINS), [0.05, -0.1, 0.05])


def test_soft_rows_are_the_unordered_pairs_of_different_responses():
    rows = soft_rows(WINS)
    assert rows == [PairRow(0, 1, pytest.approx(0.15)), PairRow(0, 2, pytest.approx(0.0)),
                    PairRow(1, 2, pytest.approx(-0.15))]


def test_counted_responses_give_the_loss_of_all_their_samples():
    # 5 samples: response x three times, y twice; x beats y with probability 0.9
    wins, counts = np.array([[0.5, 0.9], [0.1, 0.5]]), [3, 2]
    samples = np.array([[0.5, 0.9, 0.5, 0.5, 0.9]] * 3 + [[0.1, 0.5, 0.1, 0.1, 0.5]])[[0, 3, 1, 2, 3]]
    labels = ["x", "y", "x", "x", "y"]
    per_sample = estimated_advantages(samples)  # the uncounted estimator on all 5 samples
    advantages = estimated_advantages(wins, counts)
    np.testing.assert_allclose(advantages, [per_sample[0], per_sample[1]])
    (row,) = soft_rows(wins, counts)
    assert (row.first, row.second, row.weight) == (0, 1, 6.0)  # 3 × 2 sample pairs
    for margin in (-0.3, 0.0, 0.7):  # same total squared loss as every ordered sample pair
        sign = {"x": 1, "y": -1}
        full = sum((margin * (sign[labels[i]] - sign[labels[j]]) / 2 - (per_sample[i] - per_sample[j])) ** 2
                   for i in range(5) for j in range(5) if i != j)
        assert full == pytest.approx(2 * row.weight * (margin - row.target) ** 2)
    assert [(r.first, r.second, r.weight) for r in pointwise_rows(wins, counts)] == [(0, None, 3.0), (1, None, 2.0)]


def test_hard_row_is_best_against_second_best():
    wins = np.array([[0.5, 0.9, 0.6], [0.1, 0.5, 0.2], [0.4, 0.8, 0.5]])
    assert hard_rows(wins) == [PairRow(0, 2, 0.5)]
    assert hard_rows(np.full((3, 3), 0.5)) == []
    assert hard_rows(wins, min_margin=0.05) == [PairRow(0, 2, 0.5)]  # P(chosen ≻ rejected) = 0.6: kept at δ = 0.05
    assert hard_rows(wins, min_margin=0.15) == []  # dropped: within 0.15 of a tie


def test_bad_win_matrix():
    with pytest.raises(ValueError, match="at least 2 judged samples"):
        estimated_advantages(np.array([[0.5]]))
    assert hard_rows(np.array([[0.5]]), [4]) == []  # one response sampled 4 times: nothing to prefer
