"""Hostile input and faults (issue 11): refused before anything is written, one line naming what is
wrong, a run folder resumed exactly when it would give the same numbers, and one process at a time."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from comal.games import random_intransitive
from comal.llm.run_folder import RunError, RunFolder
from conftest import comal, save_tiny_policy, write_prompts


def refused(code: int, err: str, *expected: str) -> bool:
    """Exit 2 with exactly one ``error:`` line holding every ``expected`` text, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    return code == 2 and len(lines) == 1 and all(text in lines[0] for text in expected) and "Traceback" not in err


def tree_digest(path) -> str | None:
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        if item.is_file() and item.name != "lock":
            digest.update(str(item.relative_to(path)).encode() + item.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ usage errors
@pytest.mark.parametrize("args, expected", [
    (["demo", "--workers", "0"], "'--workers': Input should be greater than or equal to 1"),
    (["demo", "--workers", "x"], "'--workers'"),
    (["demo", "--bogus"], "No such option: --bogus"),
    (["game", "run"], "Missing argument 'matrix'"),
    (["game", "run", "m.npy", "--seed", str(2**70)], "'--seed'"),
    (["game", "generate", "intransitive", "--out", "g.npy", "--seed", "-1"], "'--seed'"),
])
def test_usage_errors_are_one_line_and_exit_code_2(args, expected):
    code, _, err = comal(*args)
    assert refused(code, err, expected), err


# ------------------------------------------------------------------ the demo's folder
DEMO = ["demo", "--tokens", "2", "--length", "1", "--prompts", "1", "--iterations", "2", "--samples", "16",
        "--algorithms", "comal", "--workers", "1"]


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "d"
    code, _, err = comal(*DEMO, "--out", out)
    assert code == 0, err
    return out


@pytest.mark.parametrize("change, expected", [
    (["--prompts", "2"], "holds a demo of another testbed (prompts: 1 there, 2 now)"),
    (["--tokens", "3"], "holds a demo of another testbed (tokens: 2 there, 3 now)"),
    (["--samples", "32"], "holds a run with other settings (sampling.samples_per_prompt: 16 there, 32 now)"),
])
def test_a_demo_folder_of_another_shape_is_refused_and_left_as_it_was(finished_demo, change, expected):
    before = tree_digest(finished_demo)
    code, _, err = comal(*DEMO, *change, "--out", finished_demo)
    assert refused(code, err, expected), err
    assert tree_digest(finished_demo) == before


@pytest.mark.parametrize("bounds, expected", [
    (["--length", "100"], "--length: 2 tokens and length 100 give 2**100 responses"),
    (["--samples", str(10**30)], "--samples"), (["--seed", "-1"], "--seed"), (["--tokens", "9"], "--tokens"),
])
def test_demo_bounds_are_refused_before_the_folder_is_made(tmp_path, bounds, expected):
    code, _, err = comal(*DEMO, *bounds, "--out", tmp_path / "d")
    assert refused(code, err, expected), err
    assert not (tmp_path / "d").exists()


def test_a_moved_demo_folder_resumes_under_any_spelling(finished_demo, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(finished_demo, moved)
    summary = json.loads((finished_demo / "summary.json").read_text())
    os.chdir(tmp_path)
    code, _, err = comal(*DEMO, "--out", "./elsewhere/")
    assert code == 0, err
    again = json.loads((moved / "summary.json").read_text())
    assert again["algorithms"]["comal"]["history"] == summary["algorithms"]["comal"]["history"]
    assert again["algorithms"]["comal"]["policy"] == summary["algorithms"]["comal"]["policy"]


@pytest.mark.parametrize("command", [DEMO, ["run", "config.yaml"]])
def test_an_out_that_is_a_file_is_refused(tmp_path, command):
    (tmp_path / "a_file").write_text("keep me")
    os.chdir(tmp_path)
    tiny_config(tmp_path)
    code, _, err = comal(*command, "--out", "a_file")
    assert refused(code, err, "a_file is a file"), err
    assert (tmp_path / "a_file").read_text() == "keep me"


# ------------------------------------------------------------------ the run's config
def tiny_config(folder, **changes) -> dict:
    """A valid config of a one-iteration run of tiny models, written to ``folder/config.yaml``."""
    if not (folder / "model").is_dir():
        save_tiny_policy(folder / "model")
        write_prompts(folder / "prompts.jsonl", ["say hello", "please write a b"])
    config = {"model": {"path": "model"}, "judge": {"kind": "llm", "path": "model"}, "prompts": "prompts.jsonl",
              "iterations": 1, "rows": "hard",
              "sampling": {"samples_per_prompt": 2, "max_new_tokens": 3, "batch_size": 2},
              "training": {"epochs": 1, "batch_size": 2, "mixed_precision": "no"}}
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(config).replace("'.inf'", ".inf"))
    return config


@pytest.mark.parametrize("changes, expected", [
    ({"seed": -1}, "'seed': Input should be greater than or equal to 0"),
    ({"seed": 2**70}, "'seed': Input should be less than or equal to 4294967295"),
    ({"eta": ".inf"}, "'eta': Input should be a finite number"),
    ({"training__seed": -1}, "'training.seed'"),
    ({"model__tokenizer": "/nonexistent"}, "model.tokenizer /nonexistent: no such folder"),
    ({"model__lora": {"bogus": 1}}, "model.lora: unknown LoraConfig argument 'bogus'"),
    ({"training__report_to": ["wandb"]}, "training.report_to: wandb is not installed"),
    ({"prompts": "missing.jsonl"}, "missing.jsonl"),
    ({"prompts": "binary.jsonl"}, "binary.jsonl"),
    ({"prompts": "empty.jsonl"}, "empty.jsonl"),
    ({"evaluate__prompts": "empty.jsonl"}, "empty.jsonl"),
    ({"iterations": 10**30}, "'iterations'"),
    ({"evaluate__split": "train[x]"}, "split 'train[x]' is not a split name"),
    ({"sampling__max_new_tokens": 600}, "sampling.max_new_tokens 600 leaves no room for a prompt"),
    ({"model__lora": {"r": -1}}, "model.lora: r must be a positive integer"),
])
def test_a_bad_config_is_refused_before_the_run_folder_is_written(tmp_path, changes, expected):
    if changes.get("training__report_to") and __import__("importlib").util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    tiny_config(tmp_path, **changes)
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = comal("run", tmp_path / "config.yaml", "--out", tmp_path / "run")
    assert refused(code, err, expected), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("accelerate, expected", [
    ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 2}\n", "weights sharded (FSDP, DeepSpeed ZeRO-3)"),
    ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 3}\n", "weights sharded (FSDP, DeepSpeed ZeRO-3)"),
    ("- not\n- a mapping\n", "expected a mapping of accelerate settings"),
    ("distributed_type: [unclosed\n", "not a YAML file"),
])
def test_an_accelerate_config_the_loop_cannot_train_under_is_refused_before_the_launch(tmp_path, accelerate, expected):
    """On a CPU machine accelerate would not even shard (it enables FSDP on accelerator devices only)
    and would train data-parallel instead; on GPUs the checkpoint would need a gathered save."""
    tiny_config(tmp_path)
    (tmp_path / "accelerate.yaml").write_text(accelerate)
    code, _, err = comal("run", tmp_path / "config.yaml", "--out", tmp_path / "run",
                         "--accelerate-config", tmp_path / "accelerate.yaml")
    assert refused(code, err, expected), err
    assert not (tmp_path / "run").exists()


