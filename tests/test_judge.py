"""Judges: both orders averaged, caching across resumes, failures counted, bad settings refused."""

import numpy as np
import pytest
from scipy.special import expit

from comal.llm.judge import (
    CallableJudge, JudgeCache, LLMJudge, RewardModelJudge, ScriptedJudge, judge_quality, judge_samples, judge_warning,
)
from comal.llm.tiny import tiny_causal_lm, tiny_reward_model, tiny_tokenizer

RESPONSES = ["a b", "c d", "e f"]


class Counting(CallableJudge):
    def __init__(self, function):
        super().__init__(function)
        self.calls = 0

    def prefer(self, prompts, first, second):
        self.calls += len(prompts)
        return super().prefer(prompts, first, second)


def test_both_orders_are_averaged_to_cancel_position_bias():
    # a judge that likes whatever comes first by 0.1 on top of the truth
    truth = {("a b", "c d"): 0.7, ("c d", "a b"): 0.3, ("a b", "e f"): 0.5, ("e f", "a b"): 0.5,
             ("c d", "e f"): 0.2, ("e f", "c d"): 0.8}
    judge = CallableJudge(lambda x, a, b: truth[a, b] + 0.1)
    judged = judge_samples(judge, "say hello", RESPONSES)
    np.testing.assert_allclose(judged.wins, [[0.5, 0.7, 0.5], [0.3, 0.5, 0.2], [0.5, 0.8, 0.5]])
    assert judged.failures == 0


def test_cache_means_a_resumed_run_judges_nothing_twice(tmp_path):
    judge = Counting(lambda x, a, b: 0.6)
    judge_samples(judge, "x", RESPONSES, JudgeCache(tmp_path / "cache.jsonl"))
    assert judge.calls == 6
    with open(tmp_path / "cache.jsonl", "a") as handle:  # a line cut short by a kill
        handle.write('{"key": "abc", "p"')
    again = judge_samples(judge, "x", RESPONSES, JudgeCache(tmp_path / "cache.jsonl"))
    assert judge.calls == 6
    np.testing.assert_allclose(again.wins[0, 1], 0.5)  # 0.6 and 1 − 0.6 averaged


def test_failures_are_counted_not_replaced():
    judge = CallableJudge(lambda x, a, b: np.nan if a == "e f" else 0.9)
    judged = judge_samples(judge, "x", RESPONSES)
    assert judged.failures == 2
    assert judged.wins[0, 2] == pytest.approx(0.9)  # only the order that worked
    np.testing.assert_allclose(judged.wins + judged.wins.T, 1.0)


def test_scripted_judge_reads_its_table():
    matrix = np.array([[0.5, 0.9, 0.2], [0.1, 0.5, 0.7], [0.8, 0.3, 0.5]])
    judge = ScriptedJudge({"x": (RESPONSES, matrix)})
    np.testing.assert_allclose(judge_samples(judge, "x", RESPONSES).wins, matrix)
    with pytest.raises(KeyError, match="no entry for 'unknown'"):
        judge.prefer(["unknown"], ["a b"], ["c d"])


def test_reward_model_judge_is_bradley_terry_on_its_scores():
    tokenizer = tiny_tokenizer()
    judge = RewardModelJudge(tiny_reward_model(tokenizer), tokenizer, batch_size=2)
    scores = judge.score(["hello"] * 3, RESPONSES)
    p = judge.prefer(["hello"], ["a b"], ["e f"])
    assert p[0] == pytest.approx(expit(scores[0] - scores[2]), abs=1e-6)
    assert len(judge.scores) == 3  # each response scored once


