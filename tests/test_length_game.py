"""The 3×3 game on a real LLM's outputs: classes by length, a judge that sees only classes, the
class distribution's exact gap with a standard error."""

import numpy as np
import pytest

from comal.games import duality_gap, paper_3x3
from comal.llm.judge import judge_samples
from comal.llm.tiny import tiny_tokenizer
from comal.testbed.length_game import LengthClasses, LengthClassJudge, class_gap, class_shares

NASH = np.array([4 / 11, 3 / 11, 4 / 11])


def test_calibrated_thresholds_give_the_papers_start_shares():
    lengths = np.arange(1, 101)  # 100 distinct lengths
    classes = LengthClasses.calibrate(lengths)
    shares = np.bincount(classes.classify(lengths), minlength=3) / 100
    np.testing.assert_allclose(shares, [0.2, 0.5, 0.3], atol=0.011)


def test_lengths_too_alike_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="too alike in length.*max_new_tokens"):
        LengthClasses.calibrate([64] * 90 + [10] * 10)


def test_the_judge_plays_the_papers_matrix_on_classes():
    tokenizer = tiny_tokenizer()
    judge = LengthClassJudge(tokenizer, LengthClasses((2, 4)))
    short, medium, long = "a", "a b c", "a b c d e"
    judged = judge_samples(judge, "say", [short, medium, long])
    np.testing.assert_allclose(judged.wins, paper_3x3()[0])


def test_class_gap_is_zero_at_the_nash_and_its_error_shrinks_with_prompts():
    rng = np.random.default_rng(0)
    at_nash = class_gap(class_shares([rng.choice(3, 50, p=NASH) for _ in range(40)]))
    assert at_nash["gap"] < 0.1 and at_nash["standard_error"] > 0
    start = [0.2, 0.5, 0.3]
    few = class_gap(class_shares([rng.choice(3, 20, p=start) for _ in range(10)]))
    many = class_gap(class_shares([rng.choice(3, 20, p=start) for _ in range(160)]))
    exact = duality_gap(paper_3x3(), np.array([start]))
    assert abs(many["gap"] - exact) < 3 * many["standard_error"] + 1e-3
    assert many["standard_error"] < few["standard_error"] / 2
