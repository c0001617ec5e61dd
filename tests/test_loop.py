"""The whole loop on tiny models: any rule's steps chain, COMAL's reference moves, a killed run resumes exactly."""

import hashlib
import json
import math

import pytest

from comal.llm import stages
from comal.llm.config import ConfigError, load_config
from comal.llm.judge import CallableJudge
from comal.llm.loop import RunError, load_prompts, open_run
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer
from conftest import save_tiny_policy, write_prompts
from comal.rules import RULES

PROMPTS = ["say hello", "please write a b", "which is better", "say the answer"]


def length_judge():
    """A scripted preference: the longer response wins, 0.5 on ties (deterministic, intransitive-free)."""
    return CallableJudge(lambda x, a, b: 0.5 + 0.4 * ((len(a) > len(b)) - (len(a) < len(b))))


@pytest.fixture
def setup(tmp_path):
    model_dir = save_tiny_policy(tmp_path / "policy")
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)

    def config(**extra):
        """COMAL with its default inner rule (mirror-prox: two rounds of samples an iteration) unless
        ``extra`` says otherwise; rule parameters only where the algorithm has them."""
        path = tmp_path / "run.yaml"
        algorithm = extra.get("algorithm", "comal")
        rule = {"eta": 2.0, "tau_eta_ratio": 0.25, "reference_period": 1} if algorithm == "comal" else {"eta": 2.0}
        settings = {"model": {"path": str(model_dir)}, "judge": {"kind": "llm", "path": str(model_dir)},
                    "prompts": str(prompts), "iterations": 2, "rows": "soft", **rule,
                    "sampling": {"samples_per_prompt": 3, "max_new_tokens": 5, "batch_size": 2},
                    "training": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 4, "mixed_precision": "no"},
                    **extra}
        path.write_text(json.dumps(settings))
        return load_config(path)

    return config, tmp_path


def checkpoint_hash(folder):
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("algorithm", list(RULES))
def test_every_rule_runs_its_steps_and_writes_checkpoints(setup, algorithm):
    config, tmp = setup
    settings = config(algorithm=algorithm, iterations=1, rows="soft")
    run = open_run(settings, tmp / algorithm, judge=length_judge())
    run.run()
    rule = run.rule
    for name in rule.sampled_policies():  # one round of samples per policy the steps sample
        assert (tmp / algorithm / "iter_000" / f"round_{name}" / "judge").is_dir()
    for step in rule.prox_steps():  # one fit per step, in order
        assert (tmp / algorithm / "iter_000" / f"fit_{step.output}" / "train" / "model" / "model.safetensors").is_file()
    final = run.policy(1)
    assert final == tmp / algorithm / "iter_000" / "fit_current" / "train" / "model"
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(final)  # loadable by from_pretrained
    assert set(run.state(1).policies) == set(rule.keeps) | {s.output for s in rule.prox_steps()}


def test_rounds_sample_the_policy_the_rule_names(setup):
    """Mirror-prox samples π_t, then the half step's own checkpoint; ONPO samples π_t once for two fits."""
    config, tmp = setup
    run = open_run(config(iterations=1), tmp / "comal", judge=length_judge())
    run.run()
    assert run.rule.sampled_policies() == ("current", "half")
    half = tmp / "comal" / "iter_000" / "fit_half" / "train" / "model"
    assert run.policies(0, 1)["half"] == half and run.policies(0, 0)["current"] == tmp / "comal" / "start"
    onpo = open_run(config(algorithm="onpo", iterations=1), tmp / "onpo", judge=length_judge())
    onpo.run()
    assert sorted(p.name for p in (tmp / "onpo" / "iter_000").glob("round_*")) == ["round_current"]
    assert onpo.policy(1, "centre") == tmp / "onpo" / "iter_000" / "fit_centre" / "train" / "model"


def test_comal_reference_moves_every_k_iterations(setup):
    config, tmp = setup
    run = open_run(config(reference_period=2, tolerance=0.0, iterations=4, inner="inpo"), tmp / "run",
                   judge=length_judge())
    run.run()
    assert [run.reference_moved(t) for t in range(4)] == [False, False, True, False]
    assert run.policy(1, "reference") == run.policy(2, "reference") == tmp / "run" / "start"
    assert run.policy(3, "reference") == run.policy(2, "current")  # μ ← π_2 before iteration 2's step
    assert run.policy(4, "reference") == run.policy(2, "current")
    assert run.status()[2]["reference"] == "moved" and run.status()[1]["reference"] == "kept"


