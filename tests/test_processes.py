"""Several processes on one run: a 2-process run (accelerate launch, gloo on CPU) writes what a
1-process run writes: the same samples, verdicts and rows, and checkpoints equal to float tolerance."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import LlamaForSequenceClassification

from comal.llm.processes import Processes
from comal.llm.run_folder import load_rows, write_sharded
from comal.llm.tiny import tiny_config, tiny_tokenizer
from comal.llm.train import process_share
from conftest import save_tiny_policy, write_prompts

PROMPTS = ["say hello", "please write a b", "which is better", "say the answer", "a b c", "good or bad"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run (COMAL, mirror-prox inner steps: two rounds and two fits an iteration) on 1 and 2 processes."""
    tmp = tmp_path_factory.mktemp("processes")
    save_tiny_policy(tmp / "policy")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(1)  # a reward model with scores far enough apart that the rows carry signal, not float noise
    LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1, initializer_range=0.5)).save_pretrained(
        tmp / "judge")
    tokenizer.save_pretrained(tmp / "judge")
    write_prompts(tmp / "prompts.jsonl", PROMPTS)
    (tmp / "run.yaml").write_text(json.dumps({
        "model": {"path": "policy"}, "judge": {"kind": "reward-model", "path": "judge"}, "prompts": "prompts.jsonl",
        "evaluate": {"prompts": "prompts.jsonl", "max_prompts": 3}, "algorithm": "comal", "iterations": 2,
        "eta": 2.0, "tau_eta_ratio": 0.25, "reference_period": 1, "rows": "soft",
        "sampling": {"samples_per_prompt": 3, "max_new_tokens": 5, "batch_size": 2},
        "training": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 5, "gradient_accumulation": 2,
                     "mixed_precision": "no"}}))
    for name, processes in (("one", 1), ("two", 2)):
        done = subprocess.run([sys.executable, "-m", "comal", "run", str(tmp / "run.yaml"), "--out", str(tmp / name),
                               "--processes", str(processes)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "one", tmp / "two"


def stage_folders(root):
    return sorted(p.relative_to(root) for p in root.glob("iter_*/*/*") if p.is_dir())


def test_two_processes_write_the_same_stages_as_one(runs):
    one, two = runs
    assert stage_folders(one) == stage_folders(two) and len(stage_folders(one)) == 2 * (2 * 2 + 2 * 3)
    assert not list(two.rglob("*.shards")) and not list(two.glob("judge_cache.rank*"))  # merged, cleaned up
    for t in (0, 1):
        for policy in ("current", "half"):
            sample = f"iter_{t:03d}/round_{policy}/sample"
            assert load_rows(one / sample) == load_rows(two / sample)  # per-response seeds: the same tokens
            judged = [load_rows(root / f"iter_{t:03d}/round_{policy}/judge") for root in runs]
            assert [r["response_ids"] for r in judged[0]] == [r["response_ids"] for r in judged[1]]
            np.testing.assert_allclose(*[np.array([r["wins"] for r in rows]) for rows in judged], atol=1e-5)
            counts = [json.loads((root / f"iter_{t:03d}/round_{policy}/judge/counts.json").read_text()) for root in runs]
            assert counts[0]["judge_quality"]["pairs"] == counts[1]["judge_quality"]["pairs"] > 0
        for output in ("half", "current"):
            fit = f"iter_{t:03d}/fit_{output}"
            rows = [load_rows(root / fit / "pairs") for root in runs]
            assert [(r["prompt"], r["first"], r["second"]) for r in rows[0]] == \
                [(r["prompt"], r["first"], r["second"]) for r in rows[1]]
            np.testing.assert_allclose([r["target"] for r in rows[0]], [r["target"] for r in rows[1]], atol=1e-5)
            anchors = [json.loads((root / fit / "logprobs" / "anchors.json").read_text()) for root in runs]
            assert anchors[0].keys() == anchors[1].keys()
            for column in anchors[0]:
                np.testing.assert_allclose(anchors[0][column], anchors[1][column], rtol=1e-5, atol=1e-5)
            weights = [load_file(root / fit / "train" / "model" / "model.safetensors") for root in runs]
            for name in weights[0]:
                np.testing.assert_allclose(weights[0][name], weights[1][name], atol=5e-5, err_msg=name)
            losses = [[json.loads(line)["loss"] for line in (root / fit / "train" / "metrics.jsonl").open()]
                      for root in runs]
            np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    metrics = [json.loads((root / "iter_001/evaluate/metrics.json").read_text()) for root in runs]
    assert metrics[0]["win_rate_vs_start"] == pytest.approx(metrics[1]["win_rate_vs_start"], abs=1e-5)


def test_a_rank_left_without_rows_still_takes_part():
    assert process_share([4, 5, 6], 0, 2) == ([4], 1.0) and process_share([4, 5, 6], 1, 2) == ([5, 6], 1.0)
    assert process_share([7], 0, 2) == ([7], 0.0) and process_share([7], 1, 2) == ([7], 1.0)


def test_a_finished_shard_is_kept_when_a_stage_resumes(tmp_path):
    """Each process writes its shard atomically; after a kill a rerun redoes only the unfinished
    shards, and the main process merges them in the items' order (the processes run in turn here)."""
    calls = []

    def write(out, share):
        calls.append(share)
        (out / "items.json").write_text(json.dumps(share))

    def merge(shards, shares, out):
        merged = {i: v for shard, share in zip(shards, shares)
                  for i, v in zip(share, json.loads((shard / "items.json").read_text()))}
        (out / "items.json").write_text(json.dumps([merged[i] for i in sorted(merged)]))

    items, stage = list("abcde"), tmp_path / "stage"
    shards = tmp_path / "stage.shards"
    (shards / "0-of-2").mkdir(parents=True)
    (shards / "0-of-2" / "items.json").write_text(json.dumps(["a", "c", "e"]))  # rank 0 had finished its shard
    (shards / "1-of-2.tmp").mkdir()  # rank 1 was killed while writing
    (shards / "2-of-3").mkdir()  # left by a run on 3 processes: not this run's
    write_sharded(stage, items, write, merge, Processes(rank=1, count=2))
    assert calls == [["b", "d"]] and not stage.exists()
    write_sharded(stage, items, write, merge, Processes(rank=0, count=2))
    assert calls == [["b", "d"]]  # rank 0's finished shard was kept
    assert json.loads((stage / "items.json").read_text()) == items and not shards.exists()
