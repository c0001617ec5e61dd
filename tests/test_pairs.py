"""Soft and hard rows from a judged win matrix, checked by hand."""

import numpy as np
import pytest

from comal.llm.pairs import PairRow, estimated_advantages, hard_rows, soft_rows

WINS = np.array([[0.5, 0.8, 0.3],
                 [0.2, 0.5, 0.6],
                 [0.7, 0.4, 0.5]])


def test_estimated_advantages_use_the_other_samples():
    # (0.8 + 0.3)/2 − 0.5 = 0.05; (0.2 + 0.6)/2 − 0.5 = −0.1; (0.7 + 0.4)/2 − 0.5 = 0.05
    np.testing.assert_allclose(estimated_advantages(WINS), [0.05, -0.1, 0.05])


def test_soft_rows_are_all_ordered_pairs():
    rows = soft_rows(WINS)
    assert len(rows) == 6
    assert PairRow(0, 1, pytest.approx(0.15)) in rows
    assert PairRow(1, 0, pytest.approx(-0.15)) in rows


def test_hard_row_is_best_against_second_best():
    wins = np.array([[0.5, 0.9, 0.6], [0.1, 0.5, 0.2], [0.4, 0.8, 0.5]])
    assert hard_rows(wins) == [PairRow(0, 2, 0.5)]
    assert hard_rows(np.full((3, 3), 0.5)) == []


def test_bad_win_matrix():
    with pytest.raises(ValueError, match="at least 2 judged samples"):
        estimated_advantages(np.array([[0.5]]))
