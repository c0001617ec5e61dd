"""The stages of an iteration as functions of explicit inputs, each writing one folder ``out``.

    sample_stage    prompts, a policy checkpoint, a sampler      → responses (ids, text, counts)
    judge_stage     the samples, a judge                          → distinct responses, counts, win matrix
    pairs_stage     the judged samples, the kind of rows          → training rows (indices into responses)
    logprobs_stage  the rows, the anchor checkpoints              → sequence log-probs of every anchor
    train_stage     rows, anchor log-probs, a ProxStep, a start   → the fitted checkpoint and its metrics

:mod:`comal.llm.loop` chains them in the order a rule's steps ask for; :mod:`comal.llm.run_folder`
writes each atomically. Each sequence is run through a model once per stage, however many rows
it appears in.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from comal.llm.config import SPLIT, split_name
from comal.llm.judge import Judge, JudgeCache, judge_quality, judge_samples, judge_warning
from comal.llm.logprobs import Encoded, batched_logps, encode
from comal.llm.pairs import estimated_advantages, hard_rows, pointwise_rows, soft_rows
from comal.llm.progress import Advance, Bar, no_bar
from comal.llm.run_folder import RunError, load_rows, save_rows, write_json
from comal.llm.sample import Samples, SamplingConfig, sample, sample_with_vllm
from comal.llm.train import TrainConfig, TrainRow, train
from comal.rules import ProxStep

Sampler = Callable[[Path, Sequence[str], SamplingConfig, Advance], Samples]  # advance(sequences drawn)


PROMPT_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompts(path: str | Path, field: str = "prompt", split: str | None = None) -> list[str]:
    """The ``field`` text of the rows of a local dataset: a ``.jsonl`` / ``.json`` / ``.parquet`` /
    ``.csv`` file (read by ``datasets``; its one split is ``train``), or a folder written by
    ``Dataset.save_to_disk`` (a ``DatasetDict`` folder gives its ``split``, default ``train``). A
    split may take a slice of rows, ``train[:1700]`` or ``train[-200:]``, as ``datasets`` writes it."""
    try:
        match = SPLIT.match(split_name(split or "train"))
    except ValueError as error:
        raise RunError(str(error)) from None
    dataset = _prompt_dataset(Path(path), match["name"])
    rows = range(len(dataset))[slice(*(int(match[k]) if match[k] else None for k in ("start", "stop")))]
    if match["start"] is not None or match["stop"] is not None:
        dataset = dataset.select(rows)
    if field not in dataset.column_names:
        raise RunError(f"{path}: no '{field}' column (columns: {', '.join(dataset.column_names) or 'none'}); "
                       "set prompt_field in the config")
    prompts = list(dataset[field])  # datasets 5 gives a lazy Column
    for row, prompt in enumerate(prompts, start=1):
        if not isinstance(prompt, str):
            raise RunError(f"{path}, row {row}: '{field}' is {type(prompt).__name__}, not text")
        if not prompt.strip():
            raise RunError(f"{path}, row {row}: the prompt is empty; remove the row or fill it in")
    if not prompts:
        raise RunError(f"{path} holds no prompts")
    return prompts


def _prompt_dataset(path: Path, split: str):
    """The dataset at ``path``, the split named ``split`` (a file has only ``train``)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parser errors reach the user as one RunError line
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as error:
            raise RunError(f"{path} is not a dataset saved with save_to_disk ({str(error).splitlines()[0]})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise RunError(f"{path} has no split '{split}' (splits: {', '.join(loaded)}); set prompt_split")
            loaded = loaded[split]
        return loaded
    if not path.is_file():
        raise RunError(f"no such prompt file or dataset folder: {path}")
    if path.suffix not in PROMPT_FORMATS:
        raise RunError(f"{path}: prompts must be {', '.join(PROMPT_FORMATS)} or a save_to_disk folder")
    if path.stat().st_size == 0:
        raise RunError(f"{path} holds no prompts")
    if split != "train":
        raise RunError(f"{path} is one file, whose only split is 'train' (rows may be sliced: train[-200:]), "
                       f"not '{split}'")
    try:
        # data_files are glob patterns: a path holding [ ] * ? is escaped to name only itself
        return datasets.load_dataset(PROMPT_FORMATS[path.suffix], data_files=glob.escape(str(path)), split="train",
                                     keep_in_memory=True)
    except Exception as error:  # datasets wraps parser errors in several types; name the file either way
        cause = str(error.__cause__ or error).strip() or type(error.__cause__ or error).__name__
        raise RunError(f"{path}: cannot be read as {path.suffix[1:]} ({cause.splitlines()[0][:200]})") from None


def model_sampler(load_model: Callable[[Path], object], tokenizer, backend: str = "transformers") -> Sampler:
    """Sampling from a checkpoint with transformers ``generate`` (or vLLM)."""
    if backend == "vllm":
        return lambda policy, prompts, settings, advance: sample_with_vllm(policy, tokenizer, prompts, settings,
                                                                             advance)
    return lambda policy, prompts, settings, advance: sample(load_model(policy), tokenizer, prompts, settings, advance)


def cached_loader(load: Callable[[Path], object], size: int = 4) -> Callable[[Path], object]:
    """``load`` that keeps the last ``size`` checkpoints it read in memory and hands out copies.

    A finished checkpoint never changes, and an iteration reads each several times (its sampler,
    the anchors, the start of a fit). Meant for small models: a large one would hold ``size`` copies.
    """
    import copy
    from collections import OrderedDict

    kept: OrderedDict[Path, object] = OrderedDict()

    def cached(path: Path):
        key = Path(path).resolve()
        if key not in kept:
            kept[key] = load(path)
            if len(kept) > size:
                kept.popitem(last=False)
        kept.move_to_end(key)
        return copy.deepcopy(kept[key])  # training changes the model it gets

    return cached


def sample_stage(out: Path, *, prompts: Sequence[str], policy: Path, settings: SamplingConfig,
                 sampler: Sampler, bar: Bar = no_bar) -> None:
    """k responses per prompt from ``policy``; ``counts`` weigh each (1 per drawn sample)."""
    with bar("sample: sequences", len(prompts) * settings.samples_per_prompt) as advance:
        drawn = sampler(policy, prompts, settings, advance)
    counts = drawn.counts or [[1.0] * len(ids) for ids in drawn.response_ids]
    save_rows(out, [{"prompt": p, "response_ids": [list(r) for r in ids], "texts": texts, "counts": weights}
                    for p, ids, texts, weights in zip(drawn.prompts, drawn.response_ids, drawn.texts, counts)])
    write_json(out / "counts.json", {"prompts": len(drawn.prompts), "truncated": drawn.truncated,
                                     "skipped": drawn.skipped})


def judge_stage(out: Path, *, records: Sequence[dict], judge: Judge, cache: JudgeCache, bar: Bar = no_bar) -> None:
    """Per prompt of the sample ``records``: the distinct responses, their summed counts and their win
    matrix (both orders), and ``asked``, each order's verdicts on the distinct texts."""
    rows, failures, empty = [], 0, 0
    asks = sum(len(set(r["texts"])) * (len(set(r["texts"])) - 1) for r in records)  # ordered pairs of distinct texts
    with bar("judge: asks", asks) as advance:
        for record in records:
            empty += sum(not text.strip() for text in record["texts"])
            counts, text_of = {}, {}
            for ids, text, count in zip(record["response_ids"], record["texts"], record["counts"]):
                counts[tuple(ids)] = counts.get(tuple(ids), 0.0) + count  # distinct, in the order first drawn
                text_of[tuple(ids)] = text
            judged = judge_samples(judge, record["prompt"], [text_of[ids] for ids in counts], cache, advance)
            failures += judged.failures
            rows.append({"prompt": record["prompt"], "response_ids": [list(ids) for ids in counts],
                         "texts": [text_of[ids] for ids in counts], "counts": list(counts.values()),
                         "wins": judged.wins.tolist(), "asked": judged.asked.tolist()})
    write_judged(out, rows, failures, empty)


def write_judged(out: Path, rows: list[dict], failures: int, empty: int) -> None:
    save_rows(out, rows)
    quality = judge_quality([np.array(row["asked"], dtype=np.float64) for row in rows])
    write_json(out / "counts.json", {"judge_failures": failures, "empty_responses": empty, "judge_quality": quality,
                                     "judge_warning": judge_warning(quality)})


def merge_samples(shards: list[Path], shares: list[list[int]], out: Path, prompts: Sequence[str]) -> None:
    """The sample stage of all prompts from its shards (a skipped prompt has no row in its shard)."""
    placed = []
    for shard, share in zip(shards, shares):
        remaining = iter(share)
        for row in load_rows(shard):
            placed.append((next(i for i in remaining if prompts[i] == row["prompt"]), row))
    save_rows(out, [row for _, row in sorted(placed, key=lambda pair: pair[0])])
    write_json(out / "counts.json", _summed([json.loads((shard / "counts.json").read_text()) for shard in shards]))


def merge_judged(shards: list[Path], shares: list[list[int]], out: Path) -> None:
    """The judge stage of all sample records from its shards (one row per record, in order)."""
    placed = sorted((i, row) for shard, share in zip(shards, shares) for i, row in zip(share, load_rows(shard)))
    counts = _summed([json.loads((shard / "counts.json").read_text()) for shard in shards])
    write_judged(out, [row for _, row in placed], counts["judge_failures"], counts["empty_responses"])


def _summed(counts: list[dict]) -> dict:
    return {key: sum(c[key] for c in counts) for key, value in counts[0].items() if isinstance(value, (int, float))}


def judged_prompts(judged: Path):
    """The judged records with a complete win matrix (a pair no order could score drops its prompt)."""
    for record in load_rows(judged):
        wins = np.array(record["wins"], dtype=np.float64)
        if not np.isnan(wins).any():
            yield record, wins


def pairs_stage(out: Path, *, judged: Path, kind: str, min_margin: float = 0.0) -> None:
    """Training rows of ``kind`` (soft, hard or pointwise) from every judged prompt; hard rows drop
    (and count) a prompt whose chosen and rejected are within ``min_margin`` of a tie.

    When every prompt drew a single distinct response there is nothing to compare: no rows, and the
    fit keeps its start (the empirical loss is 0 for every θ), with a warning. Pairs that were judged
    but all tied are an error: the judge gave no signal."""
    make_rows = {"soft": soft_rows, "hard": partial(hard_rows, min_margin=min_margin), "pointwise": pointwise_rows}[kind]
    rows, prompts, without_row, single = [], 0, 0, 0
    for record, wins in judged_prompts(judged):
        responses = record["response_ids"]
        made = make_rows(wins, record["counts"])
        prompts, without_row, single = prompts + 1, without_row + (not made), single + (len(responses) < 2)
        rows += [{"prompt": record["prompt"], "first": responses[row.first],
                  "second": None if row.second is None else responses[row.second], "target": row.target,
                  "weight": row.weight} for row in made]
    if not rows and single < prompts:
        margin = f" or within hard_min_margin {min_margin} of a tie" if kind == "hard" and min_margin else ""
        raise RunError(f"no training rows: all {prompts - single} judged prompts with two or more distinct responses "
                       f"were ties{margin}; check the judge's quality (comal status) and the samples")
    warning = None if rows else (f"no training rows: every one of the {prompts} prompts drew a single distinct "
                                 "response; the fit keeps its start (draw more samples to see a difference)")
    save_rows(out, rows)
    write_json(out / "counts.json", {"kind": kind, "prompts": prompts, "rows": len(rows),
                                     "prompts_without_a_row": without_row, "prompts_with_one_response": single,
                                     "min_margin": min_margin, "warning": warning})


def encode_rows(rows: Sequence[dict], tokenizer) -> list[tuple[Encoded, Encoded | None]]:
    return [(encode(tokenizer, r["prompt"], r["first"]),
             None if r["second"] is None else encode(tokenizer, r["prompt"], r["second"])) for r in rows]


def distinct_logps(model, sequences: Sequence[Encoded], pad_id: int, batch_size: int,
                   advance: Advance = lambda count: None, share_prompts: bool = True) -> dict[Encoded, float]:
    """Sequence log-probs of each distinct sequence, computed once."""
    distinct = list(dict.fromkeys(sequences))
    return dict(zip(distinct, batched_logps(model, distinct, pad_id, batch_size, advance, share_prompts).tolist()))


def logprobs_stage(out: Path, *, rows: Sequence[dict], anchors: Mapping[str, Path], load_model: Callable, tokenizer,
                   batch_size: int, share_prompts: bool = True, bar: Bar = no_bar) -> None:
    """Columns ``<policy>_first`` / ``<policy>_second``: log-probs of every row's responses under each anchor
    (anchors that are one checkpoint, as π_t and μ are at the start, are computed once)."""
    encoded = encode_rows(rows, tokenizer)
    sequences = [sequence for pair in encoded for sequence in pair if sequence is not None]
    if not sequences:  # a fit without rows (every prompt drew one response) needs no anchor loaded
        write_json(out / "anchors.json", {})
        return
    checkpoints = {name: Path(checkpoint).resolve() for name, checkpoint in anchors.items()}
    distinct = sorted(set(checkpoints.values()))
    columns, computed = {}, {}
    with bar(f"log-probs: sequences × {len(distinct)} checkpoints", len(set(sequences)) * len(distinct)) as advance:
        for name, checkpoint in sorted(checkpoints.items()):
            if checkpoint not in computed:
                computed[checkpoint] = distinct_logps(load_model(anchors[name]), sequences, tokenizer.pad_token_id,
                                                      batch_size, advance, share_prompts)
            values = computed[checkpoint]
            for side, index in (("first", 0), ("second", 1)):
                if any(pair[index] is not None for pair in encoded):
                    columns[f"{name}_{side}"] = [values[pair[index]] for pair in encoded if pair[index] is not None]
    write_json(out / "anchors.json", columns)


def prompt_groups(rows: Sequence[dict]) -> list[list[int]]:
    """Row indices grouped by prompt (the unit the log-probs stage is shared out by: a prompt's
    responses are forwarded by one process)."""
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row["prompt"], []).append(index)
    return list(groups.values())