def test_a_run_folder_is_its_run_under_any_spelling_and_after_its_files_move(tmp_path):
    tiny_config(tmp_path)
    code, _, err = comal("run", tmp_path / "config.yaml", "--out", tmp_path / "run")
    assert code == 0, err
    finished = tree_digest(tmp_path / "run")
    os.chdir(tmp_path)
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "prompts.jsonl", tmp_path / "moved" / "prompts.jsonl")
    tiny_config(tmp_path, prompts="moved/prompts.jsonl")  # the same prompts, elsewhere: the same run
    code, _, err = comal("run", "config.yaml", "--out", "./run//")
    assert code == 0, err
    identity = json.loads((tmp_path / "run" / "identity.json").read_text())
    assert identity["prompts"].startswith("content ") and identity["model.path"].startswith("content ")
    (tmp_path / "moved" / "prompts.jsonl").write_text('{"prompt": "other words"}\n')  # other prompts: another run
    before = tree_digest(tmp_path / "run")
    code, _, err = comal("run", "config.yaml", "--out", "run")
    assert refused(code, err, "holds a run with other settings (prompts: \"content"), err
    assert tree_digest(tmp_path / "run") == before
    assert finished != before  # the resume rewrote config.json with the new path, and nothing else changed


def test_settings_of_how_a_run_computes_do_not_make_it_another_run(tmp_path):
    """training.share_prompts, gradient_checkpointing and report_to change the computation, not the
    numbers: a finished run resumes across them, and so does a folder made before they existed
    (its identity.json without them); a setting that changes the numbers is still refused."""
    tiny_config(tmp_path)
    code, _, err = comal("run", tmp_path / "config.yaml", "--out", tmp_path / "run")
    assert code == 0, err
    identity_file = tmp_path / "run" / "identity.json"
    recorded = json.loads(identity_file.read_text())
    assert "training.epochs" in recorded and "training.share_prompts" not in recorded
    identity_file.write_text(json.dumps({**recorded, "training.gradient_checkpointing": False}))  # an older folder
    tiny_config(tmp_path, training__share_prompts=False, training__gradient_checkpointing=True)
    code, _, err = comal("run", tmp_path / "config.yaml", "--out", tmp_path / "run")
    assert code == 0, err
    tiny_config(tmp_path, training__epochs=2)
    code, _, err = comal("run", tmp_path / "config.yaml", "--out", tmp_path / "run")
    assert refused(code, err, "holds a run with other settings (training.epochs: 1 there, 2 now)"), err