def test_comal_residual_test_reads_estimates_from_the_samples(setup):
    """With tolerance > 0 the rule's own reference_due decides on log-probs and advantages estimated
    from the current round; with tolerance 0 and no period it never moves μ."""
    config, tmp = setup
    never = open_run(config(reference_period=None, tolerance=0.0, iterations=2), tmp / "never", judge=length_judge())
    never.run()
    assert not any(never.reference_moved(t) for t in range(2))
    always = open_run(config(reference_period=None, tolerance=0.99, iterations=2), tmp / "always",
                      judge=length_judge())
    always.run()
    decision = json.loads((tmp / "always" / "iter_001" / "reference" / "decision.json").read_text())
    assert decision["since_reference"] == 1 and isinstance(decision["moved"], bool)


@pytest.mark.parametrize("stage", ["sample", "judge_samples", "soft_rows", "distinct_logps", "train"])
def test_a_killed_run_resumes_to_the_same_checkpoints(setup, stage, monkeypatch):
    config, tmp = setup
    straight = open_run(config(), tmp / "straight", judge=length_judge())
    straight.run()

    original = getattr(stages, stage)
    calls = {"n": 0}

    def dies_on_third_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(stages, stage, dies_on_third_call)
    killed = open_run(config(), tmp / "killed", judge=length_judge())
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    monkeypatch.setattr(stages, stage, original)
    open_run(config(), tmp / "killed", judge=length_judge()).run()
    for iteration in (1, 2):
        assert checkpoint_hash(killed.policy(iteration)) == checkpoint_hash(straight.policy(iteration))
    metrics = [(tmp / name / "iter_001" / "fit_current" / "train" / "metrics.jsonl").read_text()
               for name in ("straight", "killed")]
    assert metrics[0] == metrics[1]
    decisions = [(tmp / name / "iter_001" / "reference" / "decision.json").read_text() for name in ("straight", "killed")]
    assert decisions[0] == decisions[1]


def test_bad_inputs_are_clear(setup, tmp_path):
    config, tmp = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello"}\n')
    with pytest.raises(RunError, match=r"no 'prompt' column \(columns: text\); set prompt_field"):
        load_prompts(bad)
    with pytest.raises(RunError, match="not a saved transformers model"):
        open_run(config(model={"path": str(tmp_path / "nowhere")}), tmp / "run")
    assert not (tmp / "run").exists()  # refused before anything was written
    from comal.llm.processes import Processes

    vllm = config(sampling={"backend": "vllm", "samples_per_prompt": 3, "vllm": {"enforce_eager": True}})
    with pytest.raises(RunError, match="sampling.backend: vllm runs in one process, not 2"):
        open_run(vllm, tmp / "run", processes=Processes(rank=0, count=2))
    assert not (tmp / "run").exists()


@pytest.mark.parametrize("extra, message", [
    ({"algorithm": "dpo"}, "unknown algorithm 'dpo'; DPO's minimiser is a Bradley-Terry fit"),
    ({"algorithm": "nope"}, "unknown algorithm 'nope'; choose one of: comal"),
    ({"algorithm": "sppo", "rows": "hard"}, "sppo's loss is pointwise"),
    ({"algorithm": "iter-ipo", "tau_eta_ratio": 0.5}, "'tau_eta_ratio' does not apply to iter-ipo"),
    ({"algorithm": "inpo", "reference_period": 3}, "'reference_period' does not apply to inpo"),
    ({"algorithm": "mpo", "inner": "inpo"}, "'inner' does not apply to mpo"),
    ({"inner": "sppo"}, "unknown inner rule 'sppo'"),
    ({"algorithm": "inpo", "eta": 4.0, "tau_eta_ratio": 1.0}, None),
    ({"algorithm": "inpo", "tau_eta_ratio": 0.5, "eta": None}, "'tau_eta_ratio' needs 'eta'"),
    ({"hard_min_margin": 0.1}, "'hard_min_margin' applies to rows: hard only"),
])
def test_invalid_combinations_are_refused_by_the_config(setup, extra, message):
    config, tmp = setup
    if message is None:
        assert config(**extra).rule().eta * config(**extra).rule().tau == pytest.approx(1.0)
        return
    with pytest.raises(ConfigError, match=message):
        config(**extra)


