"""Evaluation: win rates between checkpoints on held-out prompts, judged in both orders.

One response per prompt per checkpoint (cached on disk); the win rate of A over B is the mean over
prompts of ``(P(a ≻ b) + 1 − P(b ≻ a)) / 2``, the soft score of the paper's evaluation, with a 95%
bootstrap interval over prompts and each order's figure beside it. Judge failures are left out and
counted. Lengths are in characters, as the official evaluation reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from comal.llm.judge import Judge, JudgeCache, cached_prefer
from comal.llm.progress import Advance, Bar, no_bar
from comal.llm.run_folder import write_atomically
from comal.llm.sample import Samples


def checkpoint_responses(folder: Path, prompts: Sequence[str], draw: Callable[[Sequence[str], Advance], Samples],
                         bar: Bar = no_bar) -> list:
    """One response per prompt (None where a prompt was skipped) from ``draw``, cached in ``folder``."""

    def write(temporary: Path):
        with bar("responses", len(prompts)) as advance:
            drawn = draw(prompts, advance)
        by_prompt = dict(zip(drawn.prompts, (texts[0] for texts in drawn.texts)))
        (temporary / "responses.json").write_text(json.dumps([by_prompt.get(p) for p in prompts]))

    write_atomically(folder, write)
    return json.loads((folder / "responses.json").read_text())


def win_rate(judge: Judge, prompts: Sequence[str], first: Sequence[str | None], second: Sequence[str | None],
             cache: JudgeCache | None = None, advance: Advance = lambda count: None) -> dict:
    """The soft win rate of ``first`` over ``second``, judged in both orders.

    ``win_rate``: the mean over prompts of ``(P(a ≻ b) + 1 − P(b ≻ a)) / 2``, with ``ci95``, its 95%
    bootstrap interval over prompts (BCa, scipy); ``listed_first`` and ``listed_second``: the same
    mean from one order only (``P(a ≻ b)`` and ``1 − P(b ≻ a)``), whose difference is the judge's
    position bias on these pairs; ``prompts``: the pairs judged; ``failures``: verdicts left out.
    """
    keep = [i for i, (a, b) in enumerate(zip(first, second)) if a is not None and b is not None]
    asks = [(prompts[i], first[i], second[i]) for i in keep] + [(prompts[i], second[i], first[i]) for i in keep]
    asked = cached_prefer(judge, asks, cache if cache is not None else JudgeCache(), advance)
    forward, backward = asked[:len(keep)], 1 - asked[len(keep):]
    both = np.stack([forward, backward])
    scores = np.nanmean(both[:, np.isfinite(both).any(axis=0)], axis=0)  # an order that failed is left out
    return {"win_rate": float(scores.mean()) if scores.size else float("nan"), "ci95": bootstrap_interval(scores),
            "listed_first": _mean(forward), "listed_second": _mean(backward), "prompts": int(scores.size),
            "failures": int(np.isnan(forward).sum() + np.isnan(backward).sum())}


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def bootstrap_interval(scores: np.ndarray, confidence: float = 0.95, seed: int = 0) -> list[float]:
    """The ``confidence`` bootstrap interval (BCa) of the mean of ``scores``; NaNs for fewer than 2
    distinct scores, where no interval can be estimated."""
    from scipy.stats import bootstrap

    if np.unique(scores).size < 2:
        return [float("nan"), float("nan")]
    result = bootstrap((scores,), np.mean, confidence_level=confidence, n_resamples=4000,
                       random_state=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def win_matrix(judge: Judge, prompts: Sequence[str], responses: Sequence[Sequence[str | None]],
               cache: JudgeCache) -> np.ndarray:
    """``M[i, j]``: win rate of checkpoint i over checkpoint j (``M + Mᵀ = 1``)."""
    matrix = np.full((len(responses), len(responses)), 0.5)
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            matrix[i, j] = win_rate(judge, prompts, responses[i], responses[j], cache)["win_rate"]
            matrix[j, i] = 1 - matrix[i, j]
    return matrix


def mean_length(responses: Sequence[str | None]) -> float:
    lengths = [len(r) for r in responses if r is not None]
    return float(np.mean(lengths)) if lengths else 0.0


def plot_win_matrix(matrix: np.ndarray, names: list[str], path: Path) -> None:
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
