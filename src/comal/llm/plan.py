"""What a run will cost before it is launched: counts per iteration from the config and its rule,
and times from a short probe of every stage on this machine (``comal plan CONFIG``).

Counts are upper bounds where duplicates collapse (equal responses are judged and forwarded once):
a round draws ``prompts × k`` sequences and asks the judge at most ``prompts × k(k − 1)`` ordered
pairs; a fit has ``prompts`` hard rows, at most ``prompts × k(k − 1)/2`` soft rows or
``prompts × k`` pointwise ones, the anchors' log-probs of at most ``prompts × k`` sequences per
distinct anchor checkpoint, and ``epochs × ⌈rows / (batch × accumulation)⌉`` optimiser steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from comal.llm.config import RunConfig
from comal.llm.run_folder import RunFolder

STAGES = ("sequences", "new_tokens", "judge_asks", "logprob_sequences", "training_rows", "optimiser_steps")


@dataclass
class IterationCounts:
    iteration: int
    rounds: int
    fits: int
    sequences: int
    new_tokens: int
    judge_asks: int
    logprob_sequences: int
    training_rows: int
    optimiser_steps: int
    evaluation_sequences: int
    evaluation_asks: int


def iteration_counts(config: RunConfig) -> list[IterationCounts]:
    """The work of every iteration (see the module's bounds), read from the rule's steps."""
    from comal.llm.loop import Run
    from comal.rules import rows_policy

    run = Run(config, RunFolder(Path("unused")))  # its prompt schedule and row kinds; nothing is written
    k, training = config.sampling.samples_per_prompt, config.training
    evaluated = 0
    if config.evaluate.prompts is not None:
        evaluated = len(run.evaluation_prompts())
    rows_of = {"hard": lambda p: p, "soft": lambda p: p * k * (k - 1) // 2, "pointwise": lambda p: p * k}
    counts = []
    for t in range(config.iterations):
        prompts = len(run.prompts(t))
        steps = run.prox_steps(t)
        rounds = len(dict.fromkeys(rows_policy(step) for step in steps))
        rows = [rows_of[run.row_kind(step)](prompts) for step in steps]
        anchors = sum(sum(1 for weight in step.anchor.values() if weight) for step in steps)
        counts.append(IterationCounts(
            iteration=t, rounds=rounds, fits=len(steps), sequences=rounds * prompts * k,
            new_tokens=rounds * prompts * k * config.sampling.max_new_tokens,
            judge_asks=rounds * prompts * k * (k - 1), logprob_sequences=anchors * prompts * k,
            training_rows=sum(rows),
            optimiser_steps=sum(training.epochs * math.ceil(math.ceil(r / training.batch_size)
                                                            / training.gradient_accumulation) for r in rows),
            evaluation_sequences=evaluated * (2 if t == 0 else 1), evaluation_asks=4 * evaluated))
    return counts


@dataclass
class ProbeRates:
    """Seconds per unit of each stage, measured on a few items with the config's models."""

    seconds_per_sequence: float
    seconds_per_ask: float
    seconds_per_logprob_sequence: float
    seconds_per_step: float
    mean_new_tokens: float
    prompt_tokens: float  # mean tokens of a judge ask (template, prompt, two responses), by the policy's tokenizer


def probe(config: RunConfig, prompts: int = 2) -> ProbeRates:
    """Run each stage once on ``prompts`` prompts: sample, judge both orders, log-probs, one
    optimiser step of the config's rule on rows built from the probe's samples."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from comal.llm.judge import PAIRWISE_TEMPLATE, build_judge
    from comal.llm.logprobs import batched_logps, encode, with_pad_token
    from comal.llm.loop import Run
    from comal.llm.sample import sample
    from comal.llm.train import TrainRow, train

    run = Run(config, RunFolder(Path("unused")))
    chosen = run.prompts(0)[:prompts]
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(config.model.tokenizer or config.model.path))
    model = AutoModelForCausalLM.from_pretrained(config.model.path, dtype=torch.float32).eval()
    started = time.perf_counter()
    drawn = sample(model, tokenizer, chosen, config.sampling)
    sampled = time.perf_counter() - started
    responses = [ids for per_prompt in drawn.response_ids for ids in per_prompt]

    judge = build_judge(config.judge)
    firsts, seconds = [texts[0] for texts in drawn.texts], [texts[1] for texts in drawn.texts]
    started = time.perf_counter()
    judge.prefer(drawn.prompts * 2, firsts + seconds, seconds + firsts)
    judged = time.perf_counter() - started

    sequences = [encode(tokenizer, prompt, ids) for prompt, per_prompt in zip(drawn.prompts, drawn.response_ids)
                 for ids in per_prompt]
    started = time.perf_counter()
    batched_logps(model, sequences, tokenizer.pad_token_id, config.training.batch_size,
                  share_prompts=config.training.share_prompts)
    forwarded = time.perf_counter() - started

    step = run.prox_steps(0)[-1]
    names = [name for name, weight in step.anchor.items() if weight]
    pairs = [(sequences[i], sequences[i + 1]) for i in range(0, len(sequences) - 1, 2)][:config.training.batch_size]
    rows = [TrainRow(a, dict.fromkeys(names, 0.0), 0.0, None if run.rule.pointwise else b,
                     {} if run.rule.pointwise else dict.fromkeys(names, 0.0)) for a, b in pairs]
    settings = config.training.model_copy(update={"epochs": 1, "gradient_accumulation": 1,
                                                  "batch_size": len(rows), "report_to": []})
    started = time.perf_counter()
    train(model.train(), rows, step, settings, pad_id=tokenizer.pad_token_id)
    trained = time.perf_counter() - started

    template = PAIRWISE_TEMPLATE if config.judge.template == "pairwise" else config.judge.template
    mean_new = sum(map(len, responses)) / len(responses)
    ask_tokens = (len(tokenizer(template)["input_ids"]) + 2 * mean_new
                  + sum(len(tokenizer(p)["input_ids"]) for p in chosen) / len(chosen))
    return ProbeRates(sampled / len(responses), judged / (2 * len(chosen)), forwarded / len(sequences), trained,
                      mean_new, ask_tokens)


def estimate_seconds(counts: IterationCounts, rates: ProbeRates) -> dict[str, float]:
    """Seconds per stage of one iteration at the probe's rates (evaluation included)."""
    return {"sample": (counts.sequences + counts.evaluation_sequences) * rates.seconds_per_sequence,
            "judge": (counts.judge_asks + counts.evaluation_asks) * rates.seconds_per_ask,
            "logprobs": counts.logprob_sequences * rates.seconds_per_logprob_sequence,
            "train": counts.optimiser_steps * rates.seconds_per_step}


def plan(config: RunConfig, measure: bool = True, price_per_million_input: float | None = None,
         price_per_million_output: float | None = None) -> dict:
    """Counts per iteration and in total; with ``measure``, the probe's rates and estimated times;
    with prices, the API judge's cost (input tokens per ask from the probe, one output token)."""
    counts = iteration_counts(config)
    totals = {key: sum(getattr(c, key) for c in counts) for key in asdict(counts[0]) if key != "iteration"}
    result = {"iterations": [asdict(c) for c in counts], "total": totals}
    if not measure:
        return result
    rates = probe(config)
    seconds = [estimate_seconds(c, rates) for c in counts]
    result["probe"] = asdict(rates)
    result["seconds"] = {"per_iteration": seconds,
                         "total": sum(sum(stage.values()) for stage in seconds)}
    if price_per_million_input is not None:
        asks = totals["judge_asks"] + totals["evaluation_asks"]
        result["judge_cost"] = {"asks": asks, "input_tokens": round(asks * rates.prompt_tokens),
                                "dollars": asks * (rates.prompt_tokens * price_per_million_input
                                                   + (price_per_million_output or 0.0)) / 1e6}
    return result
