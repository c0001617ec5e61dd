"""The run folder: where every stage's output lives, written atomically, and what is done.

    config.json                  the run's configuration, as given
    identity.json                what defines its numbers: every setting, files and folders by content digest
    digests.json                 the digests of the files the run names (each read once, not at every resume)
    lock                         the pid of the process working in the folder (held with flock)
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

A folder is resumed exactly when it would give the same numbers: :meth:`RunFolder.adopt` compares
the run's identity (its settings, with every file or folder they name replaced by a digest of its
content, so neither the spelling of a path nor a move matters) with the recorded one and refuses
another, naming the settings that differ; one process at a time works in a folder (:meth:`RunFolder.lock`).
"""

from __future__ import annotations

import fcntl
import json
import os
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


def content_digest(path: Path, known: dict | None = None) -> str | None:
    """A digest (xxh3-128) of a file's bytes, or of a folder's file names and contents; None when
    ``path`` does not exist. ``known`` maps ``"path size mtime"`` to digests already computed (a
    model folder is read once per run, not at every resume) and is updated."""
    import xxhash

    path = Path(path)
    if path.is_file():
        stat = path.stat()
        key = f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}"
        if known is None or key not in known:
            digest = xxhash.xxh3_128()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
            if known is None:
                return digest.hexdigest()
            known[key] = digest.hexdigest()
        return known[key]
    if path.is_dir():
        digest = xxhash.xxh3_128()
        for file in sorted(item for item in path.rglob("*") if item.is_file()):
            digest.update(f"{file.relative_to(path)}\0{content_digest(file, known)}\0".encode())
        return digest.hexdigest()
    return None


def by_content(path: str, known: dict | None = None) -> str:
    """An absolute ``path`` as ``"content <digest>"`` of what it names (kept as it is when it names nothing)."""
    digest = content_digest(Path(path), known) if Path(path).is_absolute() else None
    return path if digest is None else f"content {digest}"


# settings that change how a run computes, not its numbers (beyond float rounding), so a folder is
# resumed across them, including a folder made before they existed
HOW_NOT_WHAT = frozenset({"training.share_prompts", "training.gradient_checkpointing", "training.report_to"})


def flatten(settings: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``: settings compared, and differences named, key by key."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(recorded: dict, wanted: dict, shown: int = 3) -> str:
    """The first settings that differ, as ``key: recorded there, wanted now``."""
    keys = [key for key in {**recorded, **wanted} if recorded.get(key) != wanted.get(key)]
    named = [f"{key}: {_short(recorded.get(key))} there, {_short(wanted.get(key))} now" for key in keys[:shown]]
    return "; ".join(named) + (f"; and {len(keys) - shown} more" if len(keys) > shown else "")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


_HELD: dict[Path, object] = {}  # the open lock files of this process (a lock lasts as long as its file is open)


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

    @property
    def identity_file(self) -> Path:
        return self.root / "identity.json"

    @property
    def digests_file(self) -> Path:
        """The content digests of the files the run names, by path, size and modification time."""
        return self.root / "digests.json"

    def check_root(self) -> None:
        """Refuse a run folder path that names a file."""
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"{self.root} is a file, not a run folder; choose a folder with --out")

    def refuse_other(self, identity: dict, identity_of_config: Callable[[str], dict]) -> None:
        """Refuse a folder that holds a run with another identity (a folder from before identities
        were recorded is compared through its ``config.json``); writes nothing."""
        self.check_root()
        if self.identity_file.is_file():
            recorded = json.loads(self.identity_file.read_text())
        elif self.config_file.is_file():
            recorded = identity_of_config(self.config_file.read_text())
        else:
            return
        recorded = {key: value for key, value in recorded.items() if key not in HOW_NOT_WHAT}
        if recorded != identity:
            raise RunError(f"{self.root} holds a run with other settings ({differences(recorded, identity)}); "
                           "its stages would be reused. Resume it with the same settings, or choose a new folder")

    def take(self, check: Callable[[], None]) -> None:
        """Hold the folder once ``check()`` passes: checked before anything is written (a refused
        folder is left as it was), then again under the lock, as a process that held it before us left it."""
        check()
        self.lock()
        check()

    def adopt(self, identity: dict, identity_of_config: Callable[[str], dict], config_json: str | None = None) -> None:
        """Take the folder for this run (:meth:`take`, refusing another run's), then record its
        identity and its configuration (when it has one)."""
        self.take(lambda: self.refuse_other(identity, identity_of_config))
        if config_json is not None:
            self.config_file.write_text(config_json)
        write_json(self.identity_file, identity)

    def lock(self) -> None:
        """Hold the folder for this process: ``flock`` on ``lock``, which records the pid. A second
        process is refused at once with that pid; the lock of a process that died is free again (the
        kernel drops it), so a killed run is resumed without a manual step."""
        self.check_root()
        self.root.mkdir(parents=True, exist_ok=True)
        key = self.root.resolve()
        if key in _HELD:
            return
        handle = (self.root / "lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunError(f"{self.root} is in use by process {holder}; wait for it to finish or stop it "
                           "(a folder whose process died is taken over)") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _HELD[key] = handle

    def unlock(self) -> None:
        """Let go of the folder (the process ending does the same)."""
        handle = _HELD.pop(self.root.resolve(), None)
        if handle is not None:
            handle.close()
