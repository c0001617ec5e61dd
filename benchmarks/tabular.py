"""Tabular speed: seconds per iteration of every rule next to one bare mat-vec ``P @ π``, and
COMAL's time to a duality gap of 1e-6 (or its gap in the LP's time) next to the LP's time. Prints a table and saves JSON.

    python benchmarks/tabular.py                       # the README's figures
    python benchmarks/tabular.py --sizes 10 100 --lp-sizes 300 --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from comal.games import duality_gap, gap_from_advantage, nash_lp, random_intransitive
from comal.rules import RULES, make_rule

console = Console(width=160)


def seconds(function, repeat: int) -> float:
    """Median wall time of ``function()`` over ``repeat`` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def per_iteration(sizes: list[int], prompts: int) -> list[dict]:
    rows = []
    for n in sizes:
        game = random_intransitive(n, prompts, seed=0)
        policy = np.full((prompts, n), 1 / n)
        repeat = max(5, min(200, int(2e8 / (prompts * n * n))))
        matvec = seconds(lambda: np.matmul(game, policy[..., None]), repeat)
        row = {"n": n, "prompts": prompts, "matvec_s": matvec, "rules": {}}
        for name in RULES:
            rule = make_rule(name, game)
            state = rule.init(np.log(policy))

            def step():
                nonlocal state
                state, _ = rule.update(game, state)

            row["rules"][name] = seconds(step, repeat)
        rows.append(row)
        console.print(f"n={n:>6}: mat-vec {matvec * 1e3:.3f} ms; "
                      + ", ".join(f"{k} {v / matvec:.1f}×" for k, v in row["rules"].items()))
    return rows


def comal_vs_lp(sizes: list[int], cap_seconds: float) -> list[dict]:
    """The LP's time, then COMAL (defaults, uniform start) on the same clock: its time to a gap of
    1e-6, or the gap it holds when the LP's time (at least ``cap_seconds``) runs out."""
    rows = []
    for n in sizes:
        game = random_intransitive(n, seed=0)
        start = time.perf_counter()
        nash = nash_lp(game)
        lp_seconds = time.perf_counter() - start
        rule = make_rule("comal", game)
        state = rule.init(np.log(np.full((1, n), 1 / n)))
        iterations, gap, start = 0, 1.0, time.perf_counter()
        while gap > 1e-6 and time.perf_counter() - start < max(lp_seconds, cap_seconds):
            state, advantages = rule.update(game, state)
            gap, iterations = float(gap_from_advantage(advantages["current"]).mean()), iterations + 1
        comal_seconds = time.perf_counter() - start
        rows.append({"n": n, "lp_s": lp_seconds, "lp_gap": duality_gap(game, nash), "comal_s": comal_seconds,
                     "comal_iterations": iterations, "comal_gap": gap, "comal_reached_1e-6": gap <= 1e-6})
        console.print(f"n={n}: LP {lp_seconds:.1f} s (gap {rows[-1]['lp_gap']:.1e}); comal "
                      f"{'reached 1e-6 in' if gap <= 1e-6 else f'holds gap {gap:.1e} after'} "
                      f"{comal_seconds:.1f} s ({iterations} iterations)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000, 3000, 10000])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--lp-sizes", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--cap", type=float, default=30.0, help="COMAL's minimum seconds (it gets the LP's time)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tabular.json")
    args = parser.parse_args()

    iteration_rows = per_iteration(args.sizes, args.prompts)
    table = Table("n", "prompts", "mat-vec ms", *RULES, title="seconds per iteration ÷ one mat-vec P @ π")
    for row in iteration_rows:
        table.add_row(str(row["n"]), str(row["prompts"]), f"{row['matvec_s'] * 1e3:.3f}",
                      *(f"{row['rules'][name] / row['matvec_s']:.2f}" for name in RULES))
    console.print(table)
    lp_rows = comal_vs_lp(args.lp_sizes, args.cap)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"processor": platform.processor() or platform.machine(),
                                                "python": platform.python_version(),
                                                "numpy": np.__version__},
                                    "per_iteration": iteration_rows, "comal_vs_lp": lp_rows}, indent=1))
    console.print(f"saved {args.out}")


if __name__ == "__main__":
    main()
