"""The testbed game, and one iteration of the real pipeline on it with the exact gap measured."""

import json

import numpy as np
import pytest

from comal.llm.config import RunConfig
from comal.llm.loop import RunError, open_run
from comal.testbed.game import make_testbed
from comal.testbed.space import ConstrainedLlama


def test_testbed_game_and_exact_measures():
    testbed = make_testbed(tokens=3, length=2, prompts=2, seed=1)
    assert testbed.preference.shape == (2, 9, 9) and len(set(testbed.responses())) == 9
    policy = testbed.exact_policy(testbed.initial_policy())
    np.testing.assert_allclose(policy.sum(-1), 1.0, atol=1e-12)
    measures = testbed.measures(policy)
    assert measures["duality_gap"] > 0 and measures["kl_to_nash"] >= 0
    assert measures["valid_mass"] == pytest.approx(1.0)
    np.testing.assert_allclose(testbed.nash.sum(-1), 1.0)  # the LP Nash, solved on first use
    judge = testbed.judge()
    texts = testbed.responses()
    assert judge.prefer([testbed.prompts[1]], [texts[2]], [texts[5]])[0] == testbed.preference[1, 2, 5]


def test_one_pipeline_iteration_on_the_testbed(tmp_path):
    testbed = make_testbed(tokens=3, length=2, prompts=2, seed=1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in testbed.prompts))
    config = RunConfig.model_validate({
        "model": {"path": "unused"}, "judge": {"path": "unused"}, "prompts": str(prompts), "iterations": 1,
        "algorithm": "inpo", "eta": 2.0, "tau_eta_ratio": 0.25, "rows": "soft",
        "sampling": {"samples_per_prompt": 6, "max_new_tokens": 3, "temperature": 1.0, "top_p": 1.0},
        "training": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 8, "mixed_precision": "no"}})
    run = open_run(config, tmp_path / "run", judge=testbed.judge(), model=testbed.initial_policy(),
                   tokenizer=testbed.tokenizer, load_model=ConstrainedLlama.from_pretrained)
    before = testbed.measures(testbed.exact_policy(ConstrainedLlama.from_pretrained(tmp_path / "run" / "start")))
    run.run()
    after = testbed.measures(testbed.exact_policy(ConstrainedLlama.from_pretrained(run.policy(1))))
    assert after["duality_gap"] != pytest.approx(before["duality_gap"])  # the network moved
    assert run.folder.round(0, "current", "sample").is_dir()
    # the same folder under another configuration would reuse stale stages: refused, nothing changed
    saved = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(RunError, match=r"other settings \(eta: 2.0 there, 3.0 now"):
        open_run(config.model_copy(update={"eta": 3.0}), tmp_path / "run", judge=testbed.judge(),
                 model=testbed.initial_policy(), tokenizer=testbed.tokenizer)
    assert (tmp_path / "run" / "config.json").read_text() == saved


def test_large_spaces_are_measured_without_the_lp():
    testbed = make_testbed(tokens=8, length=4, prompts=1, seed=0)  # 4,096 responses
    assert testbed.space.size == 4096 and not testbed.solves_nash
    measures = testbed.measures(np.full((1, 4096), 1 / 4096))
    assert measures["kl_to_nash"] is None and 0 < measures["duality_gap"] < 1