def merge_logprobs(shards: list[Path], shares: list[list[int]], out: Path, groups: list[list[int]]) -> None:
    """The anchor columns of all rows from the shards, each holding the rows of its share of ``groups``."""
    merged: dict[str, dict[int, float]] = {}
    for shard, share in zip(shards, shares):
        rows = [i for g in share for i in groups[g]]
        for name, values in json.loads((shard / "anchors.json").read_text()).items():
            merged.setdefault(name, {}).update(zip(rows, values))
    write_json(out / "anchors.json", {name: [values[i] for i in sorted(values)] for name, values in merged.items()})


def train_stage(out: Path | None, *, pairs: Path, logprobs: Path, step: ProxStep, start: Path, load_model: Callable,
                tokenizer, settings: TrainConfig, lora: dict | None = None, bar: Bar = no_bar) -> None:
    """Fit π_θ, initialised from ``start``, to ``step``; save it in the Hugging Face format into
    ``out`` (None: a data-parallel process that trains and leaves saving to the main one). No rows:
    the start is saved unchanged."""
    rows = load_rows(pairs)
    encoded = encode_rows(rows, tokenizer)
    anchors = json.loads((logprobs / "anchors.json").read_text())
    names = [name for name, weight in step.anchor.items() if weight]
    train_rows = [TrainRow(first, {n: anchors[f"{n}_first"][i] for n in names}, rows[i]["target"],
                           second, {n: anchors[f"{n}_second"][i] for n in names} if second else {}, rows[i]["weight"])
                  for i, (first, second) in enumerate(encoded)]
    model = load_model(start)
    if lora is not None:
        import warnings

        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():  # peft reads an attribute transformers 5 renamed; not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    if rows:
        train(model, train_rows, step, settings, pad_id=tokenizer.pad_token_id,
              log_path=None if out is None else out / "metrics.jsonl", bar=bar)
    if out is None:
        return
    if lora is not None:  # a full checkpoint, loadable by from_pretrained
        model = model.merge_and_unload()
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")