def test_cli_runs_stages_and_reports_status(setup):
    from typer.testing import CliRunner

    from comal.cli import app

    config, tmp = setup
    settings = config(iterations=1)
    run_dir = tmp / "cli"
    open_run(settings, run_dir)  # writes config.json and the start policy
    runner = CliRunner()
    for command in (["sample"], ["judge"], ["pairs"], ["logprobs"], ["train"], ["sample", "--policy", "half"],
                    ["judge", "--policy", "half"], ["pairs", "--step", "current"], ["logprobs", "--step", "current"],
                    ["train", "--step", "current"]):
        result = runner.invoke(app, [command[0], str(run_dir), "--iteration", "0", *command[1:]])
        assert result.exit_code == 0, (command, result.output)
        if command == ["sample"]:  # each stage reports what it counted (a bar on a terminal, a line in a log)
            assert "iteration 0 current sample: sequences: 12/12 in" in result.stderr  # 4 prompts × 3 samples
        if command == ["train"]:
            assert "iteration 0 fit half train: optimiser steps" in result.stderr
    status = runner.invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0 and status.stdout.count("done") == 10, status.stdout  # 2 rounds × 2, 2 fits × 3
    assert "kept" in status.stdout  # the reference decision of iteration 0
    assert runner.invoke(app, ["sample", str(tmp / "nowhere"), "-i", "0"]).exit_code == 2
    assert runner.invoke(app, ["sample", str(run_dir), "-i", "7"]).exit_code == 2
    wrong = runner.invoke(app, ["train", str(run_dir), "-i", "0", "--step", "centre"])
    assert wrong.exit_code == 2 and "--step must be one of half, current" in wrong.stderr
    open_run(settings, tmp / "fresh")
    early = runner.invoke(app, ["judge", str(tmp / "fresh"), "-i", "0"])
    assert early.exit_code == 2 and "missing the samples of 'current'" in early.stderr
    early = runner.invoke(app, ["sample", str(tmp / "fresh"), "-i", "0", "--policy", "half"])
    assert early.exit_code == 2 and "missing" in early.stderr
    (tmp / "fresh" / "iter_000" / "round_half" / "sample.tmp").mkdir(parents=True)  # being written, or killed
    assert "started" in runner.invoke(app, ["status", str(tmp / "fresh")]).stdout


def test_evaluation_win_rates_and_matrix(setup):
    config, tmp = setup
    settings = config(iterations=2, evaluate={"prompts": str(tmp / "prompts.jsonl"), "max_prompts": 3})
    run = open_run(settings, tmp / "eval_run", judge=length_judge())
    run.run()
    metrics = json.loads((tmp / "eval_run" / "iter_001" / "evaluate" / "metrics.json").read_text())
    assert 0 <= metrics["win_rate_vs_start"] <= 1 and metrics["prompts"] == 3
    first = json.loads((tmp / "eval_run" / "iter_000" / "evaluate" / "metrics.json").read_text())
    assert first["win_rate_vs_start"] == pytest.approx(first["win_rate_vs_previous"])  # π_0 is the previous
    matrix = json.loads(run.win_matrix().read_text())
    rates = matrix["win_rate"]
    assert matrix["checkpoints"] == ["start", "iter 1", "iter 2"]
    assert rates[1][0] == pytest.approx(first["win_rate_vs_start"])
    assert all(abs(rates[i][j] + rates[j][i] - 1) < 1e-12 for i in range(3) for j in range(3))
    assert (tmp / "eval_run" / "eval" / "win_matrix.png").stat().st_size > 1000

    from typer.testing import CliRunner

    from comal.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(tmp / "eval_run"), "-i", "1", "--matrix"])
    assert result.exit_code == 0, result.output
    assert "win_rate_vs_start" in result.stdout
    low, high = metrics["vs_start"]["ci95"]
    assert metrics["vs_start"]["prompts"] == 3 and (math.isnan(low) or low <= metrics["win_rate_vs_start"] <= high)
    status = CliRunner().invoke(app, ["status", str(tmp / "eval_run")])
    assert "evaluation" in status.stdout and f"{metrics['win_rate_vs_start']:.3f}" in status.stdout, status.stdout


