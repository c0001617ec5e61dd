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


# ---------------------------------------------------------------- the driver, shrunk to a tiny model
import json  # noqa: E402

from conftest import save_tiny_policy, write_prompts  # noqa: E402
from comal.testbed.length_demo import LengthGameSettings, run_length_game  # noqa: E402

WORDS = ["say hello", "which is better", "please write a b", "say yes or no", "the answer is"]


@pytest.fixture(scope="module")
def tiny_length_game(tmp_path_factory):
    root = tmp_path_factory.mktemp("length")
    save_tiny_policy(root / "model")
    write_prompts(root / "prompts.jsonl", WORDS)
    settings = LengthGameSettings(
        model=str(root / "model"), prompts=str(root / "prompts.jsonl"), prompt_count=4, instruction=" please",
        samples_per_prompt=4, max_new_tokens=40, rounds=2, calibration_samples=16, evaluation_samples=8,
        learning_rate=1e-3, lora_rank=None,
        algorithms={"comal": LengthGameSettings().algorithms["comal"], "extragradient": {}})
    seen = []
    summary = run_length_game(settings, root / "out", report=lambda *update: seen.append(update))
    return root / "out", settings, summary, seen


def test_length_game_records_every_iterate_and_its_exact_gap(tiny_length_game):
    out, settings, summary, seen = tiny_length_game
    calibration = json.loads((out / "calibration.json").read_text())
    classes = LengthClasses(tuple(summary["thresholds"]))
    lengths = np.concatenate(calibration["lengths"])
    assert len(lengths) == 4 * 16
    start = np.bincount(classes.classify(lengths), minlength=3) / len(lengths)
    np.testing.assert_allclose(calibration["start"]["distribution"], start)
    for name, result in summary["algorithms"].items():
        rounds = result["rounds_per_iteration"]
        assert result["samples_drawn"] == 2 * 4  # the same budget: extragradient samples twice an iteration
        assert len(result["history"]) == 2 // rounds + 1  # every iterate, the last on its own round
        for measured in result["history"]:
            p = np.array(measured["distribution"])
            assert p.sum() == pytest.approx(1.0) and measured["standard_error"] >= 0
            assert measured["gap"] == pytest.approx(duality_gap(paper_3x3(), p[None]))
        np.testing.assert_allclose(result["tabular"]["distribution"][0], np.clip(start, 1e-3, None)
                                   / np.clip(start, 1e-3, None).sum(), atol=1e-9)
        assert (out / name / "final_sample" / "data").is_dir()
    assert {(name, t) for name, t, _ in seen} == {("comal", 0), ("comal", 1), ("comal", 2),
                                                  ("extragradient", 0), ("extragradient", 1)}
    assert (out / "length_game.png").stat().st_size > 10_000


def test_length_game_measures_the_samples_the_policy_drew(tiny_length_game):
    """Iterate t's class shares are those of round t's responses, as the judge classifies them."""
    from comal.llm.run_folder import load_rows
    from comal.testbed.length_game import token_length

    out, _, summary, _ = tiny_length_game
    tokenizer = tiny_tokenizer()
    classes = LengthClasses(tuple(summary["thresholds"]))
    records = load_rows(out / "comal" / "iter_001" / "round_current" / "sample")
    shares = class_shares([classes.classify([token_length(tokenizer, text) for text in r["texts"]]) for r in records])
    np.testing.assert_allclose(summary["algorithms"]["comal"]["history"][1]["distribution"], shares.mean(0))


def test_length_game_resumes_and_refuses_other_settings(tiny_length_game):
    out, settings, summary, _ = tiny_length_game
    again = run_length_game(settings, out)
    for name in summary["algorithms"]:
        assert again["algorithms"][name]["history"] == summary["algorithms"][name]["history"]
    with pytest.raises(ValueError, match="other settings"):
        run_length_game(settings.model_copy(update={"rounds": 4}), out)