class RoundEstimates:
    """Sampled stand-ins for what :meth:`Rule.reference_due` reads, computed only when read.

    Over the distinct responses ``S`` of the current policy's judged round, per prompt: each named
    policy's log-probs renormalised over ``S`` (``−inf`` pads prompts with fewer responses), and the
    current policy's estimated advantages ``â``. On ``S`` the fixed point ``π ∝ μ e^{a_π/τ}`` restricts
    to itself, so the residual measured here estimates the tabular one.
    """

    def __init__(self, judged: Callable[[], Path], policies: Mapping[str, Path], *, load_model: Callable,
                 tokenizer, batch_size: int, current: str, share_prompts: bool = True):
        self.judged, self.checkpoints, self.current = judged, policies, current
        self.load_model, self.tokenizer, self.batch_size = load_model, tokenizer, batch_size
        self.share_prompts = share_prompts
        self.policies = _Lazy(policies, self._log_policy, "policy")
        self.advantages = _Lazy((current,), self._advantages, "advantage (only the current policy is sampled)")

    def _records(self):
        if not hasattr(self, "_cached"):
            self._cached = list(judged_prompts(self.judged()))
            if not self._cached:
                raise RunError("no prompt of the current round was judged: cannot test the reference")
        return self._cached

    def _padded(self, values: list[np.ndarray], fill: float) -> np.ndarray:
        width = max(len(v) for v in values)
        return np.stack([np.pad(v, (0, width - len(v)), constant_values=fill) for v in values])

    def _log_policy(self, name: str) -> np.ndarray:
        from scipy.special import log_softmax

        records = self._records()
        encoded = [[encode(self.tokenizer, r["prompt"], ids) for ids in r["response_ids"]] for r, _ in records]
        values = distinct_logps(self.load_model(self.checkpoints[name]), [e for row in encoded for e in row],
                                self.tokenizer.pad_token_id, self.batch_size, share_prompts=self.share_prompts)
        return self._padded([log_softmax(np.array([values[e] for e in row])) for row in encoded], -np.inf)

    def _advantages(self, name: str) -> np.ndarray:
        return self._padded([estimated_advantages(wins, r["counts"]) for r, wins in self._records()], 0.0)


class _Lazy(Mapping):
    """A mapping whose values are computed on first read."""

    def __init__(self, names, compute, what: str):
        self.names, self.compute, self.what, self.values = tuple(names), compute, what, {}

    def __getitem__(self, name):
        if name not in self.names:
            raise RunError(f"the sampled loop has no {self.what} '{name}'")
        if name not in self.values:
            self.values[name] = self.compute(name)
        return self.values[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)
