"""The whole loop on tiny models: stages chain, COMAL's reference moves, a killed run resumes exactly."""

import hashlib
import json

import pytest

from comal.llm import loop
from comal.llm.config import load_config
from comal.llm.judge import CallableJudge
from comal.llm.loop import RunError, load_prompts, pipeline_from_config
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer

PROMPTS = ["say hello", "please write a b", "which is better", "say the answer"]


def length_judge():
    """A scripted preference: the longer response wins, 0.5 on ties (deterministic, intransitive-free)."""
    return CallableJudge(lambda x, a, b: 0.5 + 0.4 * ((len(a) > len(b)) - (len(a) < len(b))))


@pytest.fixture
def setup(tmp_path):
    tokenizer = tiny_tokenizer()
    model_dir = tmp_path / "policy"
    tiny_causal_lm(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))

    def config(**extra):
        path = tmp_path / "run.yaml"
        settings = {"model": {"path": str(model_dir)}, "judge": {"kind": "llm", "path": str(model_dir)},
                    "prompts": str(prompts), "iterations": 2, "eta": 2.0, "tau_eta_ratio": 0.25,
                    "reference_period": 1, "rows": "soft",
                    "sampling": {"samples_per_prompt": 3, "max_new_tokens": 5, "batch_size": 2},
                    "training": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 4, "mixed_precision": "no"},
                    **extra}
        path.write_text(json.dumps(settings))
        return load_config(path)

    return config, tmp_path


def checkpoint_hash(folder):
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("algorithm, rows", [("comal", "soft"), ("onpo", "hard"), ("sppo", "soft"), ("dpo", "hard")])
def test_stages_chain_and_write_checkpoints(setup, algorithm, rows):
    config, tmp = setup
    pipeline = pipeline_from_config(config(algorithm=algorithm, rows=rows), tmp / algorithm, judge=length_judge())
    pipeline.run()
    for iteration in range(2):
        for stage in ("sample", "judge", "pairs"):
            assert (tmp / algorithm / f"iter_{iteration:03d}" / stage).is_dir()
    final = pipeline.policy_dir(2, "current")
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(final)  # loadable by from_pretrained
    if algorithm == "onpo":
        assert pipeline.policy_dir(2, "centre").is_dir()


def test_comal_reference_moves_every_k_iterations(setup):
    config, tmp = setup
    pipeline = pipeline_from_config(config(reference_period=2, iterations=1), tmp / "run", judge=length_judge())
    assert pipeline.policy_dir(1, "reference") == tmp / "run" / "start"
    assert pipeline.policy_dir(2, "reference") == pipeline.policy_dir(2, "current")
    assert pipeline.policy_dir(3, "reference") == pipeline.policy_dir(2, "current")


@pytest.mark.parametrize("stage", ["sample", "judge_samples", "soft_rows", "batched_logps", "train"])
def test_a_killed_run_resumes_to_the_same_checkpoints(setup, stage, monkeypatch):
    config, tmp = setup
    straight = pipeline_from_config(config(), tmp / "straight", judge=length_judge())
    straight.run()

    original = getattr(loop, stage)
    calls = {"n": 0}

    def dies_on_second_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, stage, dies_on_second_call)
    killed = pipeline_from_config(config(), tmp / "killed", judge=length_judge())
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    monkeypatch.setattr(loop, stage, original)
    pipeline_from_config(config(), tmp / "killed", judge=length_judge()).run()
    for iteration in (1, 2):
        assert checkpoint_hash(killed.policy_dir(iteration, "current")) == \
            checkpoint_hash(straight.policy_dir(iteration, "current"))
    metrics = [(tmp / name / "iter_001" / "fit_current" / "train" / "metrics.jsonl").read_text()
               for name in ("straight", "killed")]
    assert metrics[0] == metrics[1]


def test_bad_inputs_are_clear(setup, tmp_path):
    config, tmp = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello"}\n')
    with pytest.raises(RunError, match=r"line 1: no 'prompt' text field"):
        load_prompts(bad)
    with pytest.raises(RunError, match="not a saved transformers model"):
        pipeline_from_config(config(model={"path": str(tmp_path / "nowhere")}), tmp / "run")


