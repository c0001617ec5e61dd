"""The iterated pipeline: any :class:`~comal.rules.Rule` executed on a language model.

One iteration is :meth:`Rule.update` with checkpoints for log-policies and samples for advantages:

1. **reference** (rules that keep μ): ``rule.reference_due`` decides whether μ ← π_t, reading the
   period from the state and, when it asks for them, log-probs and advantages estimated on the
   current policy's samples (:class:`~comal.llm.stages.RoundEstimates`);
2. **each ProxStep in order** is one fit: its rows come from one round of samples of the policy
   whose advantage it uses (drawn from that policy's checkpoint when first needed in the
   iteration, as :class:`~comal.rules.base.AdvantageCache` computes each advantage once), or for a
   pure mixture step (no advantage) of its heaviest anchor, with η = 0; the anchors' log-probs are
   computed on the rows, and π_θ is trained from the policy the fit replaces (a kept policy) or
   from the heaviest anchor (a policy made within the iteration, such as mirror-prox's half step).

Policies are named as in the rules (``current`` π_t, ``reference`` μ, ``centre``, ``half``, …) and
map to checkpoints; iteration t runs ``config.rule_at(t)`` (η annealed when the config says so);
the state at iteration t is replayed from the finished outputs of earlier
iterations with ``rule.next_state``, so no schedule is written twice. Seeds depend only on the
config's seed, the iteration and the stage, so a resumed run ends with the same checkpoints.

With several processes (``accelerate launch``, :mod:`comal.llm.processes`) sampling, judging and
log-probs are shared out by prompt and merged, training is data-parallel at the same global batch,
and the rest is written by the main process: every response has its own seed, so the samples,
verdicts and rows do not depend on the number of processes.
"""

from __future__ import annotations

import json
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from comal.llm.config import RunConfig
from comal.llm.evaluate import checkpoint_responses, mean_length, plot_win_matrix, win_matrix, win_rate
from comal.llm.judge import Judge, JudgeCache, JudgeQualityWarning, build_judge
from comal.llm.logprobs import with_pad_token
from comal.llm.prepare import check_model_folder, check_tokenizer_folder
from comal.llm.processes import ONE_PROCESS, Processes, current_processes
from comal.llm.progress import Bar, no_bar, prefixed
from comal.llm.run_folder import (
    RunError, RunFolder, load_rows, write_json, write_on_main, write_sharded, write_together,
)
from comal.llm.sample import context_limit
from comal.llm.stages import (
    RoundEstimates, Sampler, judge_stage, load_prompts, logprobs_stage, merge_judged, merge_logprobs, merge_samples,
    model_sampler, pairs_stage, prompt_groups, sample_stage, train_stage,
)
from comal.rules import CURRENT, REFERENCE, ProxStep, State, heaviest_anchor, rows_policy

__all__ = ["Components", "Run", "RunError", "load_prompts", "open_run"]


@dataclass
class Components:
    """What the stages need besides the config: the policy's tokenizer, a way to load a checkpoint,
    a sampler (checkpoint, prompts, settings → Samples) and the judge."""

    tokenizer: object
    load_model: Callable[[Path], object]
    sampler: Sampler
    judge: Judge


