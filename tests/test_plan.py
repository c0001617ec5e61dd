"""`comal plan`: the counts of a run before it is launched, checked against a run's own stages."""

import json

from typer.testing import CliRunner

from comal.cli import app
from comal.llm.config import load_config
from comal.llm.judge import CallableJudge
from comal.llm.loop import open_run
from comal.llm.plan import iteration_counts
from comal.llm.run_folder import load_rows
from conftest import save_tiny_policy, write_prompts

PROMPTS = ["say hello", "please write a b", "which is better", "say the answer", "a b c"]


def write_config(tmp_path, **extra):
    save_tiny_policy(tmp_path / "policy")
    write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    settings = {"model": {"path": "policy"}, "judge": {"kind": "llm", "path": "policy"}, "prompts": "prompts.jsonl",
                "prompts_per_iteration": 4, "iterations": 2, "algorithm": "comal", "eta": 2.0, "tau_eta_ratio": 0.25,
                "reference_period": 1, "rows": "soft",
                "sampling": {"samples_per_prompt": 3, "max_new_tokens": 5, "batch_size": 2},
                "training": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 4, "mixed_precision": "no"}, **extra}
    (tmp_path / "run.yaml").write_text(json.dumps(settings))
    return tmp_path / "run.yaml"


def test_counts_follow_the_rule_and_bound_what_the_run_does(tmp_path):
    config = load_config(write_config(tmp_path))
    first = iteration_counts(config)[0]
    # COMAL with mirror-prox inner steps: two rounds (π_t, the half step) and two fits an iteration
    assert (first.rounds, first.fits, first.sequences, first.judge_asks) == (2, 2, 2 * 4 * 3, 2 * 4 * 3 * 2)
    assert first.training_rows == 2 * 4 * 3 and first.optimiser_steps == 2 * 2 * 3
    longer = CallableJudge(lambda x, a, b: 0.5 + 0.4 * ((len(a) > len(b)) - (len(a) < len(b))))
    run = open_run(config, tmp_path / "run", judge=longer)
    run.iteration(0)
    drawn = sum(len(r["response_ids"]) for name in ("current", "half")
                for r in load_rows(run.folder.round(0, name, "sample")))
    rows = sum(len(load_rows(run.folder.fit(0, name, "pairs"))) for name in ("half", "current"))
    steps = sum(len((run.folder.fit(0, name, "train") / "metrics.jsonl").read_text().splitlines())
                for name in ("half", "current"))
    assert drawn == first.sequences and rows <= first.training_rows and steps <= first.optimiser_steps
    hard = iteration_counts(load_config(write_config(tmp_path, algorithm="iter-ipo", rows="hard",
                                                     reference_period=None, tau_eta_ratio=None)))[1]
    assert (hard.rounds, hard.fits, hard.training_rows, hard.optimiser_steps) == (1, 1, 4, 2)


def test_plan_probes_the_stages_and_prices_an_api_judge(tmp_path):
    result = CliRunner().invoke(app, ["plan", str(write_config(tmp_path)), "--price-in", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["total"]["sequences"] == 2 * 24 and plan["seconds"]["total"] > 0
    assert all(value > 0 for value in plan["probe"].values())
    assert plan["judge_cost"]["dollars"] == plan["judge_cost"]["input_tokens"] * 0.5 / 1e6
    table = CliRunner().invoke(app, ["plan", str(tmp_path / "run.yaml"), "--no-probe"])
    assert table.exit_code == 0 and "judge asks" in table.stdout and "estimated time" not in table.stdout
