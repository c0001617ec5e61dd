"""Step sizes for ``comal length-game``, chosen the same way for every rule.

The length game's budget is small (``rounds`` rounds of ``samples`` responses per prompt), so a
rule's best η is the one whose *sampled* tabular rule ends closest to the Nash at that budget, not
its noise-free optimum. For each rule, every setting of its grid runs the tabular rule on the 3×3
game repeated once per prompt, from the paper's start ``[0.2, 0.5, 0.3]`` (what the calibration
aims at), driven by ``samples`` draws per prompt and round (a rule that samples twice an iteration
runs half the iterations), over ``seeds`` seeds; the setting with the lowest mean final gap wins.
COMAL's grid also spans ητ and the reference period K, so it gets the larger search; every
setting tried is saved, the losers too.

    python benchmarks/length_game_steps.py [--rounds 20] [--samples 4] [--prompts 16] [--seeds 16]

Saves ``benchmarks/results/length_game_steps.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from comal.games import duality_gap
from comal.games.generators import paper_3x3
from comal.rules import make_rule
from comal.tabular import run

RESULTS = Path(__file__).parent / "results" / "length_game_steps.json"
START = np.array([0.2, 0.5, 0.3])
ETAS = (0.125, 0.25, 0.5, 1.0, 2.0)
GRIDS = {
    "iter-ipo": [{"eta": eta} for eta in ETAS],
    "onpo": [{"eta": eta} for eta in ETAS],
    "comal": [{"eta": eta, "tau_eta_ratio": ratio, "reference_period": period, "inner": "inpo", "tolerance": 0.0}
              for eta, ratio, period in itertools.product((0.5, 1.0, 2.0, 4.0), (0.1, 0.3, 0.5), (2, 4, 6))],
}


def score(name: str, setting: dict, rounds: int, samples: int, prompts: int, seeds: int) -> dict:
    parameters = {"eta": setting["eta"]}
    if "tau_eta_ratio" in setting:
        parameters.update(tau=setting["tau_eta_ratio"] / setting["eta"], period=setting["reference_period"],
                          inner=setting["inner"], tolerance=setting["tolerance"])
    rule = make_rule(name, 0.5, **parameters)
    game = np.repeat(paper_3x3(), prompts, axis=0)
    iterations = max(1, rounds // len(rule.sampled_policies()))
    sampled = [run(rule, game, START, iterations, samples=samples, seed=seed).duality_gap for seed in range(seeds)]
    return {"setting": setting, "iterations": iterations, "sampled_gap": float(np.mean(sampled)),
            "sampled_gap_se": float(np.std(sampled, ddof=1) / np.sqrt(seeds)),
            "exact_gap": run(rule, game, START, iterations).duality_gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=16)
    args = parser.parse_args()
    started, results = time.perf_counter(), {}
    for name, grid in GRIDS.items():
        scores = sorted((score(name, setting, args.rounds, args.samples, args.prompts, args.seeds) for setting in grid),
                        key=lambda entry: entry["sampled_gap"])
        results[name] = {"best": scores[0], "all": scores}
        best = scores[0]
        print(f"{name:9s} best {best['setting']}: sampled gap {best['sampled_gap']:.3f} ± {best['sampled_gap_se']:.3f} "
              f"(noise-free {best['exact_gap']:.3f}; {len(grid)} settings tried)", flush=True)
    record = {"rounds": args.rounds, "samples_per_prompt": args.samples, "prompts": args.prompts, "seeds": args.seeds,
              "start": START.tolist(), "start_gap": duality_gap(paper_3x3(), START[None]),
              "seconds": time.perf_counter() - started, "rules": results}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=1))
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
