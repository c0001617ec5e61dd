"""The run folder: where every stage's output lives, written atomically, and what is done.

    config.json                  the run's configuration (a folder refuses another one)
    start/                       the initial policy (Hugging Face format)
    iter_003/reference/          whether μ ← π_t before this iteration's steps (rules with a reference)
    iter_003/round_current/      sample/ and judge/: one round of samples of a policy, judged
    iter_003/fit_current/        pairs/, logprobs/ and train/{model, metrics.jsonl}: one ProxStep fitted
    judge_cache.jsonl            every judgement, so a resumed run asks no pair twice
    eval/                        evaluation responses, win rates, the win matrix

Every stage is written into ``<stage>.tmp`` and renamed when complete, so a stage folder exists
only when its output is whole; a rerun skips finished stages and a killed run resumes where it
stopped. Rows are ``datasets`` folders (``<stage>/data``, Arrow). With several processes a sharded
stage is first written as ``<stage>.shards/<rank>-of-<count>/`` (each atomically; a resumed run
keeps the finished ones), then merged by the main process; only the main process writes anything
else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from comal.llm.processes import ONE_PROCESS, Processes


class RunError(ValueError):
    """A run cannot go on (bad input data, a missing earlier stage); the message says what to fix."""


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` into ``path.tmp`` and rename it to ``path`` once complete; skip a finished ``path``."""
    if path.is_dir():
        return path
    temporary = path.with_name(path.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    write(temporary)
    temporary.rename(path)
    return path


def write_sharded(path: Path, items: Sequence, write: Callable[[Path, list], None],
                  merge: Callable[[list[Path], list[list[int]], Path], None], processes: Processes = ONE_PROCESS) -> Path:
    """``write(out, items)`` as one stage, shared among ``processes``.

    One process writes ``path`` itself. Several each write ``write(shard, their share)`` into a shard
    folder; the main process then calls ``merge(shard folders, each shard's item indices, out)``,
    and every process returns once ``path`` is whole. Every process must call this for every stage.
    """
    if path.is_dir():
        return path
    if processes.count == 1:
        return write_atomically(path, lambda out: write(out, list(items)))
    shares = [processes.share(range(len(items)), rank) for rank in range(processes.count)]
    shards = [path.with_name(f"{path.name}.shards") / f"{rank}-of-{processes.count}" for rank in range(processes.count)]
    write_atomically(shards[processes.rank], lambda out: write(out, [items[i] for i in shares[processes.rank]]))
    processes.barrier()
    if processes.main:
        write_atomically(path, lambda out: merge(shards, shares, out))
        shutil.rmtree(shards[0].parent)
    processes.barrier()
    return path


def write_on_main(path: Path, write: Callable[[Path], None], processes: Processes = ONE_PROCESS) -> Path:
    """``write_atomically`` by the main process; the others wait until ``path`` is whole."""
    if processes.main:
        write_atomically(path, write)
    processes.barrier()
    return path


def write_together(path: Path, write: Callable[[Path | None], None], processes: Processes = ONE_PROCESS) -> Path:
    """A collective stage (data-parallel training): every process runs ``write``, the main one into
    ``path`` (atomically), the others with ``None`` (they compute, the main process saves)."""
    if path.is_dir():
        return path
    if processes.main:
        write_atomically(path, write)
    else:
        write(None)
    processes.barrier()
    return path


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1))


def save_rows(folder: Path, records: list[dict]) -> None:
    """A stage's rows as a Hugging Face ``datasets`` folder (Arrow), under ``folder/data``."""
    from datasets import Dataset

    Dataset.from_list(records).save_to_disk(str(folder / "data"))


def load_rows(folder: Path) -> list[dict]:
    from datasets import load_from_disk

    if not json.loads((folder / "data" / "state.json").read_text())["_data_files"]:
        return []  # saved from no rows: datasets writes no shard, and cannot load one
    return load_from_disk(str(folder / "data")).to_list()


class RunFolder:
    """Paths of one run's stages, and the checks that a stage's inputs exist."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def start(self) -> Path:
        return self.root / "start"

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    def iteration(self, t: int) -> Path:
        return self.root / f"iter_{t:03d}"

    def reference(self, t: int) -> Path:
        return self.iteration(t) / "reference"

    def round(self, t: int, policy: str, stage: str) -> Path:
        """``sample`` or ``judge`` of the round of samples of ``policy`` in iteration ``t``."""
        return self.iteration(t) / f"round_{policy}" / stage

    def fit(self, t: int, output: str, stage: str) -> Path:
        """``pairs``, ``logprobs`` or ``train`` of the fit of the step that outputs ``output``."""
        return self.iteration(t) / f"fit_{output}" / stage

    def model(self, t: int, output: str) -> Path:
        """The checkpoint the fit of ``output`` in iteration ``t`` writes."""
        return self.fit(t, output, "train") / "model"

    def evaluation(self, t: int) -> Path:
        return self.iteration(t) / "evaluate"

    @property
    def judge_cache(self) -> Path:
        return self.root / "judge_cache.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @staticmethod
    def done(path: Path) -> bool:
        return path.is_dir()

    @staticmethod
    def started(path: Path) -> bool:
        """A stage being written now, or cut off by a kill (its ``.tmp`` or ``.shards`` folder; a rerun
        redoes what is not finished)."""
        return any(path.with_name(path.name + suffix).is_dir() for suffix in (".tmp", ".shards"))

    def require(self, path: Path, what: str) -> Path:
        """``path`` if that earlier output exists, else a clear error saying what to run first."""
        if not self.done(path):
            raise RunError(f"missing {what} ({path}); run the earlier stages first, "
                           "or `comal run` to do them in order")
        return path

    def adopt(self, config_json: str, same: Callable[[str], bool]) -> None:
        """Record the run's configuration, or refuse a folder that holds a run of another one."""
        if self.config_file.is_file() and not same(self.config_file.read_text()):
            raise RunError(f"{self.root} holds a run with another configuration; its stages would be reused. "
                           "Resume it with its own config.json, or choose a new run folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(config_json)
