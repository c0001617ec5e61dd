"""Chosen settings of each rule through the real pipeline on the default testbed, for several seeds.

Every algorithm draws the same samples per prompt (``--rounds`` rounds of ``--samples``; a rule
that samples twice an iteration runs half the iterations). Settings: each rule's best configuration
in ``benchmarks/results/testbed_sweep.json`` (the sampled rule with perfect fits, 48
configurations each, chosen by the mean over 15 runs), unless ``--comal`` overrides COMAL's. Run folders are the demo's own
(resumable). Saves ``benchmarks/results/testbed.json``: per seed and algorithm the rule's
parameters, samples drawn, the exact gap per iteration and the final exact policy; once the
preference matrices and the LP Nash, so every gap can be recomputed without this project; and
``testbed.png``, the exact gap of every run against samples drawn.

    python benchmarks/testbed.py --algorithms comal onpo extragradient mpo --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from comal.testbed.demo import AlgorithmSettings, DemoSettings, run_demo

RESULTS = Path(__file__).parent / "results"


def sweep_settings(name: str) -> AlgorithmSettings:
    """The sweep's best configuration of ``name``, as the demo's settings."""
    best = json.loads((RESULTS / "testbed_sweep.json").read_text())["best"][name]["parameters"]
    eta = best.get("eta")
    return AlgorithmSettings(eta=eta, tau_eta_ratio=eta * best["tau"] if "tau" in best else None,
                             reference_period=best.get("period"), inner=best.get("inner"),
                             tolerance=best.get("tolerance"), eta_final=best.get("eta_final"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["comal", "extragradient", "mpo", "onpo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=400, help="rounds of sampling per algorithm")
    parser.add_argument("--samples", type=int, default=2048, help="samples per prompt and round")
    parser.add_argument("--epochs", type=int, default=100, help="full-batch AdamW steps per fit (30 leave fit errors "
                        "above the sampling noise: benchmarks/fit_accuracy.py)")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="share of a fit's steps warming the rate up "
                        "(0: AdamW's first steps from fresh moments can undo a converged fit)")
    parser.add_argument("--comal", type=json.loads, default=None,
                        help='COMAL\'s settings as JSON, e.g. \'{"eta": 2, "tau_eta_ratio": 0.1, "reference_period": 40, '
                             '"inner": "onpo", "tolerance": 0, "eta_final": 0.33}\'')
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "testbed.json")
    args = parser.parse_args()

    algorithms = {name: sweep_settings(name) for name in args.algorithms}
    if args.comal is not None:
        algorithms["comal"] = AlgorithmSettings(**args.comal)
    runs, summary = {}, None
    for seed in args.seeds:
        settings = DemoSettings(seed=seed, iterations=args.rounds, samples_per_prompt=args.samples, epochs=args.epochs,
                                learning_rate=args.learning_rate,
                                warmup_ratio=args.warmup_ratio, batch_size=1_000_000, algorithms=algorithms)
        summary = run_demo(settings, args.runs / f"testbed-{args.rounds}x{args.samples}-seed{seed}",
                           workers=args.workers)
        runs[seed] = {name: {key: result[key] for key in ("rule", "samples_drawn", "reference_moves", "duality_gap",
                                                          "kl_to_nash", "history", "policy", "seconds")}
                      for name, result in summary["algorithms"].items()}
    table = {}
    print(f"{'algorithm':<14}" + "".join(f"{'seed ' + str(s):>10}" for s in args.seeds) + f"{'mean':>9}")
    for name in algorithms:
        gaps = [runs[seed][name]["duality_gap"] for seed in args.seeds]
        table[name] = {"final_gap": gaps, "mean": float(np.mean(gaps)), "settings": algorithms[name].model_dump()}
        print(f"{name:<14}" + "".join(f"{g:>10.4f}" for g in gaps) + f"{np.mean(gaps):>9.4f}")
    lowest = {seed: min(runs[seed], key=lambda name: runs[seed][name]["duality_gap"]) for seed in args.seeds}
    print("lowest per seed:", lowest)
    args.out.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "rounds": args.rounds, "samples_per_round": args.samples,
        "training": {"epochs": args.epochs, "learning_rate": args.learning_rate,
                     "warmup_ratio": args.warmup_ratio, "batch": "full"},
        "preference": summary["preference"], "nash": summary["nash"], "prompts": summary["prompts"],
        "responses": summary["responses"], "table": table, "lowest_per_seed": lowest, "runs": runs}, indent=1))
    plot(runs, args.samples, args.out.with_suffix(".png"))
    print(f"saved {args.out} and its plot")


def plot(runs: dict, samples: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.6))
    names = list(next(iter(runs.values())))
    for index, name in enumerate(names):
        for k, seed in enumerate(runs):
            result = runs[seed][name]
            gaps = np.array(result["history"]["duality_gap"])
            drawn = np.linspace(0, result["samples_drawn"], len(gaps)) / 1e3
            axis.plot(drawn, gaps, color=f"C{index}", lw=2.2 if name == "comal" else 1.1, alpha=0.9,
                      label=name if k == 0 else None)
    axis.set_yscale("log")
    axis.set_xlabel("thousand samples drawn per prompt")
    axis.set_ylabel("exact duality gap of the network")
    axis.set_title(f"Testbed, real pipeline, {samples:,} samples a round; seeds {', '.join(map(str, runs))}")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