def test_paper_preset_runs_with_a_tiny_model_swapped_in(setup):
    """configs/comal-paper.yaml as shipped, only the model, judge, prompts and sizes made tiny."""
    from pathlib import Path

    _, tmp = setup
    preset = Path(__file__).parents[1] / "configs" / "comal-paper.yaml"
    settings = load_config(preset, {"prompts": str(tmp / "prompts.jsonl"), "iterations": 1,
                                    "sampling": {"samples_per_prompt": 5, "max_new_tokens": 4}})
    assert settings.eta == 500 and settings.rows == "hard" and settings.reference_period == 12
    tokenizer = tiny_tokenizer()
    run = open_run(settings, tmp / "paper", judge=length_judge(), model=tiny_causal_lm(tokenizer), tokenizer=tokenizer)
    assert (run.rule.name, run.rule.inner, run.rule.period, run.rule.tolerance) == ("comal", "inpo", 12, 0.0)
    assert run.rule.eta * run.rule.tau == pytest.approx(1 / 3)
    run.run()
    metrics = (tmp / "paper" / "iter_000" / "fit_current" / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 3  # 3 epochs
    assert run.status()[0]["fit current train"]


def test_empty_prompts_are_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hello"}\n{"prompt": "  "}\n')
    with pytest.raises(RunError, match="row 2: the prompt is empty"):
        load_prompts(path)


def test_lora_training_saves_a_full_checkpoint(setup):
    from transformers import AutoModelForCausalLM

    config, tmp = setup
    settings = config(iterations=1, model={"path": str(tmp / "policy"),
                                           "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}})
    run = open_run(settings, tmp / "lora", judge=length_judge())
    run.run()
    trained = AutoModelForCausalLM.from_pretrained(run.policy(1))
    start = AutoModelForCausalLM.from_pretrained(tmp / "lora" / "start")
    changed = {name for name, p in trained.named_parameters()
               if not (p == dict(start.named_parameters())[name]).all()}
    assert changed and all("q_proj" in name or "v_proj" in name for name in changed)


def test_cached_loader_reads_a_checkpoint_once_and_hands_out_copies(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from comal.llm.stages import cached_loader

    tokenizer = tiny_tokenizer()
    for name, seed in (("a", 0), ("b", 1)):
        tiny_causal_lm(tokenizer, seed=seed).save_pretrained(tmp_path / name)
    reads = []
    load = cached_loader(lambda path: reads.append(path) or AutoModelForCausalLM.from_pretrained(path), size=1)
    first = load(tmp_path / "a")
    with torch.no_grad():
        next(first.parameters()).add_(1.0)  # as training would
    second = load(tmp_path / "a")
    assert len(reads) == 1 and not torch.equal(next(first.parameters()), next(second.parameters()))
    load(tmp_path / "b")
    load(tmp_path / "a")  # evicted by b (size 1): read again
    assert len(reads) == 3


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv", "folder", "dict-folder"])
def test_prompts_come_from_any_local_dataset_form(tmp_path, suffix):
    import datasets

    table = datasets.Dataset.from_dict({"instruction": PROMPTS, "id": list(range(len(PROMPTS)))})
    path = tmp_path / f"prompts{suffix if suffix.startswith('.') else ''}"
    if suffix == ".jsonl":
        table.to_json(path, lines=True)
    elif suffix == ".json":
        path.write_text(json.dumps([{"instruction": p} for p in PROMPTS]))
    elif suffix == ".parquet":
        table.to_parquet(path)
    elif suffix == ".csv":
        table.to_csv(path, index=False)
    elif suffix == "folder":
        table.save_to_disk(path)
    else:
        datasets.DatasetDict({"train": table, "test": table.select([0])}).save_to_disk(path)
        assert load_prompts(path, "instruction", "test") == PROMPTS[:1]
        with pytest.raises(RunError, match="no split 'validation' \\(splits: train, test\\)"):
            load_prompts(path, "instruction", "validation")
    assert load_prompts(path, "instruction") == PROMPTS and isinstance(load_prompts(path, "instruction"), list)
    assert load_prompts(path, "instruction", "train[1:3]") == PROMPTS[1:3]
    assert load_prompts(path, "instruction", "train[-1:]") == PROMPTS[-1:]


def test_unreadable_prompt_files_are_one_clear_error(tmp_path):
    broken = tmp_path / "p.jsonl"
    broken.write_text('{"prompt": "hi"}\nnot json\n')
    with pytest.raises(RunError, match="p.jsonl: cannot be read as jsonl"):
        load_prompts(broken)
    with pytest.raises(RunError, match="must be .jsonl, .json, .parquet, .csv or a save_to_disk folder"):
        load_prompts(tmp_path / "run.yaml") if (tmp_path / "run.yaml").write_text("x") else None
    with pytest.raises(RunError, match="not a dataset saved with save_to_disk"):
        load_prompts(tmp_path)
    (tmp_path / "ok.jsonl").write_text('{"prompt": "hi"}\n')
    with pytest.raises(RunError, match="only split is 'train'"):
        load_prompts(tmp_path / "ok.jsonl", split="test")
    with pytest.raises(RunError, match="not a split name"):
        load_prompts(tmp_path / "ok.jsonl", split="train[::2]")


def test_every_stage_counts_its_items_to_the_total(setup):
    """What a progress bar shows: each stage's items done against the total it announced."""
    from contextlib import contextmanager

    config, tmp = setup
    counted = {}

    @contextmanager
    def bar(description, total):
        done = []
        yield done.append
        counted[description] = (sum(done), total)

    open_run(config(iterations=1, evaluate={"prompts": str(tmp / "prompts.jsonl")}), tmp / "bars",
             judge=length_judge(), bar=bar).run()
    assert counted and all(done == total > 0 for done, total in counted.values()), counted
    kinds = {description.split(": ")[0].split(" ")[-1] for description in counted}
    assert {"sample", "judge", "log-probs", "train", "responses"} <= kinds, counted


def test_a_judge_that_is_mostly_position_bias_is_measured_and_warned_about(setup):
    from typer.testing import CliRunner

    from comal.cli import app
    from comal.llm.judge import JudgeQualityWarning

    config, tmp = setup
    biased = CallableJudge(lambda x, a, b: 0.6 + 0.01 * (len(a) > len(b)))  # whatever comes first wins
    run = open_run(config(iterations=1, algorithm="inpo", rows="hard", hard_min_margin=0.02), tmp / "biased",
                   judge=biased)
    with pytest.warns(JudgeQualityWarning, match="keep their winner when the order is swapped"):
        run.judged_round(0, "current", run.round_policies(0, "current"))
    counts = json.loads((tmp / "biased" / "iter_000" / "round_current" / "judge" / "counts.json").read_text())
    quality = counts["judge_quality"]
    assert quality["first_listed_wins"] > 0.59 and quality["same_winner_both_orders"] == 0
    assert quality["near_ties"] == 1.0 and counts["judge_warning"]
    with pytest.raises(RunError, match="no training rows: all 4 judged prompts with two or more distinct responses were ties or within hard_min_margin"):
        run.pairs(0, run.prox_steps(0)[0])  # P(longer ≻ shorter) = 0.505 after both orders: every row dropped
    kept = open_run(config(iterations=1, algorithm="inpo", rows="hard", hard_min_margin=0.004), tmp / "kept",
                    judge=biased)
    with pytest.warns(JudgeQualityWarning):
        kept.iteration(0)
    pairs = json.loads((tmp / "kept" / "iter_000" / "fit_current" / "pairs" / "counts.json").read_text())
    assert pairs["rows"] + pairs["prompts_without_a_row"] == pairs["prompts"] == 4
    status = CliRunner().invoke(app, ["status", str(tmp / "biased")])
    assert status.exit_code == 0 and "judge quality" in status.stdout and "0.60" in status.stdout


def test_a_round_where_every_prompt_drew_one_response_keeps_the_policy(setup):
    """Near-greedy sampling draws one distinct response per prompt: nothing to compare, so no rows,
    a warning, and the fit saves its start (the demo's collapsed policies reach this)."""
    config, tmp = setup
    run = open_run(config(iterations=1, algorithm="inpo",
                          sampling={"samples_per_prompt": 3, "max_new_tokens": 5, "batch_size": 2,
                                    "temperature": 1e-4}),
                   tmp / "single", judge=length_judge())
    run.run()
    pairs = run.folder.fit(0, "current", "pairs")
    counts = json.loads((pairs / "counts.json").read_text())
    assert counts["rows"] == 0 and counts["prompts_with_one_response"] == counts["prompts"] > 0
    assert "keeps its start" in counts["warning"] and stages.load_rows(pairs) == []
    trained = run.folder.fit(0, "current", "train") / "model"
    assert checkpoint_hash(trained) == checkpoint_hash(run.policy(0))


def test_prompts_per_iteration_walk_through_the_prompt_file(setup):
    from comal.llm.loop import Run
    from comal.llm.run_folder import RunFolder

    config, tmp = setup
    run = Run(config(prompts_per_iteration=3), RunFolder(tmp / "walk"))
    assert [run.prompts(t) for t in range(3)] == [PROMPTS[:3], PROMPTS[3:] + PROMPTS[:2], PROMPTS[2:] + PROMPTS[:1]]