class Run:
    """A configured run in a run folder. Layout and :meth:`status` need no components."""

    def __init__(self, config: RunConfig, folder: RunFolder, parts: Components | None = None,
                 progress: Callable[[str], None] = lambda message: None, bar: Bar = no_bar,
                 warn: Callable[[str], None] = lambda message: warnings.warn(message, JudgeQualityWarning),
                 processes: Processes = ONE_PROCESS):
        self.config, self.folder, self.parts, self.progress, self.bar = config, folder, parts, progress, bar
        self.warn, self.processes = warn, processes
        self.rule = config.rule()  # what every iteration shares: policies kept, rounds, outputs
        self.outputs = tuple(step.output for step in self.rule.prox_steps())
        self._states: dict[int, State] = {}

    # ------------------------------------------------------------------ the rule's state
    def prox_steps(self, t: int) -> tuple[ProxStep, ...]:
        """Iteration ``t``'s steps (their η follows the config's schedule)."""
        return self.config.rule_at(t).prox_steps()

    def seed(self, t: int, stage: str) -> int:
        """A seed for one stage of iteration ``t``, fixed by the config's seed alone."""
        return zlib.crc32(f"{self.config.seed}/{t}/{stage}".encode()) & 0x7FFFFFFF

    def reference_moved(self, t: int) -> bool:
        if REFERENCE not in self.rule.keeps:
            return False
        decision = self.folder.require(self.folder.reference(t), f"the reference decision of iteration {t}")
        return json.loads((decision / "decision.json").read_text())["moved"]

    def _within(self, t: int, state: State, steps_done: int, moved: bool) -> dict[str, Path]:
        """Checkpoints in iteration ``t`` from ``state``: μ moved if the rule decided so (``moved``),
        then the outputs of the first ``steps_done`` fits (``apply_prox_steps`` with checkpoints)."""
        policies = dict(state.policies)
        if moved:
            policies[REFERENCE] = policies[CURRENT]
        for output in self.outputs[:steps_done]:
            policies[output] = self.folder.require(self.folder.model(t, output), f"the fit of '{output}' in iteration {t}")
        return policies

    def policies(self, t: int, steps_done: int = 0) -> dict[str, Path]:
        """Checkpoint of every policy in iteration ``t`` after μ's move and ``steps_done`` of its fits."""
        return self._within(t, self.state(t), steps_done, self.reference_moved(t))

    def state(self, t: int) -> State:
        """The rule's state at the start of iteration ``t`` (policies as checkpoints), replayed from
        the finished iterations before it (each replayed once per run object)."""
        known = max((s for s in self._states if s <= t), default=None)
        state = self._states[known] if known is not None else State({n: self.folder.start for n in self.rule.keeps})
        for s in range(known or 0, t):
            moved = self.reference_moved(s)
            state = self.rule.next_state(state, self._within(s, state, len(self.outputs), moved), moved)
            self._states[s + 1] = state
        return state

    def policy(self, t: int, name: str = CURRENT) -> Path:
        """Checkpoint of policy ``name`` at the start of iteration ``t``."""
        return self.state(t).policies[name]

    # ------------------------------------------------------------------ stages
    def _parts(self) -> Components:
        if self.parts is None:
            raise RunError("this run was opened without its models; use open_run(config, folder)")
        return self.parts

    @cached_property
    def all_prompts(self) -> list[str]:
        return load_prompts(self.config.prompts, self.config.prompt_field, self.config.prompt_split)

    @cached_property
    def judge_cache(self) -> JudgeCache:
        """Every judgement of the run, read from disk once per run object and appended to as it grows."""
        return JudgeCache(self.folder.judge_cache, self.processes.rank)

    @cached_property
    def eval_judge_cache(self) -> JudgeCache:
        return JudgeCache(self.folder.eval_dir / "judge_cache.jsonl")

    def prompts(self, t: int) -> list[str]:
        prompts = self.all_prompts
        count = self.config.prompts_per_iteration
        if count:
            start = (t * count) % len(prompts)
            prompts = (prompts + prompts)[start:start + min(count, len(prompts))]
        return prompts

    def sample(self, t: int, name: str, policies: dict[str, Path]) -> Path:
        """Round of samples of policy ``name`` (its checkpoint in ``policies``) in iteration ``t``."""
        settings = self.config.sampling.model_copy(update={"seed": self.seed(t, f"sample/{name}")})
        prompts = self.prompts(t)
        return write_sharded(self.folder.round(t, name, "sample"), prompts, lambda out, share: sample_stage(
            out, prompts=share, policy=policies[name], settings=settings, sampler=self._parts().sampler,
            bar=prefixed(self.bar, f"iteration {t} {name}")),
            lambda shards, shares, out: merge_samples(shards, shares, out, prompts), self.processes)

    def judge(self, t: int, name: str) -> Path:
        path = self.folder.round(t, name, "judge")
        samples = self.folder.require(self.folder.round(t, name, "sample"), f"the samples of '{name}'")
        if not path.is_dir():
            write_sharded(path, load_rows(samples), lambda out, share: judge_stage(
                out, records=share, judge=self._parts().judge, cache=self.judge_cache,
                bar=prefixed(self.bar, f"iteration {t} {name}")), merge_judged, self.processes)
            if self.processes.count > 1:  # every process reads what the others judged
                if self.processes.main:
                    self.judge_cache.gather_ranks()
                self.processes.barrier()
                del self.judge_cache
        warning = json.loads((path / "counts.json").read_text()).get("judge_warning")
        if warning:
            self.warn(f"iteration {t}, round of {name}: {warning}")
        return path

    def round_policies(self, t: int, name: str) -> dict[str, Path]:
        """The checkpoints as they stand when the rule first needs the round of ``name``."""
        index = next(i for i, step in enumerate(self.rule.prox_steps()) if rows_policy(step) == name)
        if index == 0 and name == CURRENT:
            return dict(self.state(t).policies)  # μ's move leaves π_t as it is
        self.decide_reference(t)
        return self.policies(t, index)

    def judged_round(self, t: int, name: str, policies: dict[str, Path]) -> Path:
        self.progress(f"iteration {t}: sample and judge {name}")
        self.sample(t, name, policies)
        return self.judge(t, name)

    def decide_reference(self, t: int) -> bool:
        """Whether μ ← π_t before iteration ``t``'s steps, as the rule decides (written once).

        The round of π_t is drawn first when the first fit uses it (μ's move leaves π_t as it is),
        so the decision, made by the main process, finds it whatever it reads."""
        if REFERENCE not in self.rule.keeps:
            return False
        if not self.folder.done(self.folder.reference(t)) and rows_policy(self.rule.prox_steps()[0]) == CURRENT:
            self.judged_round(t, CURRENT, dict(self.state(t).policies))

        def write(out: Path):
            state = self.state(t)
            parts = self._parts()
            round_of_current = (lambda: self.judged_round(t, CURRENT, dict(state.policies))) if self.processes.count == 1 \
                else (lambda: self.folder.require(self.folder.round(t, CURRENT, "judge"), "the judged round of π_t"))
            estimates = RoundEstimates(round_of_current, state.policies,
                                       load_model=parts.load_model, tokenizer=parts.tokenizer,
                                       batch_size=self.config.training.batch_size, current=CURRENT,
                                       share_prompts=self.config.training.share_prompts)
            moved = self.config.rule_at(t).reference_due(state._replace(policies=estimates.policies), estimates.advantages)
            write_json(out / "decision.json", {"moved": bool(moved), "since_reference": state.since_reference,
                                               "reference_updates": state.reference_updates})

        write_on_main(self.folder.reference(t), write, self.processes)
        return self.reference_moved(t)

    def row_kind(self, step: ProxStep) -> str:
        if self.rule.pointwise:
            return "pointwise"
        return "soft" if step.advantage_of is None else self.config.rows  # a mixture fit: every pair, target 0

    def pairs(self, t: int, step: ProxStep) -> Path:
        source = rows_policy(step)
        judged = self.folder.require(self.folder.round(t, source, "judge"), f"the judged samples of '{source}'")
        return write_on_main(self.folder.fit(t, step.output, "pairs"), lambda out: pairs_stage(
            out, judged=judged, kind=self.row_kind(step), min_margin=self.config.hard_min_margin), self.processes)

    def logprobs(self, t: int, step: ProxStep, policies: dict[str, Path]) -> Path:
        pairs = self.folder.require(self.folder.fit(t, step.output, "pairs"), f"the rows of '{step.output}'")
        anchors = {name: policies[name] for name, weight in step.anchor.items() if weight}
        parts = self._parts()
        rows = load_rows(pairs)
        groups = prompt_groups(rows)
        return write_sharded(self.folder.fit(t, step.output, "logprobs"), groups, lambda out, share: logprobs_stage(
            out, rows=[rows[i] for group in share for i in group], anchors=anchors, load_model=parts.load_model,
            tokenizer=parts.tokenizer, batch_size=self.config.training.batch_size,
            share_prompts=self.config.training.share_prompts,
            bar=prefixed(self.bar, f"iteration {t} fit {step.output}")),
            lambda shards, shares, out: merge_logprobs(shards, shares, out, groups), self.processes)

    def fit_start(self, step: ProxStep, policies: dict[str, Path]) -> Path:
        """The fit starts from the policy it replaces, or (made this iteration) the heaviest anchor."""
        return policies[step.output if step.output in self.rule.keeps else heaviest_anchor(step)]

    def train(self, t: int, step: ProxStep, policies: dict[str, Path]) -> Path:
        pairs = self.folder.require(self.folder.fit(t, step.output, "pairs"), f"the rows of '{step.output}'")
        logprobs = self.folder.require(self.folder.fit(t, step.output, "logprobs"),
                                       f"the anchor log-probs of '{step.output}'")
        settings = self.config.training.model_copy(update={"seed": self.seed(t, f"train/{step.output}")})
        parts = self._parts()
        return write_together(self.folder.fit(t, step.output, "train"), lambda out: train_stage(
            out, pairs=pairs, logprobs=logprobs, step=step, start=self.fit_start(step, policies),
            load_model=parts.load_model, tokenizer=parts.tokenizer, settings=settings, lora=self.config.model.lora,
            bar=prefixed(self.bar, f"iteration {t} fit {step.output}")), self.processes)

    def fit(self, t: int, index: int) -> None:
        """Pairs, anchor log-probs and training of the ``index``-th step of iteration ``t``."""
        step = self.prox_steps(t)[index]
        policies = self.policies(t, index)
        self.judged_round(t, rows_policy(step), policies)
        self.progress(f"iteration {t}: fit {step.output}")
        self.pairs(t, step)
        self.logprobs(t, step, policies)
        self.train(t, step, policies)

    def iteration(self, t: int) -> None:
        self.decide_reference(t)
        for index in range(len(self.outputs)):
            self.fit(t, index)

    # ------------------------------------------------------------------ evaluation
    def evaluation_prompts(self) -> list[str]:
        if self.config.evaluate.prompts is None:
            raise RunError("no evaluate.prompts in the config: name a held-out .jsonl prompt file")
        return load_prompts(self.config.evaluate.prompts, self.config.prompt_field,
                            self.config.evaluate.split)[:self.config.evaluate.max_prompts]

    def responses(self, checkpoint: Path, prompts: list[str]) -> list:
        """One response per evaluation prompt from ``checkpoint`` (seeded by the run's seed, cached)."""
        label = checkpoint.relative_to(self.folder.root).as_posix().replace("/", "__")
        settings = self.config.sampling.model_copy(update={"samples_per_prompt": 1, "seed": self.config.seed + 7_919})
        return checkpoint_responses(self.folder.eval_dir / "responses" / label, prompts,
                                    lambda chosen, advance: self._parts().sampler(checkpoint, chosen, settings, advance),
                                    prefixed(self.bar, f"evaluate {label.split('__')[0]}"))

    def evaluate(self, t: int) -> Path:
        """Win rates of π_{t+1} against π_0 and against π_t, and mean response lengths."""

        def write(out: Path):
            prompts = self.evaluation_prompts()
            cache = self.eval_judge_cache
            new, start, previous = (self.responses(path, prompts)
                                    for path in (self.policy(t + 1), self.folder.start, self.policy(t)))
            judge = self._parts().judge
            with self.bar(f"evaluate iteration {t}: judge asks", 4 * len(prompts)) as advance:
                versus_start = win_rate(judge, prompts, new, start, cache, advance)
                versus_previous = win_rate(judge, prompts, new, previous, cache, advance)
            write_json(out / "metrics.json", {
                "iteration": t, "win_rate_vs_start": versus_start["win_rate"],
                "win_rate_vs_previous": versus_previous["win_rate"], "vs_start": versus_start,
                "vs_previous": versus_previous, "mean_length": mean_length(new),
                "start_mean_length": mean_length(start),
                "judge_failures": versus_start["failures"] + versus_previous["failures"], "prompts": len(prompts)})

        return write_on_main(self.folder.evaluation(t), write, self.processes)

    def win_matrix(self) -> Path:
        """Win rates between every finished checkpoint of the run: ``eval/win_matrix.{json,png}``."""
        prompts = self.evaluation_prompts()
        names, paths = ["start"], [self.folder.start]
        for t in range(self.config.iterations):
            if self.folder.done(self.folder.model(t, CURRENT)):
                names.append(f"iter {t + 1}")
                paths.append(self.folder.model(t, CURRENT))
        responses = [self.responses(path, prompts) for path in paths]
        matrix = win_matrix(self._parts().judge, prompts, responses, self.eval_judge_cache)
        out = self.folder.eval_dir
        write_json(out / "win_matrix.json", {"checkpoints": names, "win_rate": matrix.tolist(),
                                             "mean_length": [mean_length(r) for r in responses]})
        plot_win_matrix(matrix, names, out / "win_matrix.png")
        return out / "win_matrix.json"

    # ------------------------------------------------------------------ the whole run
    def stages(self, t: int) -> dict[str, Path]:
        """Every stage folder of iteration ``t``, labelled, in the order the loop writes them."""
        labelled = {"reference": self.folder.reference(t)} if REFERENCE in self.rule.keeps else {}
        for name in self.rule.sampled_policies():
            labelled.update({f"{name} {stage}": self.folder.round(t, name, stage) for stage in ("sample", "judge")})
        for output in self.outputs:
            labelled.update({f"fit {output} {stage}": self.folder.fit(t, output, stage)
                             for stage in ("pairs", "logprobs", "train")})
        if self.config.evaluate.prompts is not None:
            labelled["evaluate"] = self.folder.evaluation(t)
        return labelled

    def judge_quality(self) -> list[dict]:
        """The judge-quality figures of every finished judge stage (:func:`~comal.llm.judge.judge_quality`)."""
        rows = []
        for t in range(self.config.iterations):
            for name in self.rule.sampled_policies():
                counts = self.folder.round(t, name, "judge") / "counts.json"
                if counts.is_file():
                    recorded = json.loads(counts.read_text())
                    rows.append({"iteration": t, "round": name, **recorded.get("judge_quality", {}),
                                 "failures": recorded["judge_failures"], "warning": recorded.get("judge_warning")})
        return rows

    def evaluations(self) -> list[dict]:
        """The metrics of every finished evaluation stage, in iteration order."""
        return [json.loads((self.folder.evaluation(t) / "metrics.json").read_text())
                for t in range(self.config.iterations) if self.folder.done(self.folder.evaluation(t))]

    def status(self) -> list[dict]:
        """Per iteration and stage: True when complete, "started" while being written (or cut off by a
        kill), False before; "moved"/"kept" for the reference decision."""
        rows = []
        for t in range(self.config.iterations):
            row = {"iteration": t, **{label: self.folder.done(path) or ("started" if self.folder.started(path) else False)
                                      for label, path in self.stages(t).items()}}
            if row.get("reference") is True:
                row["reference"] = "moved" if self.reference_moved(t) else "kept"
            rows.append(row)
        return rows

    def run(self) -> None:
        for t in range(self.config.iterations):
            self.iteration(t)
            if self.config.evaluate.prompts is not None:
                self.progress(f"iteration {t}: evaluate")
                self.evaluate(t)


