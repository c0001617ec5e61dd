"""The iterated pipeline: sample → judge → pairs → log-probs → train, with COMAL's reference schedule.

One folder per iteration and stage under the run folder::

    iter_000/sample  iter_000/judge  iter_000/pairs
    iter_000/fit_current/logprobs  iter_000/fit_current/train/{model,metrics.jsonl}

Stage rows are ``datasets`` folders (``<stage>/data``, Arrow). Every stage writes into ``<stage>.tmp`` and renames it when complete, so a stage folder exists
only when its output is whole; a rerun skips finished stages, and a run killed at any point
resumes where it stopped. Seeds depend only on (seed, iteration), so a resumed run ends with the
same checkpoints as an uninterrupted one.

Policies are named as in the rules: ``current`` is π_t (the last checkpoint), ``reference`` is μ
(the start policy; for COMAL the checkpoint of the last reference move), ``centre`` is ONPO's
auxiliary sequence. Each :class:`~comal.rules.ProxStep` of the rule is one fit.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from comal.llm.config import RunConfig
from comal.llm.evaluate import checkpoint_responses, mean_length, win_rate
from comal.llm.judge import JudgeCache, judge_samples
from comal.llm.logprobs import batched_logps, encode
from comal.llm.pairs import hard_rows, pointwise_rows, soft_rows
from comal.llm.sample import sample, sample_with_vllm
from comal.llm.train import TrainRow, train
from comal.rules import CURRENT, REFERENCE, ProxStep, make_rule

START = "start"  # the initial policy's folder name under the run folder


class RunError(ValueError):
    """A run cannot go on (bad input data); the message says what to fix."""


def load_prompts(path: str | Path, field: str = "prompt") -> list[str]:
    """Prompts from a JSON-lines file, one object per line with ``field``."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no such prompt file: {path}")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise RunError(f"{path}, line {number}: not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise RunError(f"{path}, line {number}: no '{field}' text field; set prompt_field in the config")
        if not record[field].strip():
            raise RunError(f"{path}, line {number}: the prompt is empty; remove the line or fill it in")
        prompts.append(record[field])
    if not prompts:
        raise RunError(f"{path} holds no prompts")
    return prompts


def rule_steps(config: RunConfig) -> tuple[ProxStep, ...]:
    """The proximal steps a run fits each iteration, from the rule files (η and ητ from the config)."""
    tau = config.tau_eta_ratio / config.eta
    if config.algorithm in ("ipo", "dpo"):  # offline baselines: anchor = the fixed start policy
        return (ProxStep(CURRENT, {REFERENCE: 1.0}, CURRENT, config.eta),)
    if config.algorithm == "comal":
        rule = make_rule("comal", 1.0, inner="inpo", eta=config.eta, tau=tau, period=config.reference_period)
    elif config.algorithm == "inpo":
        rule = make_rule("inpo", 1.0, eta=config.eta, tau=tau)
    else:
        rule = make_rule(config.algorithm, 1.0, eta=config.eta)
    return rule.prox_steps()


@dataclass
class Pipeline:
    """A configured run in ``run_dir``. The layout and :meth:`status` need only those two; the
    stages also need ``load_model(path)``, the tokenizer and the judge (:func:`pipeline_from_config`)."""

    config: RunConfig
    run_dir: Path
    load_model: Callable | None = None
    tokenizer: object = None
    judge: object = None
    progress: Callable[[str], None] = lambda message: None

    # ----------------------------------------------------------------------------- layout
    def stage_dir(self, iteration: int, stage: str) -> Path:
        return self.run_dir / f"iter_{iteration:03d}" / stage

    def policy_dir(self, iteration: int, name: str) -> Path:
        """Checkpoint of policy ``name`` as it stands at the start of ``iteration``."""
        if name == REFERENCE:
            if self.config.algorithm != "comal":
                return self.run_dir / START
            period = self.config.reference_period
            moved = (iteration // period) * period  # μ ← π_t at every multiple of K
            return self.policy_dir(moved, CURRENT)
        if iteration == 0:
            return self.run_dir / START
        return self.stage_dir(iteration - 1, f"fit_{name}") / "train" / "model"

    def iteration_seed(self, iteration: int) -> int:
        """Seeds depend only on (seed, iteration), so a resumed run draws and trains the same."""
        return self.config.seed * 1_000 + iteration

    @staticmethod
    def done(path: Path) -> bool:
        return path.is_dir()

    def require(self, path: Path, what: str) -> Path:
        """``path`` if that earlier output exists, else a clear error saying what to run first."""
        if not self.done(path):
            raise RunError(f"missing {what} ({path}); run the earlier stages first, "
                           "or `comal run` to do them in order")
        return path

    def write_stage(self, path: Path, write: Callable[[Path], None]) -> Path:
        """Run ``write`` into ``path.tmp`` and rename it to ``path`` once complete."""
        if self.done(path):
            return path
        temporary = path.with_name(path.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        write(temporary)
        temporary.rename(path)
        return path

    # ----------------------------------------------------------------------------- stages
    def sample_stage(self, iteration: int) -> Path:
        def write(folder: Path):
            prompts = load_prompts(self.config.prompts, self.config.prompt_field)
            if self.config.prompts_per_iteration:
                count = self.config.prompts_per_iteration
                start = (iteration * count) % len(prompts)
                prompts = (prompts + prompts)[start:start + min(count, len(prompts))]
            settings = self.config.sampling.model_copy(update={"seed": self.iteration_seed(iteration)})
            policy = self.require(self.policy_dir(iteration, CURRENT), f"the policy of iteration {iteration}")
            if settings.backend == "vllm":
                drawn = sample_with_vllm(policy, self.tokenizer, prompts, settings)
            else:
                drawn = sample(self.load_model(policy), self.tokenizer, prompts, settings)
            records = [{"prompt": p, "response_ids": [list(r) for r in ids], "texts": texts}
                       for p, ids, texts in zip(drawn.prompts, drawn.response_ids, drawn.texts)]
            _save_rows(folder, records)
            _write_json(folder / "counts.json", {"prompts": len(records), "truncated": drawn.truncated,
                                                 "skipped": drawn.skipped})

        return self.write_stage(self.stage_dir(iteration, "sample"), write)

    def judge_stage(self, iteration: int) -> Path:
        """Per prompt: the distinct responses, their counts among the samples and their win matrix."""

        def write(folder: Path):
            cache = JudgeCache(self.run_dir / "judge_cache.jsonl")
            records, failures, empty = [], 0, 0
            for record in _load_rows(self.require(self.stage_dir(iteration, "sample"), "the samples")):
                empty += sum(not text.strip() for text in record["texts"])
                responses = [tuple(response) for response in record["response_ids"]]
                counts = Counter(responses)  # the distinct responses, in the order they were first drawn
                text_of = dict(zip(responses, record["texts"]))
                texts = [text_of[response] for response in counts]
                judged = judge_samples(self.judge, record["prompt"], texts, cache)
                failures += judged.failures
                records.append({"prompt": record["prompt"], "response_ids": [list(r) for r in counts],
                                "texts": texts, "counts": list(counts.values()), "wins": judged.wins.tolist()})
            _save_rows(folder, records)
            _write_json(folder / "counts.json", {"judge_failures": failures, "empty_responses": empty})

        return self.write_stage(self.stage_dir(iteration, "judge"), write)

    def pairs_stage(self, iteration: int) -> Path:
        pointwise = self.config.algorithm == "sppo"

        def write(folder: Path):
            rows = []
            for record in _load_rows(self.require(self.stage_dir(iteration, "judge"), "the judged samples")):
                wins = np.array(record["wins"], dtype=np.float64)
                if np.isnan(wins).any():
                    continue  # a pair no order of the judge could score: the prompt is left out
                responses, counts = record["response_ids"], record["counts"]
                if pointwise:
                    made = pointwise_rows(wins, counts)
                else:
                    made = (hard_rows if self.config.rows == "hard" else soft_rows)(wins, counts)
                rows += [{"prompt": record["prompt"], "first": responses[row.first],
                          "second": None if row.second is None else responses[row.second], "target": row.target,
                          "weight": row.weight} for row in made]
            _save_rows(folder, rows)

        return self.write_stage(self.stage_dir(iteration, "pairs"), write)

    def _encoded_rows(self, iteration: int):
        rows = _load_rows(self.require(self.stage_dir(iteration, "pairs"), "the training rows"))
        return rows, [(encode(self.tokenizer, r["prompt"], r["first"]),
                       None if r["second"] is None else encode(self.tokenizer, r["prompt"], r["second"]))
                      for r in rows]

    def logprobs_stage(self, iteration: int, step: ProxStep) -> Path:
        """Sequence log-probs of every row's responses under each anchor policy of ``step``."""

        def write(folder: Path):
            _, encoded = self._encoded_rows(iteration)
            columns = {}
            for name in sorted(n for n, w in step.anchor.items() if w):
                model = self.load_model(self.require(self.anchor_dir(iteration, name), f"the anchor policy '{name}'"))
                for side, index in (("first", 0), ("second", 1)):
                    sequences = [pair[index] for pair in encoded if pair[index] is not None]
                    if sequences:
                        columns[f"{name}_{side}"] = batched_logps(model, sequences, self.tokenizer.pad_token_id,
                                                                  self.config.training.batch_size).tolist()
            _write_json(folder / "anchors.json", columns)

        return self.write_stage(self.stage_dir(iteration, f"fit_{step.output}") / "logprobs", write)

    def train_stage(self, iteration: int, step: ProxStep) -> Path:
        """Fit π_θ (initialised from π_t) to ``step`` and save it in the Hugging Face format."""

        def write(folder: Path):
            rows, encoded = self._encoded_rows(iteration)
            anchors = json.loads((self.logprobs_stage(iteration, step) / "anchors.json").read_text())
            names = [n for n, w in step.anchor.items() if w]
            train_rows = [TrainRow(first, {n: anchors[f"{n}_first"][i] for n in names}, rows[i]["target"],
                                   second, {n: anchors[f"{n}_second"][i] for n in names} if second else {},
                                   rows[i]["weight"])
                          for i, (first, second) in enumerate(encoded)]
            model = self.load_model(self.policy_dir(iteration, CURRENT))
            if self.config.model.lora is not None:
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **self.config.model.lora))
            settings = self.config.training.model_copy(update={"seed": self.iteration_seed(iteration)})
            train(model, train_rows, step, settings, pad_id=self.tokenizer.pad_token_id,
                  log_path=folder / "metrics.jsonl",
                  dpo_beta=self.config.beta if self.config.algorithm == "dpo" else None)
            if self.config.model.lora is not None:  # a full checkpoint, loadable by from_pretrained
                model = model.merge_and_unload()
            model.save_pretrained(folder / "model", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "model")

        return self.write_stage(self.stage_dir(iteration, f"fit_{step.output}") / "train", write)

    def anchor_dir(self, iteration: int, name: str) -> Path:
        """Where policy ``name`` of an anchor lives: earlier fits of this iteration come first."""
        fitted = self.stage_dir(iteration, f"fit_{name}") / "train" / "model"
        return fitted if self.done(fitted) else self.policy_dir(iteration, name)

    # ----------------------------------------------------------------------------- loop
    def iteration(self, iteration: int) -> None:
        for stage, run in (("sample", self.sample_stage), ("judge", self.judge_stage), ("pairs", self.pairs_stage)):
            self.progress(f"iteration {iteration}: {stage}")
            run(iteration)
        for step in rule_steps(self.config):
            self.progress(f"iteration {iteration}: log-probs for {step.output}")
            self.logprobs_stage(iteration, step)
            self.progress(f"iteration {iteration}: train {step.output}")
            self.train_stage(iteration, step)

    def evaluation_prompts(self) -> list[str]:
        if self.config.evaluate.prompts is None:
            raise RunError("no evaluate.prompts in the config: name a held-out .jsonl prompt file")
        return load_prompts(self.config.evaluate.prompts, self.config.prompt_field)[:self.config.evaluate.max_prompts]

    def evaluate_stage(self, iteration: int) -> Path:
        """Win rates of π_{t+1} against π_0 and against π_t, and mean response lengths."""

        def write(folder: Path):
            prompts = self.evaluation_prompts()
            cache = JudgeCache(self.run_dir / "eval" / "judge_cache.jsonl")
            new, start, previous = (checkpoint_responses(self, path, prompts) for path in (
                self.policy_dir(iteration + 1, CURRENT), self.run_dir / START, self.policy_dir(iteration, CURRENT)))
            versus_start, failures_start = win_rate(self.judge, prompts, new, start, cache)
            versus_previous, failures_previous = win_rate(self.judge, prompts, new, previous, cache)
            _write_json(folder / "metrics.json", {
                "iteration": iteration, "win_rate_vs_start": versus_start, "win_rate_vs_previous": versus_previous,
                "mean_length": mean_length(new), "start_mean_length": mean_length(start),
                "judge_failures": failures_start + failures_previous, "prompts": len(prompts)})

        return self.write_stage(self.stage_dir(iteration, "evaluate"), write)

    def win_matrix(self) -> Path:
        """Win rates between every finished checkpoint of the run: ``eval/win_matrix.{json,png}``."""
        prompts = self.evaluation_prompts()
        names, paths = ["start"], [self.run_dir / START]
        for t in range(self.config.iterations):
            if self.done(self.policy_dir(t + 1, CURRENT)):
                names.append(f"iter {t + 1}")
                paths.append(self.policy_dir(t + 1, CURRENT))
        responses = [checkpoint_responses(self, path, prompts) for path in paths]
        cache = JudgeCache(self.run_dir / "eval" / "judge_cache.jsonl")
        matrix = np.full((len(paths), len(paths)), 0.5)
        for i in range(len(paths)):
            for j in range(i + 1, len(paths)):
                matrix[i, j] = win_rate(self.judge, prompts, responses[i], responses[j], cache)[0]
                matrix[j, i] = 1 - matrix[i, j]
        out = self.run_dir / "eval"
        _write_json(out / "win_matrix.json", {"checkpoints": names, "win_rate": matrix.tolist(),
                                              "mean_length": [mean_length(r) for r in responses]})
        _plot_matrix(matrix, names, out / "win_matrix.png")
        return out / "win_matrix.json"

    def status(self) -> list[dict]:
        """Which stages of which iterations are complete."""
        stages = ["sample", "judge", "pairs"] + [f"fit_{s.output}/{part}" for s in rule_steps(self.config)
                                                 for part in ("logprobs", "train")]
        return [{"iteration": t, **{stage: self.done(self.stage_dir(t, stage)) for stage in stages}}
                for t in range(self.config.iterations)]

    def run(self) -> None:
        for iteration in range(self.config.iterations):
            self.iteration(iteration)
            if self.config.evaluate.prompts is not None:
                self.progress(f"iteration {iteration}: evaluate")
                self.evaluate_stage(iteration)


def _plot_matrix(matrix: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.2 + 0.6 * len(names), 1 + 0.55 * len(names)))
    image = axis.imshow(matrix, vmin=0, vmax=1, cmap="RdBu")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
    axis.set_title("win rate of row over column (%)")
    figure.colorbar(image)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _save_rows(folder: Path, records: list[dict]) -> None:
    """A stage's rows as a Hugging Face ``datasets`` folder (Arrow), under ``folder/data``."""
    from datasets import Dataset

    Dataset.from_list(records).save_to_disk(str(folder / "data"))


