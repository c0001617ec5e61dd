"""The CLI contract other tools rely on: JSON shapes, exit codes, files written."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from comal.cli import app
from comal.games import paper_3x3, random_intransitive

runner = CliRunner()


@pytest.fixture
def paper_file(tmp_path):
    path = tmp_path / "paper.json"
    path.write_text(json.dumps(paper_3x3()[0].tolist()))
    return path


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_nash_json(paper_file):
    result = invoke("game", "nash", paper_file, "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    np.testing.assert_allclose(payload["nash"], [4 / 11, 3 / 11, 4 / 11], atol=1e-9)
    assert isinstance(payload["duality_gap"], float) and payload["duality_gap"] < 1e-12


def test_nash_json_several_prompts(tmp_path):
    path = tmp_path / "stack.npy"
    np.save(path, random_intransitive(6, 3, seed=0))
    payload = json.loads(invoke("game", "nash", path, "--json").stdout)
    assert np.array(payload["nash"]).shape == (3, 6)


def test_run_json_contract(paper_file):
    result = invoke("game", "run", paper_file, "--algorithm", "comal", "--iterations", 3000,
                    "--init", "0.2,0.5,0.3", "--seed", 1, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["algorithm"] == "comal"
    assert len(payload["policy"]) == 3 and payload["duality_gap"] < 1e-6
    history = payload["history"]
    assert len(history) >= 100
    assert {"iteration", "duality_gap", "kl_to_nash"} <= set(history[0])
    assert history[0]["iteration"] == 0 and history[-1]["iteration"] == 3000


def test_run_with_eta_tau_and_random_init(paper_file):
    result = invoke("game", "run", paper_file, "-a", "inpo", "-T", 500, "--eta", 0.5, "--tau", 0.1,
                    "--init", "random", "--seed", 3, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["duality_gap"] > 0.01


def test_comal_inner_rule_from_the_cli(paper_file):
    result = invoke("game", "run", paper_file, "-a", "comal", "--inner", "inpo", "-T", 20000, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["duality_gap"] < 1e-6
    assert invoke("game", "run", paper_file, "-a", "onpo", "--inner", "inpo").exit_code == 2
    result = invoke("game", "run", paper_file, "-a", "comal", "--inner", "onpo", "--eta-final", 0.3, "--samples", 256,
                    "-T", 400, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["duality_gap"] < 0.1


def test_run_table_reports_steps_to_thresholds(paper_file):
    result = invoke("game", "run", paper_file, "-a", "mwu", "-T", 300)
    assert result.exit_code == 0
    assert "not reached" in result.stdout and "steps to" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["game", "run", "{bad}"], "P[0,1] + P[1,0] = 0.9"),
    (["game", "nash", "{missing}"], "no such file"),
    (["game", "run", "{paper}", "-a", "nope"], "unknown algorithm 'nope'"),
    (["game", "run", "{paper}", "--init", "1,2"], "init has 2 weights"),
    (["game", "run", "{paper}", "--init", "0,1,1"], "must be positive"),
    (["game", "run", "{paper}", "--eta", "-1"], "eta must be a positive"),
    (["game", "run", "{paper}", "--eta-final", "0"], "eta_final must be a positive"),
    (["game", "run", "{paper}", "-T", "-5"], "--iterations must be between 0 and 1,000,000,000, got -5"),
    (["game", "run", "{paper}", "-T", "99999999999999999999999999999"], "--iterations must be between 0 and"),
    (["model", "prepare", "{missing}", "--out", "{out}"], "step 'find the source'"),
    (["model", "prepare", "{bad}", "--out", "{out}"], "is a file but not a .gguf"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, paper_file, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text("[[0.5, 0.2], [0.7, 0.5]]")
    names = {"{bad}": bad, "{missing}": tmp_path / "missing.npy", "{paper}": paper_file, "{out}": tmp_path / "out"}
    result = invoke(*[names.get(a, a) for a in args])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


HOSTILE_FILES = {  # issue 11: each was a traceback, a silent wrong result or a misleading exit
    "complex.npy": (lambda p: np.save(p, np.array([[0.5 + 1j, 0.5], [0.5, 0.5]])), "non-zero imaginary part"),
    "huge.json": (lambda p: p.write_text("[[0.5, 1" + "0" * 400 + "]]"), "a number too large for a float"),
    "deep.json": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "JSON nested too deeply"),
    "empty.npy": (lambda p: p.write_bytes(b""), "the file is empty or cut short"),
    "empty.csv": (lambda p: p.write_text(""), "expected a square [n, n] matrix or a stack [prompts, n, n]"),
}


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_hostile_matrix_files_are_one_line_and_exit_code_2(tmp_path, name):
    write, message = HOSTILE_FILES[name]
    write(tmp_path / name)
    result = invoke("game", "nash", tmp_path / name)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and "warning" not in result.output.lower()


def test_a_diverged_run_exits_1_with_the_iteration_and_never_prints_nan(paper_file):
    for extra in ([], ["--json"]):
        result = invoke("game", "run", paper_file, "-a", "comal", "--tau", "1e308", "-T", "50", *extra)
        assert result.exit_code == 1
        assert "comal diverged at iteration 1: the policy became NaN" in result.stderr
        assert "NaN" not in result.stdout and "nan" not in result.stdout


@pytest.mark.parametrize("args", [["-a", "inpo", "--tau", "1e308"], ["--init", "1e308,1e308,1e308"]])
def test_extreme_but_valid_settings_give_finite_results(paper_file, args):
    result = invoke("game", "run", paper_file, "-T", "50", "--json", *args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON output"))
    assert np.isfinite(payload["policy"]).all() and np.isfinite(payload["duality_gap"])


def test_generate_then_run(tmp_path):
    path = tmp_path / "g.npy"
    assert invoke("game", "generate", "bt-cyclic", "--n", 8, "--prompts", 2, "--out", path).exit_code == 0
    payload = json.loads(invoke("game", "run", path, "-T", 2000, "--json").stdout)
    assert np.array(payload["policy"]).shape == (2, 8)


def test_reproduce_writes_plots_and_numbers(tmp_path):
    out = tmp_path / "study"
    result = invoke("game", "reproduce", "--out", out, "--size", 12,
                    "--iterations-3x3", 1500, "--iterations-random", 3000)
    assert result.exit_code == 0, result.output
    for name in ("trajectories_3x3.png", "convergence.png", "results.json", "results.csv"):
        assert (out / name).stat().st_size > 1000
    summary = json.loads((out / "results.json").read_text())["summary"]
    rows = {(row["game"], row["algorithm"]): row for row in summary}
    assert rows[("3x3", "comal")]["converged"] and not rows[("3x3", "mwu")]["converged"]
    assert rows[("3x3", "inpo")]["steps_to_1e-06"] is None
    assert "converged (last iterate)?" in result.stdout


def test_console_script_exit_code(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("0.5,2\n-1,0.5\n")
    completed = subprocess.run([sys.executable, "-m", "comal", "game", "nash", str(bad)],
                               capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error:") and "outside [0, 1]" in completed.stderr


@pytest.mark.parametrize("args, message", [
    (["--algorithms", "comal,dpo"], "unknown dpo"),
    (["--algorithms", ""], "unknown (none given)"),
    (["--tokens", "9"], "2–8 tokens"),
    (["--samples", "1"], "--samples: Input should be greater than or equal to 2"),
    (["--iterations", "0"], "--iterations: Input should be greater than or equal to 1"),
])
def test_demo_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    result = invoke("demo", "--out", tmp_path / "demo", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_demo_in_worker_processes_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--tokens", 2, "--length", 1, "--prompts", 1, "--iterations", 2,
                    "--samples", 8, "--algorithms", "comal,extragradient", "--workers", 2)
    assert result.exit_code == 0, result.output
    assert "final gap" in result.stdout and "extragradient" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["algorithms"]) == {"comal", "extragradient"} and summary["responses"] == ["a", "b"]
    comal, mirror_prox = summary["algorithms"]["comal"], summary["algorithms"]["extragradient"]
    assert comal["samples_drawn"] == mirror_prox["samples_drawn"] == 2 * 8  # the same budget for both
    assert len(comal["history"]["duality_gap"]) == 3 and len(mirror_prox["history"]["duality_gap"]) == 2
    # a rerun with other settings in the same folder would mix runs: refused, the summary kept
    again = invoke("demo", "--out", out, "--tokens", 2, "--length", 1, "--prompts", 1, "--iterations", 1,
                   "--samples", 16, "--algorithms", "comal", "--workers", 1)
    assert again.exit_code == 2 and "sampling.samples_per_prompt: 8 there, 16 now" in again.stderr
    assert json.loads((out / "summary.json").read_text()) == summary


def test_run_with_sampled_advantages_is_seeded_and_noisier(paper_file):
    """--samples K: the sampled rule with perfect fits; the same seed gives the same run."""
    args = ("game", "run", paper_file, "-a", "onpo", "-T", 300, "--samples", 64, "--seed", 4, "--json")
    first, second = (json.loads(invoke(*args).stdout) for _ in range(2))
    exact = json.loads(invoke("game", "run", paper_file, "-a", "onpo", "-T", 300, "--json").stdout)
    assert first == second and first["duality_gap"] > exact["duality_gap"]
    refused = invoke("game", "run", paper_file, "--samples", 1)
    assert refused.exit_code == 2 and "--samples must be at least 2" in refused.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--model", "/nonexistent/model", "/nonexistent/model"),
    ("--algorithms", "comal,bogus", "unknown bogus"),
    ("--samples", "1", "--samples"),
])
def test_length_game_refuses_bad_input_before_writing(tmp_path, option, value, message):
    result = invoke("length-game", "--out", tmp_path / "out", option, value)
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out").exists()
