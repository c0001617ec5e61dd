"""Fuzzing the commands (issue 11, hypothesis): for any matrix file, option value or config key, a
command exits 0 with a finite, strictly valid result, or exits 2 with one line that names what is
wrong (or 1 with one line for a run that diverged or an LP past --time-limit); never a traceback, never NaN, and a refused
run leaves no folder behind."""

import json
import math
import os

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from comal.llm.config import ConfigError, load_config
from comal.rules import RULES
from conftest import comal

# COMAL_FUZZ_EXAMPLES=2000 hunts longer than the suite's 100 per property
FUZZ = settings(max_examples=int(os.environ.get("COMAL_FUZZ_EXAMPLES", 100)), deadline=None,
                suppress_health_check=list(HealthCheck))
def strict_json(text: str):
    return json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(AssertionError(f"{name} in the output")))


def assert_contract(code: int, out: str, err: str, *names: str) -> None:
    """Exit 0 with finite JSON; or exit 2 (1: diverged, or past the time limit) with one ``error:`` line
    naming one of ``names``."""
    assert "Traceback" not in out + err, err
    if code == 0:
        payload = strict_json(out)
        numbers = [v for v in _leaves(payload) if isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers)
        return
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code in (1, 2) and len(lines) == 1, (code, err)
    assert code == 2 or "diverged" in lines[0] or "did not finish within" in lines[0], err
    assert code == 1 or not names or any(name in lines[0] for name in names), (names, lines[0])


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


# ------------------------------------------------------------------ matrices
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
NEAR_VALID = st.one_of(st.floats(0, 1), ANY_FLOAT, st.sampled_from([0.5, 0.0, 1.0, -0.0, 1e-300, 1 - 1e-16]))


@st.composite
def matrix_files(draw, folder):
    """A matrix (valid antisymmetric games often, anything else too) written as .npy, .json or .csv."""
    if draw(st.booleans()):
        n = draw(st.integers(1, 6))
        upper = draw(arrays(np.float64, (n, n), elements=NEAR_VALID))
        matrix = np.triu(upper, 1) + np.tril(1 - upper.T, -1) + 0.5 * np.eye(n)
        if draw(st.booleans()):
            matrix = np.stack([matrix] * draw(st.integers(1, 3)))
    else:
        matrix = draw(arrays(np.float64, array_shapes(min_dims=0, max_dims=4, max_side=4), elements=NEAR_VALID))
    kind = draw(st.sampled_from(["npy", "json", "csv"]))
    path = folder / f"m.{kind}"
    if kind == "npy":
        np.save(path, matrix)
    elif kind == "json":
        path.write_text(json.dumps(matrix.tolist()))  # NaN and Infinity as Python writes them
    else:
        if matrix.ndim != 2:
            matrix = matrix.reshape(1, -1) if matrix.size else matrix.reshape(0, 0)
        path.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in matrix))
    return path


@FUZZ
@given(data=st.data())
def test_any_matrix_file_gives_a_finite_nash_or_one_line(tmp_path_factory, data):
    path = data.draw(matrix_files(tmp_path_factory.mktemp("m")))
    assert_contract(*comal("game", "nash", path, "--json"), path.name)


@FUZZ
@given(data=st.data(), algorithm=st.sampled_from(list(RULES)))
def test_any_matrix_file_gives_a_finite_run_or_one_line(tmp_path_factory, data, algorithm):
    path = data.draw(matrix_files(tmp_path_factory.mktemp("m")))
    assert_contract(*comal("game", "run", path, "-a", algorithm, "-T", "30", "--json"), path.name)


# ------------------------------------------------------------------ options
NUMBER_TEXT = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e308", "1e-308", "abc", "", "1e3",
                                         str(2**70), "0.5", "3"]),
                        ANY_FLOAT.map(repr), st.integers(-10**20, 10**20).map(str))
