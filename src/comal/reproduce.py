"""The papers' synthetic study: every rule on COMAL's 3×3 game and on a random intransitive game.

Writes the simplex trajectories and the convergence curves (PNG), the figures as JSON and CSV,
and returns the rows of the summary table (last iterate: final gap, KL to Nash, steps to 1e-3
and 1e-6, converged).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from comal.games import nash_lp, paper_3x3, random_intransitive
from comal.rules import RULES, make_rule
from comal.tabular import THRESHOLDS, RunResult, run

PAPER_START = np.array([0.2, 0.5, 0.3])
CONVERGED = 1e-6  # a last iterate with a gap at most this counts as converged


@dataclass(frozen=True)
class Study:
    """One game of the study and its budget."""

    label: str
    game: np.ndarray
    start: np.ndarray
    iterations: int


def default_studies(size: int = 50, seed: int = 0, iterations_3x3: int = 5_000,
                    iterations_random: int = 30_000) -> list[Study]:
    """COMAL's 3×3 game from [0.2, 0.5, 0.3], and a random intransitive game from uniform."""
    game = random_intransitive(size, seed=seed)
    return [Study("3x3", paper_3x3(), PAPER_START, iterations_3x3),
            Study(f"intransitive-{size}", game, np.full(size, 1 / size), iterations_random)]


def run_study(studies: list[Study], out: Path, *, rules=tuple(RULES),
              on_step: Callable[[str, int], None] | None = None) -> list[dict]:
    """Run ``rules`` on every study, save plots/JSON/CSV under ``out`` and return the table rows."""
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, RunResult]] = {}
    rows = []
    for study in studies:
        nash = nash_lp(study.game)
        results[study.label] = {}
        for name in rules:
            rule = make_rule(name, study.game)
            step = (lambda t, key=f"{study.label} {name}": on_step(key, t)) if on_step else None
            result = run(rule, study.game, study.start, study.iterations, nash=nash,
                         keep_trajectory=study.game.shape[-1] == 3, on_step=step)
            results[study.label][name] = result
            rows.append({"game": study.label, "algorithm": name, "eta": rule.eta, "tau": rule.tau,
                         "iterations": study.iterations, "evaluations_per_step": rule.advantage_evaluations(),
                         "duality_gap": result.duality_gap, "kl_to_nash": result.kl_to_nash,
                         **{f"steps_to_{t:g}": result.steps_to[t] for t in THRESHOLDS},
                         "converged": result.duality_gap <= CONVERGED})
    _write_tables(rows, results, out)
    plot_trajectories(results["3x3"], paper_3x3(), out / "trajectories_3x3.png")
    plot_convergence(results, out / "convergence.png")
    return rows


def _write_tables(rows: list[dict], results: dict, out: Path) -> None:
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    payload = {"summary": rows,
               "runs": {game: {name: r.to_json() for name, r in runs.items()} for game, runs in results.items()}}
    (out / "results.json").write_text(json.dumps(payload, indent=1))


def to_plane(policies: np.ndarray) -> np.ndarray:
    """Barycentric coordinates on the triangle with corners a (left), b (right), c (top)."""
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    return policies @ corners


def plot_trajectories(runs: dict[str, RunResult], game: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nash = to_plane(nash_lp(game)[0])
    columns = 4
    rows = -(-len(runs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.7 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(runs):]:
        axis.axis("off")
    for axis, (name, result) in zip(axes.flat, runs.items()):
        path_xy = to_plane(result.trajectory[:, 0])
        axis.fill(*to_plane(np.eye(3)).T, color="#f4f4f4", edgecolor="#888")
        axis.plot(*path_xy.T, lw=1, color="tab:blue")
        axis.plot(*path_xy[0], "o", color="tab:green", label="start [0.2, 0.5, 0.3]")
        axis.plot(*path_xy[-1], "s", color="tab:red", label="last iterate")
        axis.plot(*nash, "*", ms=14, color="gold", mec="k", label="Nash [4/11, 3/11, 4/11]")
        for label, xy in zip("abc", to_plane(np.eye(3))):
            axis.annotate(label, xy, xytext=(0, 4), textcoords="offset points", ha="center")
        axis.set_title(f"{name}  (gap {result.duality_gap:.1e})", fontsize=10)
        axis.set_aspect("equal")
        axis.axis("off")
    axes.flat[0].legend(loc="upper left", fontsize=7, bbox_to_anchor=(-0.05, 1.02))
    figure.suptitle(f"Last iterates on COMAL's 3×3 game, {len(result.history) and result.history[-1]['iteration']} iterations")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_convergence(results: dict[str, dict[str, RunResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8))
    for axis, (label, runs) in zip(np.atleast_1d(axes), results.items()):
        for index, (name, result) in enumerate(runs.items()):
            iterations = [h["iteration"] for h in result.history]
            gaps = np.maximum([h["duality_gap"] for h in result.history], 1e-16)
            axis.plot(iterations, gaps, label=name, lw=2.4 if name == "comal" else 1.3,
                      ls="-" if name == "comal" else ("-", "--", ":")[index % 3], color=f"C{index}")
        axis.set_yscale("log")
        axis.set_ylim(1e-16, 2)
        axis.set_xlabel("iteration")
        axis.set_ylabel("duality gap of the last iterate")
        axis.set_title(f"{label} (mwu, sppo and iter-ipo share one population rule)", fontsize=10)
        axis.grid(alpha=0.3, which="both")
    np.atleast_1d(axes)[-1].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