def test_llm_judge_reads_the_two_answer_tokens():
    tokenizer = tiny_tokenizer()
    judge = LLMJudge(tiny_causal_lm(tokenizer), tokenizer, batch_size=2, min_mass=0.0)
    p = judge.prefer(["say hello"] * 3, ["a b", "c d", "hello world"], ["c d", "a b", "a"])
    assert np.all((p > 0) & (p < 1))
    one_by_one = [judge.prefer(["say hello"], [a], [b])[0]
                  for a, b in [("a b", "c d"), ("c d", "a b"), ("hello world", "a")]]
    np.testing.assert_allclose(p, one_by_one, atol=1e-5)  # a shared prefix, padding and batching leave the answers
    mixed = judge.prefer(["say hello", "which is better", "say hello"], ["a b", "yes", "c d e f"], ["c", "no", "a"])
    np.testing.assert_allclose(mixed, [judge.prefer([x], [a], [b])[0] for x, a, b in
                                       [("say hello", "a b", "c"), ("which is better", "yes", "no"),
                                        ("say hello", "c d e f", "a")]], atol=1e-5)
    strict = LLMJudge(judge.model, tokenizer, min_mass=0.99)  # an untrained model puts little mass there
    assert np.isnan(strict.prefer(["say hello"], ["a b"], ["c d"])).all()


def test_llm_judge_refuses_bad_templates_and_answer_tokens():
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    with pytest.raises(ValueError, match=r"lacks the placeholder\(s\) \{output_2\}"):
        LLMJudge(model, tokenizer, template="{instruction} {output_1}")
    with pytest.raises(ValueError, match="'a b' is 2 tokens"):
        LLMJudge(model, tokenizer, answer_tokens=("a b", "c"))
    with pytest.raises(ValueError, match="'zzz' is not in this tokenizer's vocabulary"):
        LLMJudge(model, tokenizer, answer_tokens=("zzz", "qqq"))  # each one token: the unknown token
    with pytest.raises(ValueError, match="are the same token"):
        LLMJudge(model, tokenizer, answer_tokens=("a", "a"))


def test_llm_judge_keeps_braces_in_texts():
    tokenizer = tiny_tokenizer()
    judge = LLMJudge(tiny_causal_lm(tokenizer), tokenizer)
    assert "{output_2}" in judge.fill("write {output_2}", "a", "b")


@pytest.mark.parametrize("verdict, first, same, ties, warned", [
    (lambda x, a, b: 0.9 if len(a) > len(b) else 0.1, 0.5, 1.0, 0.0, False),  # consistent, decisive
    (lambda x, a, b: 0.9, 0.9, 0.0, 1.0, True),  # the first listed always wins: pure position bias
    (lambda x, a, b: 0.52 if len(a) > len(b) else 0.48, 0.5, 1.0, 1.0, True),  # consistent but all near-ties
    (lambda x, a, b: 0.9 if len(a) > len(b) else 0.6, 0.75, 0.0, 0.0, True),  # right on average, flips with order
])
def test_judge_quality_reads_position_bias_agreement_and_ties(verdict, first, same, ties, warned):
    responses = ["a", "a b", "a b c", "a b c d"]  # 6 pairs, every length different
    asked = [judge_samples(CallableJudge(verdict), prompt, responses).asked for prompt in ("x", "y")]
    quality = judge_quality(asked)
    assert quality["pairs"] == 12
    assert quality["first_listed_wins"] == pytest.approx(first)
    assert quality["same_winner_both_orders"] == pytest.approx(same)
    assert quality["near_ties"] == pytest.approx(ties)
    assert (judge_warning(quality) is not None) == warned


def test_win_rate_reports_each_order_a_bootstrap_interval_and_failures():
    from comal.llm.evaluate import win_rate

    # a judge that prefers the longer answer, plus 0.1 for whichever is listed first; "?" fails
    def verdict(prompt, a, b):
        return float("nan") if "?" in (a, b) else min(1.0, 0.4 + 0.2 * (len(a) > len(b)) + 0.1)

    prompts = [f"p{i}" for i in range(40)]
    new = ["long answer" if i % 4 else "s" for i in range(40)]
    old = ["mid" for _ in range(40)]
    new[0] = "?"
    result = win_rate(CallableJudge(verdict), prompts, new, old)
    longer = np.array([len(a) > len(b) for a, b in zip(new, old)])[1:]
    assert result["prompts"] == 39 and result["failures"] == 2
    assert result["listed_first"] == pytest.approx(np.mean(0.5 + 0.2 * longer))
    assert result["listed_first"] - result["listed_second"] == pytest.approx(0.2)  # twice the 0.1 bias
    assert result["win_rate"] == pytest.approx((result["listed_first"] + result["listed_second"]) / 2)
    low, high = result["ci95"]
    assert low < result["win_rate"] < high and high - low < 0.2
