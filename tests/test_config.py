"""Run configs: presets load, unknown keys and wrong types are errors that name the key."""

from pathlib import Path

import pytest

from comal.llm.config import ConfigError, load_config

CONFIGS = Path(__file__).parents[1] / "configs"


def test_paper_preset_loads_with_the_papers_numbers():
    config = load_config(CONFIGS / "comal-paper.yaml")
    assert config.eta == pytest.approx(500)
    assert config.tau_eta_ratio == pytest.approx(1 / 3)
    assert (config.reference_period, config.rows, config.sampling.samples_per_prompt) == (12, "hard", 5)
    assert (config.training.epochs, config.training.learning_rate, config.training.warmup_ratio) == (3, 5e-7, 0.1)


@pytest.mark.parametrize("text, message", [
    ("model: {path: m}\njudge: {path: j}\nprompts: p.jsonl\netta: 3\n", "unknown key 'etta'"),
    ("model: {path: m}\njudge: {path: j}\nprompts: p.jsonl\ntraining: {learning_rat: 1}\n",
     "unknown key 'training.learning_rat'"),
    ("model: {path: m}\njudge: {path: j}\nprompts: p.jsonl\niterations: many\n", "'iterations'"),
    ("model: {path: m}\njudge: {path: j}\n", "missing key 'prompts'"),
    ("model: {path: m}\njudge: {path: j}\nprompts: p.jsonl\nalgorithm: sppo\n", "rows: soft"),
    ("model: {path: m}\njudge: {path: j}\nprompts: p.jsonl\neta_final: -1\n", "'eta_final'"),
    ("- a\n- b\n", "must be a mapping"),
    ("model: [\n", "not valid YAML"),
])
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_eta_final_anneals_eta_over_the_iterations_with_eta_tau_held(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {path: m}\njudge: {path: j}\nprompts: p.jsonl\nalgorithm: comal\ninner: onpo\n"
                    "iterations: 5\neta: 4\ntau_eta_ratio: 0.03\neta_final: 0.25\n")
    config = load_config(path)
    rules = [config.rule_at(t) for t in range(5)]
    assert [rule.eta for rule in rules] == pytest.approx([4, 2, 1, 0.5, 0.25])
    assert [rule.eta * rule.tau for rule in rules] == pytest.approx([0.03] * 5)
    assert config.rule() == rules[0]