OPTIONS = {"--eta": NUMBER_TEXT, "--tau": NUMBER_TEXT, "--eta-final": NUMBER_TEXT, "-T": NUMBER_TEXT,
           "--seed": NUMBER_TEXT, "--samples": NUMBER_TEXT, "--time-limit": NUMBER_TEXT,
           "--init": st.one_of(st.sampled_from(["uniform", "random", "", "1,2", "0,0,0", "nan,1,1", "1e308,1,1"]),
                               st.lists(NUMBER_TEXT, min_size=1, max_size=4).map(",".join)),
           "--inner": st.sampled_from(["inpo", "onpo", "mirror-prox", "nope", ""]),
           "-a": st.sampled_from([*RULES, "dpo", "", "COMAL"])}


@FUZZ
@given(options=st.dictionaries(st.sampled_from(list(OPTIONS)), st.none(), min_size=1, max_size=3), data=st.data())
def test_any_option_values_give_a_finite_run_or_one_line_naming_the_option(tmp_path_factory, options, data):
    path = tmp_path_factory.mktemp("g") / "paper.json"
    path.write_text("[[0.5, 0.8, 0.3], [0.2, 0.5, 0.9], [0.7, 0.1, 0.5]]")
    arguments = [item for name in options for item in (name, data.draw(OPTIONS[name], label=name))]
    if "-T" not in options:
        arguments += ["-T", "40"]
    elif not _small_iterations(arguments[arguments.index("-T") + 1]):
        return  # a valid count of billions of iterations is a long run, not a refusal
    if "--samples" in options and not _small_iterations(arguments[arguments.index("--samples") + 1], 10**7):
        return
    code, out, err = comal("game", "run", path, *arguments, "--json")
    named = [name for name in options] + ["--algorithm", "--iterations", "inner", "init", "algorithm", "eta", "tau",
                                          "η", "τ", "Nash LP"]  # the rules' messages name η and τ as the papers do
    assert_contract(code, out, err, *named)


def _small_iterations(text: str, limit: int = 10**5) -> bool:
    """Whether a count the command may accept is small enough to run here. The CLI takes a float text
    with no fraction as its integer too ('1000000000.0' is a billion iterations), so such texts count."""
    try:
        number = float(text)
    except ValueError:
        return True  # not a number: refused
    return not (math.isfinite(number) and number.is_integer()) or number <= limit


# ------------------------------------------------------------------ config keys
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), ANY_FLOAT, st.text(max_size=8),
                   st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
                   st.sampled_from([".inf", ".nan", "-1", "comal", "soft", "hard", "nope.jsonl"]))
KEYS = ["algorithm", "iterations", "eta", "eta_code", "tau_eta_ratio", "reference_period", "inner", "tolerance",
        "eta_final", "rows", "hard_min_margin", "seed", "prompts_per_iteration", "prompts", "prompt_field",
        "prompt_split", "model", "model.path", "model.tokenizer", "model.lora", "judge", "judge.kind", "judge.path",
        "judge.template", "judge.batch_size", "judge.answer_tokens", "judge.weight", "sampling.samples_per_prompt",
        "sampling.temperature", "sampling.top_p", "sampling.max_new_tokens", "sampling.seed", "sampling.backend",
        "training.epochs", "training.learning_rate", "training.batch_size", "training.warmup_ratio",
        "training.mixed_precision", "training.report_to", "training.seed", "evaluate.max_prompts", "unknown_key"]
BASE = {"model": {"path": "/nonexistent/model"}, "judge": {"path": "/nonexistent/judge"}, "prompts": "p.jsonl",
        "iterations": 2, "rows": "hard"}


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3))
def test_any_config_values_load_or_are_refused_in_one_line_naming_a_key(tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("c")
    config = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part] if isinstance(node.get(part), dict) else node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[last] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config).replace("'.inf'", ".inf").replace("'.nan'", ".nan"))
    try:
        load_config(path)
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path))
        named = {part for key in changes for part in key.split(".")} | {"eta", "tau", "algorithm", "inner", "rows",
                                                                          "judge", "model", "config", "mapping"}
        assert any(name in message for name in named), message
