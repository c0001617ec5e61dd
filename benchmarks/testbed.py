"""The demo on the default testbed for several seeds, plus ONPO at a larger step.

Every run folder is the demo's own (resumable), so a rerun only recomputes what is missing.
Prints the table of final exact gaps and saves ``benchmarks/results/testbed.json``.

    python benchmarks/testbed.py [--seeds 0 1 2] [--onpo-eta 2.0] [--runs runs]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from comal.testbed.demo import MEASURES, AlgorithmSettings, DemoSettings, run_demo

RESULTS = Path(__file__).parent / "results" / "testbed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--onpo-eta", type=float, default=2.0, help="ONPO's step in the extra runs (0: none)")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    runs = {}
    for seed in args.seeds:
        summary = run_demo(DemoSettings(seed=seed), args.runs / f"demo-seed{seed}", workers=args.workers)
        runs[seed] = {name: {key: result[key] for key in (*MEASURES, "eta", "seconds")}
                      for name, result in summary["algorithms"].items()}
        runs[seed]["wall_seconds"] = summary["seconds"]
        if args.onpo_eta:
            extra = DemoSettings(seed=seed, algorithms={"onpo": AlgorithmSettings(eta=args.onpo_eta)})
            result = run_demo(extra, args.runs / f"demo-onpo{args.onpo_eta:g}-seed{seed}", workers=1)
            runs[seed][f"onpo η={args.onpo_eta:g}"] = {key: result["algorithms"]["onpo"][key]
                                                        for key in (*MEASURES, "eta", "seconds")}
    names = [name for name in runs[args.seeds[0]] if name != "wall_seconds"]
    table = {}
    print(f"{'algorithm':<14}{'η':>7}" + "".join(f"{'seed ' + str(s):>10}" for s in args.seeds) + f"{'mean':>9}")
    for name in names:
        gaps = [runs[seed][name]["duality_gap"] for seed in args.seeds]
        table[name] = {"eta": runs[args.seeds[0]][name]["eta"], "final_gap": gaps, "mean": float(np.mean(gaps)),
                       "kl_to_nash": [runs[seed][name]["kl_to_nash"] for seed in args.seeds]}
        print(f"{name:<14}{table[name]['eta']:>7.3g}" + "".join(f"{g:>10.4f}" for g in gaps)
              + f"{np.mean(gaps):>9.4f}")
    lowest = all(min((runs[s][n]["duality_gap"], n) for n in names)[1] == "comal" for s in args.seeds)
    print("comal lowest at every seed:", lowest)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                   "settings": DemoSettings().model_dump(), "table": table, "runs": runs,
                                   "comal_lowest_every_seed": lowest}, indent=1))
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
