"""How closely the pipeline's fits follow the tabular rule, per training budget of a fit.

The loop runs COMAL (optimistic inner steps) on the default testbed driven by the exact sampler
(every response with its expected count: no sampling noise), so the only difference from the
tabular rule is how well each fit reaches its step's target. After every iteration the network's
exact policy is compared with the tabular rule's (total variation, max over prompts). The steps of a
fit are full-batch AdamW steps, the learning rate warming up over ``--warmup-ratio`` of them, then decaying
linearly to 0 from ``--learning-rate``.

    python benchmarks/fit_accuracy.py [--steps 30 60 100] [--warmup-ratio 0 0.1] [--iterations 20] [--eta 0.5]

Saves ``benchmarks/results/fit_accuracy.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from comal.games import duality_gap
from comal.llm.loop import open_run
from comal.rules import CURRENT
from comal.testbed.demo import AlgorithmSettings, DemoSettings, quiet_libraries
from comal.testbed.space import ConstrainedLlama

RESULTS = Path(__file__).parent / "results" / "fit_accuracy.json"


def follow(steps: int, learning_rate: float, warmup_ratio: float, eta: float, iterations: int, folder: Path) -> dict:
    settings = DemoSettings(iterations=iterations, epochs=steps, learning_rate=learning_rate, warmup_ratio=warmup_ratio,
                            batch_size=10**6,
                            algorithms={"comal": AlgorithmSettings(inner="onpo", eta=eta, tau_eta_ratio=0.03,
                                                                   reference_period=67, tolerance=0.0)})
    testbed = settings.testbed()
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in testbed.prompts))
    run = open_run(settings.run_config("comal", folder / "prompts.jsonl", testbed.preference), folder / "run",
                   judge=testbed.judge(), model=testbed.initial_policy(0), tokenizer=testbed.tokenizer,
                   load_model=ConstrainedLlama.from_pretrained, sampler=testbed.exact_sampler())
    game = testbed.preference
    state = run.rule.init(np.log(testbed.exact_policy(ConstrainedLlama.from_pretrained(run.policy(0)))))
    started, distances = time.perf_counter(), []
    for t in range(iterations):
        run.iteration(t)
        state, _ = run.config.rule_at(t).update(game, state)
        network = testbed.exact_policy(ConstrainedLlama.from_pretrained(run.policy(t + 1)))
        distances.append(float(0.5 * np.abs(network - np.exp(state.policies[CURRENT])).sum(-1).max()))
    return {"steps": steps, "learning_rate": learning_rate, "warmup_ratio": warmup_ratio, "eta": eta, "total_variation": distances,
            "network_gap": duality_gap(game, network), "tabular_gap": duality_gap(game, np.exp(state.policies[CURRENT])),
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 60, 100])
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--warmup-ratio", type=float, nargs="+", default=[0.0, 0.1],
                        help="share of a fit's steps warming the rate up (0: AdamW's fresh first steps can undo a fit)")
    parser.add_argument("--eta", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    quiet_libraries()
    results = []
    for warmup_ratio, steps in itertools.product(args.warmup_ratio, args.steps):
        with tempfile.TemporaryDirectory() as folder:
            result = follow(steps, args.learning_rate, warmup_ratio, args.eta, args.iterations, Path(folder))
        results.append(result)
        print(f"warm-up {warmup_ratio:.2f}, {steps:>4} steps a fit: total variation to the tabular rule max {max(result['total_variation']):.4f}, "
              f"final {result['total_variation'][-1]:.4f}; gap {result['network_gap']:.4f} (tabular "
              f"{result['tabular_gap']:.4f}); {result['seconds']:.0f} s", flush=True)
    RESULTS.write_text(json.dumps({"iterations": args.iterations, "runs": results}, indent=1))
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