def test_cli_runs_stages_and_reports_status(setup):
    from typer.testing import CliRunner

    from comal.cli import app

    config, tmp = setup
    settings = config(iterations=1)
    run_dir = tmp / "cli"
    pipeline_from_config(settings, run_dir)  # writes config.json and the start policy
    runner = CliRunner()
    for stage in ("sample", "judge", "pairs", "logprobs", "train"):
        result = runner.invoke(app, [stage, str(run_dir), "--iteration", "0"])
        assert result.exit_code == 0, result.output
    status = runner.invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0 and status.stdout.count("done") == 5
    assert runner.invoke(app, ["sample", str(tmp / "nowhere"), "-i", "0"]).exit_code == 2
    assert runner.invoke(app, ["sample", str(run_dir), "-i", "7"]).exit_code == 2
    early = runner.invoke(app, ["judge", str(tmp / "fresh"), "-i", "0"])
    assert early.exit_code == 2
    pipeline_from_config(settings, tmp / "fresh")
    early = runner.invoke(app, ["judge", str(tmp / "fresh"), "-i", "0"])
    assert early.exit_code == 2 and "missing the samples" in early.stderr


def test_evaluation_win_rates_and_matrix(setup):
    config, tmp = setup
    settings = config(iterations=2, evaluate={"prompts": str(tmp / "prompts.jsonl"), "max_prompts": 3})
    pipeline = pipeline_from_config(settings, tmp / "eval_run", judge=length_judge())
    pipeline.run()
    metrics = json.loads((tmp / "eval_run" / "iter_001" / "evaluate" / "metrics.json").read_text())
    assert 0 <= metrics["win_rate_vs_start"] <= 1 and metrics["prompts"] == 3
    first = json.loads((tmp / "eval_run" / "iter_000" / "evaluate" / "metrics.json").read_text())
    assert first["win_rate_vs_start"] == pytest.approx(first["win_rate_vs_previous"])  # π_0 is the previous
    matrix = json.loads(pipeline.win_matrix().read_text())
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


def test_paper_preset_runs_with_a_tiny_model_swapped_in(setup):
    """configs/comal-paper.yaml as shipped, only the model, judge, prompts and sizes made tiny."""
    from pathlib import Path

    _, tmp = setup
    preset = Path(__file__).parents[1] / "configs" / "comal-paper.yaml"
    settings = load_config(preset, {"prompts": str(tmp / "prompts.jsonl"), "iterations": 1,
                                    "sampling": {"samples_per_prompt": 5, "max_new_tokens": 4}})
    assert settings.eta == 500 and settings.rows == "hard" and settings.reference_period == 12
    tokenizer = tiny_tokenizer()
    pipeline = pipeline_from_config(settings, tmp / "paper", judge=length_judge(),
                                    model=tiny_causal_lm(tokenizer), tokenizer=tokenizer)
    pipeline.run()
    metrics = (tmp / "paper" / "iter_000" / "fit_current" / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 3  # 3 epochs
    assert pipeline.status()[0]["fit_current/train"]


def test_empty_prompts_are_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hello"}\n{"prompt": "  "}\n')
    with pytest.raises(RunError, match="line 2: the prompt is empty"):
        load_prompts(path)


def test_lora_training_saves_a_full_checkpoint(setup):
    from transformers import AutoModelForCausalLM

    config, tmp = setup
    settings = config(iterations=1, model={"path": str(tmp / "policy"),
                                           "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}})
    pipeline = pipeline_from_config(settings, tmp / "lora", judge=length_judge())
    pipeline.run()
    trained = AutoModelForCausalLM.from_pretrained(pipeline.policy_dir(1, "current"))
    start = AutoModelForCausalLM.from_pretrained(tmp / "lora" / "start")
    changed = {name for name, p in trained.named_parameters()
               if not (p == dict(start.named_parameters())[name]).all()}
    assert changed and all("q_proj" in name or "v_proj" in name for name in changed)