def open_run(config: RunConfig, run_dir: str | Path, *, judge: Judge | None = None, model=None, tokenizer=None,
             load_model: Callable | None = None, sampler: Sampler | None = None,
             progress: Callable[[str], None] = lambda message: None, bar: Bar = no_bar,
             warn: Callable[[str], None] = lambda message: warnings.warn(message, JudgeQualityWarning),
             processes: Processes | None = None, defines: dict | None = None) -> Run:
    """A run with its components loaded as the config names them; the start policy copied in.

    ``model``/``tokenizer`` (objects) replace ``model.path``; ``judge`` (any :class:`Judge`) the
    config's judge; ``load_model(path)`` replaces ``AutoModelForCausalLM``; ``sampler`` the
    sampling backend; ``processes`` those ``accelerate launch`` started (found by default);
    ``defines`` what sets the run's numbers besides the config (recorded in its identity). Only
    the main process reports progress and warnings. Everything that can be checked (the folder,
    the models, the judge, the prompts) is checked before anything is written.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    processes = processes or current_processes()
    if config.sampling.backend == "vllm" and sampler is None and processes.count > 1:
        raise RunError(f"sampling.backend: vllm runs in one process, not {processes.count}: launch without "
                       "--processes (vLLM shares GPUs itself: sampling.vllm.tensor_parallel_size)")
    if not processes.main:
        progress, bar, warn = (lambda message: None), no_bar, (lambda message: None)
    folder = RunFolder(run_dir)
    folder.check_root()
    model_path = Path(config.model.path) if model is not None else check_model_folder(config.model.path, "model.path")
    limit = context_limit(model) if model is not None else json.loads((model_path / "config.json").read_text()).get(
        "max_position_embeddings")
    if limit is not None and config.sampling.max_new_tokens >= limit:
        raise RunError(f"sampling.max_new_tokens {config.sampling.max_new_tokens:,} leaves no room for a prompt in "
                       f"the model's {limit:,}-token context (max_position_embeddings); lower it")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(check_tokenizer_folder(config.model.tokenizer, "model.tokenizer")
                                                  if config.model.tokenizer else model_path)
    tokenizer = with_pad_token(tokenizer)

    def load_causal_lm(path: Path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    load_model = load_model or load_causal_lm
    judge = judge or build_judge(config.judge)
    sampler = sampler or model_sampler(load_model, tokenizer, config.sampling.backend)
    run = Run(config, folder, Components(tokenizer, load_model, sampler, judge), progress, bar, warn, processes)
    run.all_prompts  # read and checked now: a bad file is refused before the folder is written
    if config.evaluate.prompts is not None:
        run.evaluation_prompts()

    def save_start(out: Path):
        (model if model is not None else load_model(model_path)).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)

    if processes.main:
        known = json.loads(folder.digests_file.read_text()) if folder.digests_file.is_file() else {}
        identity = config.identity(known, defines)
        folder.adopt(identity, lambda saved: RunConfig.model_validate_json(saved).identity(known, defines),
                     config.model_dump_json(indent=1))
        write_json(folder.digests_file, known)
    write_on_main(folder.start, save_start, processes)
    return run
