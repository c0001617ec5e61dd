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


def test_paths_are_read_from_the_config_files_folder(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "run.yaml"
    path.write_text("model: {path: ../models/policy, tokenizer: ~/tok}\njudge: {path: /abs/judge, "
                    "template_file: judge.txt}\nprompts: ../data/p.jsonl\nevaluate: {prompts: held.parquet}\n")
    monkeypatch.chdir("/")  # the working directory plays no part
    config = load_config(path)
    assert config.model.path == str(tmp_path / "models" / "policy")
    assert config.model.tokenizer == str(Path("~/tok").expanduser())
    assert config.judge.path == "/abs/judge"
    assert config.judge.template_file == str(tmp_path / "configs" / "judge.txt")
    assert config.prompts == str(tmp_path / "data" / "p.jsonl")
    assert config.evaluate.prompts == str(tmp_path / "configs" / "held.parquet")


def test_the_shipped_preset_finds_its_prompts_from_anywhere(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = load_config(CONFIGS / "comal-paper.yaml")
    assert Path(config.prompts).is_file() and Path(config.prompts).parent.name == "data"


def test_the_judge_template_can_live_in_a_file(tmp_path):
    (tmp_path / "judge.txt").write_text("Which is better for {instruction}? A: {output_1} B: {output_2}\nAnswer: ")
    path = tmp_path / "run.yaml"
    path.write_text("model: {path: m}\njudge: {path: j, template_file: judge.txt}\nprompts: p.jsonl\n")
    assert load_config(path).judge.template_text().startswith("Which is better for {instruction}?")
    path.write_text("model: {path: m}\njudge: {path: j, template_file: missing.txt}\nprompts: p.jsonl\n")
    with pytest.raises(ValueError, match="template_file .*missing.txt: cannot be read"):
        load_config(path).judge.template_text()
    path.write_text("model: {path: m}\njudge: {path: j, template: 'x {instruction}', template_file: judge.txt}\n"
                    "prompts: p.jsonl\n")
    with pytest.raises(ConfigError, match="'template' or 'template_file', not both"):
        load_config(path)


def test_the_real_model_example_loads_from_anywhere(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = load_config(CONFIGS / "smollm2-ultrafeedback.yaml")
    assert config.model.path.endswith("models/smollm2-135m-instruct") and Path(config.prompts).is_file()
    assert (config.prompts_per_iteration, config.sampling.samples_per_prompt, config.sampling.max_new_tokens) == (16, 4, 64)
    assert config.rows == "hard" and config.hard_min_margin == 0.02 and config.evaluate.split == "train[-200:]"
