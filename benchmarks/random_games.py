"""Last-iterate convergence on random intransitive games, against the LP: COMAL (default inner
mirror-prox, and the paper's INPO inner) next to ONPO and extragradient on the same budget.
Prints a table and saves JSON.

    python benchmarks/random_games.py                          # the README's figures
    python benchmarks/random_games.py --sizes 40 --seeds 0 1 --budget 20000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from comal.games import interior_nash, nash_lp, random_intransitive
from comal.rules import make_rule
from comal.tabular import run

console = Console(width=160)
CONTENDERS = {"comal": {}, "comal (inner inpo)": {"inner": "inpo"}, "onpo": {}, "extragradient": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "random_games.json")
    args = parser.parse_args()

    cases = [(f"intransitive-{n}", seed, random_intransitive(n, seed=seed))
             for n in args.sizes for seed in args.seeds]
    cases += [(f"interior-nash-{n}", n, interior_nash(n, seed=n)[0]) for n in (10, 11)]
    rows = []
    table = Table("game", "seed", "support", "rule", "evals/step", "final gap", "steps to 1e-3",
                  "steps to 1e-6", "KL(π*‖μ_k) non-increasing")
    for label, seed, game in cases:
        nash = nash_lp(game)
        n = game.shape[-1]
        for name, overrides in CONTENDERS.items():
            rule = make_rule(name.split()[0], game, **overrides)
            result = run(rule, game, np.full(n, 1 / n), args.budget, nash=nash, points=100)
            evaluations = rule.advantage_evaluations()
            monotone = bool(np.all(np.diff(result.reference_kl) <= 1e-9)) if result.reference_kl else None
            rows.append({"game": label, "seed": seed, "support": int((nash > 1e-9).sum()), "rule": name,
                         "evaluations_per_step": evaluations, "duality_gap": result.duality_gap,
                         "steps_to": {f"{t:g}": s for t, s in result.steps_to.items()},
                         "reference_moves": len(result.reference_kl), "reference_kl_non_increasing": monotone})
            steps = [("—" if s is None else f"{s:,}") for s in result.steps_to.values()]
            table.add_row(label, str(seed), str(rows[-1]["support"]), name, str(evaluations),
                          f"{result.duality_gap:.1e}", *steps, "" if monotone is None else str(monotone))
            console.print(f"{label} seed {seed} {name}: gap {result.duality_gap:.1e}", highlight=False)
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget": args.budget, "runs": rows}, indent=1))
    console.print(f"saved {args.out}")


if __name__ == "__main__":
    main()
