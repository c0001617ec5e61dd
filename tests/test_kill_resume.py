"""SIGKILL at random moments (issue 11): `comal run` and `comal demo` killed wherever they happen to
be (in a safetensors write, a datasets save, a judge-cache append, not only between stages) and
rerun until they finish end with exactly the outputs of an uninterrupted run."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import save_tiny_policy, write_prompts



def comal_process(args: list, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "comal", *map(str, args)], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def finish(args: list, cwd: Path) -> float:
    """Run to the end; the seconds it took."""
    started = time.perf_counter()
    process = comal_process(args, cwd)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return time.perf_counter() - started


def killed_then_finished(args: list, cwd: Path, seconds: float, seed: int, kills: int) -> list[float]:
    """Kill the command ``kills`` times at random moments within ``seconds`` of its start (each rerun
    resuming what the last left), then let it finish; the moments of the kills that landed."""
    rng = random.Random(seed)
    landed = []
    for _ in range(kills):
        moment = rng.uniform(0.3, 1.0) * seconds
        process = comal_process(args, cwd)
        try:
            process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            landed.append(round(moment, 2))
        process.communicate()
    finish(args, cwd)
    return landed


def outputs(folder: Path) -> dict[str, str]:
    """A digest of every output file of a run folder, by its path in the folder: not the lock, the
    judge cache (its order follows the timing of the kills), the measured seconds, nor the files
    that name the folder's own path (config.json, digests.json: identity.json holds what they define)."""
    skipped = {"lock", "judge_cache.jsonl", "summary.json", "convergence.png", "policies.png", "config.json",
               "digests.json"}
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name not in skipped
            and not str(path.relative_to(folder)).startswith("eval/responses")}


def test_a_run_killed_at_random_moments_ends_as_an_uninterrupted_one(tmp_path):
    save_tiny_policy(tmp_path / "model")
    write_prompts(tmp_path / "prompts.jsonl", ["say hello", "please write a b", "which is better"])
    config = {"model": {"path": "model"}, "judge": {"kind": "llm", "path": "model"}, "prompts": "prompts.jsonl",
              "iterations": 2, "algorithm": "comal", "eta": 2.0, "tau_eta_ratio": 0.25, "reference_period": 1,
              "rows": "soft", "sampling": {"samples_per_prompt": 3, "max_new_tokens": 4, "batch_size": 2},
              "training": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 4, "mixed_precision": "no"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    seconds = finish(["run", "config.yaml", "--out", "straight"], tmp_path)
    landed = killed_then_finished(["run", "config.yaml", "--out", "killed"], tmp_path, seconds, seed=11, kills=3)
    assert landed, "no kill landed before the run finished"
    straight, killed = outputs(tmp_path / "straight"), outputs(tmp_path / "killed")
    assert set(straight) == set(killed) and straight == killed, landed


def test_a_demo_killed_at_random_moments_ends_as_an_uninterrupted_one(tmp_path):
    demo = ["demo", "--tokens", "2", "--length", "2", "--prompts", "1", "--iterations", "3", "--samples", "64",
            "--algorithms", "comal", "--workers", "2"]  # a worker process that must die with the demo
    seconds = finish([*demo, "--out", "straight"], tmp_path)
    landed = killed_then_finished([*demo, "--out", "killed"], tmp_path, seconds, seed=12, kills=2)
    assert landed, "no kill landed before the demo finished"
    straight, killed = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("straight", "killed"))
    for algorithm in ("comal",):
        assert killed["algorithms"][algorithm]["history"] == straight["algorithms"][algorithm]["history"], landed
        assert killed["algorithms"][algorithm]["policy"] == straight["algorithms"][algorithm]["policy"]
        assert outputs(tmp_path / "killed" / algorithm) == outputs(tmp_path / "straight" / algorithm)
