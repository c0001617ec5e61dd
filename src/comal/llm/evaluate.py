"""Evaluation: win rates between checkpoints on held-out prompts, judged in both orders.

One response per prompt per checkpoint (cached under ``<run>/eval/responses``); the win rate of
A over B is the mean over prompts of ``(P(a ≻ b) + 1 − P(b ≻ a)) / 2``, the soft score of the
paper's evaluation. Judge failures are left out and counted. Lengths are in characters, as the
official evaluation reports them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from comal.llm.judge import Judge, JudgeCache, cached_prefer
from comal.llm.sample import sample


def checkpoint_responses(pipeline, checkpoint: Path, prompts: Sequence[str]) -> list[str]:
    """One sampled response per prompt from ``checkpoint`` (cached, seeded by the run's seed)."""
    label = checkpoint.relative_to(pipeline.run_dir).as_posix().replace("/", "__")
    folder = pipeline.run_dir / "eval" / "responses" / label

    def write(temporary: Path):
        settings = pipeline.config.sampling.model_copy(update={"samples_per_prompt": 1,
                                                               "seed": pipeline.config.seed + 7_919})
        drawn = sample(pipeline.load_model(checkpoint), pipeline.tokenizer, prompts, settings)
        by_prompt = dict(zip(drawn.prompts, (texts[0] for texts in drawn.texts)))
        (temporary / "responses.json").write_text(json.dumps([by_prompt.get(p) for p in prompts]))

    pipeline.write_stage(folder, write)
    return json.loads((folder / "responses.json").read_text())


def win_rate(judge: Judge, prompts: Sequence[str], first: Sequence[str | None], second: Sequence[str | None],
             cache: JudgeCache | None = None) -> tuple[float, int]:
    """Mean soft score of ``first`` over ``second`` (both orders) and the number of judge failures."""
    keep = [i for i, (a, b) in enumerate(zip(first, second)) if a is not None and b is not None]
    asks = [(prompts[i], first[i], second[i]) for i in keep] + [(prompts[i], second[i], first[i]) for i in keep]
    asked = cached_prefer(judge, asks, cache if cache is not None else JudgeCache())
    forward, backward = asked[:len(keep)], asked[len(keep):]
    scores = np.nanmean(np.stack([forward, 1 - backward]), axis=0)
    failures = int(np.isnan(forward).sum() + np.isnan(backward).sum())
    return (float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")), failures


def mean_length(responses: Sequence[str | None]) -> float:
    lengths = [len(r) for r in responses if r is not None]
    return float(np.mean(lengths)) if lengths else 0.0