# ------------------------------------------------------------------ one process per folder
def test_a_held_folder_is_refused_with_the_pid_and_taken_over_once_its_process_died(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from comal.llm.run_folder import RunFolder; "
                               "RunFolder(sys.argv[1]).lock(); print('held', flush=True); time.sleep(60)", str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"is in use by process {holder.pid}; wait for it"):
            RunFolder(folder).lock()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunFolder(folder).lock()  # the dead process's lock: taken over
    assert (folder / "lock").read_text().strip() == str(os.getpid())
    RunFolder(folder).unlock()


# ------------------------------------------------------------------ large games
def test_large_games_skip_the_lp_unless_asked_and_a_time_limit_stops_it(tmp_path):
    path = tmp_path / "large.npy"
    np.save(path, random_intransitive(1100, 1, seed=0))
    code, out, err = comal("game", "run", path, "-T", "3", "--json")
    assert code == 0 and "the KL to the Nash is not measured" in err
    payload = json.loads(out)
    assert payload["kl_to_nash"] is None and 0 < payload["duality_gap"] < 1
    code, out, err = comal("game", "nash", path, "--time-limit", "0.5")
    assert code == 1 and "the Nash LP did not finish within 0.5 s (0 of 1 prompts solved" in err and not out
    assert refused(*comal("game", "nash", path, "--time-limit", "0")[::2], "--time-limit must be a positive")
    stack = tmp_path / "many.npy"  # many small LPs: the limit holds across prompts too
    np.save(stack, np.full((100_000, 2, 2), 0.5))
    code, out, err = comal("game", "nash", stack, "--time-limit", "1")
    assert code == 1 and "the Nash LP did not finish within 1 s" in err and "of 100,000 prompts solved" in err


def test_plan_refuses_negative_prices(tmp_path):
    tiny_config(tmp_path)
    code, _, err = comal("plan", tmp_path / "config.yaml", "--no-probe", "--price-in", "-1")
    assert refused(code, err, "--price-in must be a non-negative number")


def test_an_infinite_kl_is_null_in_strict_json(tmp_path):
    path = tmp_path / "paper.json"
    path.write_text("[[0.5, 0.8, 0.3], [0.2, 0.5, 0.9], [0.7, 0.1, 0.5]]")
    code, out, err = comal("game", "run", path, "--eta", "1e300", "-T", "20", "--json")
    assert code == 0, err
    payload = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON output"))
    assert payload["kl_to_nash"] is None and np.isfinite(payload["duality_gap"])
