"""Every rule's step sizes swept on the default testbed game, at one budget of samples per prompt.

The sampled rule with perfect fits (``comal.tabular.run(samples=k)``: every advantage estimated
from k draws per prompt exactly as the LLM loop estimates it, each step applied exactly): seconds a
run, so each rule gets the same effort: 12 configurations of its own parameters, each with η
constant or decaying geometrically to η/4, η/12 or η/20 over the run (ητ held), 48 in all, each from the
start network of seeds 0, 1 and 2 with ``--draws`` independent sampling seeds each (``seed + 1000·draw``;
draw 0 is sampling seeded like the start). A rule that samples two policies an iteration
(mirror-prox, COMAL with it, Nash-MD) gets half the iterations. Every run is saved; the table prints
each rule's best configuration by mean final gap (last iterate) over all its runs. Several draws
per start matter: the final iterate sits at a sampling-noise floor (±0.0025 for COMAL's best), so
the best of 48 configurations on one draw each picks lucky draws and promises less than a fresh
run gives (COMAL: 0.0062 on one draw per seed, 0.0087 on fifteen).

    python benchmarks/testbed_sweep.py [--budget 819200] [--samples 2048] [--draws 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from rich.progress import track

from comal.games import payoff_scale
from comal.rules import RULES, make_rule
from comal.tabular import run
from comal.testbed.demo import DemoSettings

RESULTS = Path(__file__).parent / "results" / "testbed_sweep.json"
SEEDS = (0, 1, 2)


ETA_DECAYS = (None, 4, 12, 20)  # η constant, or η_final = η/4, η/12, η/20


def grid(name: str, scale: float) -> list[dict]:
    """48 configurations per rule: 12 of the parameters the rule has, around its defaults for the
    game, each under every η schedule of :data:`ETA_DECAYS`."""
    return [{**parameters, "eta_final": None if decay is None else parameters["eta"] / decay}
            for parameters in rule_grid(name, scale) for decay in ETA_DECAYS]


def rule_grid(name: str, scale: float) -> list[dict]:
    """12 configurations of the parameters the rule has, around its defaults for the game."""
    step = [f / scale for f in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)]
    if name in ("mwu", "sppo", "iter-ipo", "ipo", "onpo"):
        return [{"eta": eta} for eta in step]
    if name in ("inpo", "nash-md"):  # ητ ≤ 1
        return [{"eta": eta, "tau": tau} for eta, tau in itertools.product(
            (1 / scale, 2 / scale, 4 / scale, 6 / scale), (scale / 40, scale / 12, scale / 6))]
    if name in ("mmd", "extragradient"):
        return [{"eta": eta, "tau": tau} for eta, tau in itertools.product(
            (0.5 / scale, 1 / scale, 2 / scale, 4 / scale), (0.0 if name == "extragradient" else scale / 100,
                                                             scale / 30, scale / 10))]
    if name == "mpo":
        return [{"eta": eta, "tau": tau, "period": period} for eta, tau, period in itertools.product(
            (1 / scale, 4 / scale), (scale / 10, scale), (10, 40, 100))]
    if name == "comal":  # mirror-prox or optimistic inner steps; μ moved every K ≈ 2/(ητ) steps (by the period)
        return [{"inner": inner, "tolerance": 0.0, "eta": eta, "tau": ratio / eta, "period": round(2 / ratio)}
                for inner, eta, ratio in itertools.product(("extragradient", "onpo"), (1 / scale, 2 / scale),
                                                           (0.015, 0.03, 0.1))]
    raise ValueError(f"no sweep grid for '{name}': add one here")


def one_run(job) -> dict:
    name, parameters, budget, samples, seed, draw = job
    settings = DemoSettings(seed=seed)
    testbed = settings.testbed()
    start = testbed.exact_policy(testbed.initial_policy(seed))
    rule_parameters = {key: value for key, value in parameters.items() if key != "eta_final"}
    rule = make_rule(name, testbed.preference, **rule_parameters)
    rounds = len(rule.sampled_policies())
    iterations = budget // (samples * rounds)
    result = run(rule, testbed.preference, start, iterations, samples=samples, seed=seed + 1000 * draw, points=50,
                 eta_final=parameters["eta_final"])
    return {"algorithm": name, "parameters": parameters, "seed": seed, "draw": draw, "iterations": iterations,
            "samples_drawn": iterations * rounds * samples, "duality_gap": result.duality_gap,
            "gap_history": [[h["iteration"], h["duality_gap"]] for h in result.history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=819_200, help="samples per prompt per run")
    parser.add_argument("--samples", type=int, default=2048, help="samples per prompt per round")
    parser.add_argument("--draws", type=int, default=5, help="sampling seeds per start network")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    scale = payoff_scale(DemoSettings().testbed().preference)
    jobs = [(name, parameters, args.budget, args.samples, seed, draw)
            for name in RULES for parameters in grid(name, scale) for seed in SEEDS for draw in range(args.draws)]
    with Pool(args.workers) as pool:
        runs = list(track(pool.imap(one_run, jobs, chunksize=8), total=len(jobs), description="sweep runs"))
    best = {}
    for name in RULES:
        configurations = {}
        for entry in (r for r in runs if r["algorithm"] == name):
            configurations.setdefault(json.dumps(entry["parameters"], sort_keys=True), []).append(entry["duality_gap"])
        key, gaps = min(configurations.items(), key=lambda item: np.mean(item[1]))
        per_seed = np.reshape(gaps, (len(SEEDS), args.draws)).mean(axis=1)
        best[name] = {"parameters": json.loads(key), "final_gap": gaps, "mean": float(np.mean(gaps)),
                      "sd": float(np.std(gaps)), "mean_per_seed": per_seed.tolist()}
    print(f"budget {args.budget:,} samples per prompt, {args.samples:,} per round; best of {len(ETA_DECAYS) * 12} "
          f"configurations each, {len(SEEDS) * args.draws} runs a configuration")
    for name, entry in sorted(best.items(), key=lambda item: item[1]["mean"]):
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in entry["parameters"].items()}
        print(f"{name:<14}{entry['mean']:>8.4f} ± {entry['sd']:.4f}  per seed {np.round(entry['mean_per_seed'], 4).tolist()}  {shown}")
    lowest = min(best, key=lambda name: best[name]["mean"])
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"budget": args.budget, "samples_per_round": args.samples, "payoff_scale": scale,
                                   "seeds": SEEDS, "draws": args.draws, "best": best, "lowest": lowest, "runs": runs}))
    print(f"lowest mean: {lowest}; saved {RESULTS}")


if __name__ == "__main__":
    main()