def _load_rows(folder: Path) -> list[dict]:
    from datasets import load_from_disk

    return load_from_disk(str(folder / "data")).to_list()


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1))


def pipeline_from_config(config: RunConfig, run_dir: str | Path, *, judge=None, model=None, tokenizer=None,
                         load_model: Callable | None = None,
                         progress: Callable[[str], None] = lambda message: None) -> Pipeline:
    """Load the tokenizer and judge named in ``config``; copy the start policy into the run folder.

    ``model``/``tokenizer`` (objects) replace ``model.path``; ``judge`` (any :class:`Judge`)
    replaces the judge of the config; ``load_model(path)`` replaces ``AutoModelForCausalLM``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from comal.llm.judge import PAIRWISE_TEMPLATE, LLMJudge, RewardModelJudge

    run_dir = Path(run_dir)
    saved = run_dir / "config.json"
    if saved.is_file() and RunConfig.model_validate_json(saved.read_text()) != config:
        raise RunError(f"{run_dir} holds a run with another configuration; its stages would be reused. "
                       "Resume it with its own config.json, or choose a new run folder")
    model_path = Path(config.model.path)
    if model is None and not (model_path / "config.json").is_file():
        raise RunError(f"model.path {model_path} is not a saved transformers model (no config.json); "
                       "save one with save_pretrained or fix the path")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer or model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    def load_causal_lm(path: Path):
        return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()

    load_model = load_model or load_causal_lm

    if judge is None:
        judge_path = Path(config.judge.path)
        if not (judge_path / "config.json").is_file():
            raise RunError(f"judge.path {judge_path} is not a saved transformers model (no config.json)")
        judge_tokenizer = AutoTokenizer.from_pretrained(judge_path)
        if judge_tokenizer.pad_token_id is None:
            judge_tokenizer.pad_token = judge_tokenizer.eos_token
        if config.judge.kind == "reward-model":
            judge = RewardModelJudge(AutoModelForSequenceClassification.from_pretrained(judge_path),
                                     judge_tokenizer, batch_size=config.judge.batch_size)
        else:
            template = PAIRWISE_TEMPLATE if config.judge.template == "pairwise" else config.judge.template
            judge = LLMJudge(AutoModelForCausalLM.from_pretrained(judge_path), judge_tokenizer, template=template,
                             answer_prefix=config.judge.answer_prefix, answer_tokens=config.judge.answer_tokens,
                             batch_size=config.judge.batch_size)
    start = run_dir / START
    if not start.is_dir():
        temporary = run_dir / (START + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        (model if model is not None else load_model(model_path)).save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        temporary.rename(start)
    saved.write_text(config.model_dump_json(indent=1))
    return Pipeline(config, run_dir, load_model, tokenizer, judge, progress)
