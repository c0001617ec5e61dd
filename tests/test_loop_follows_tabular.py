"""The two forms of a rule are one rule: the LLM loop, driven by exact advantages, follows the
tabular rule on the testbed, iteration by iteration, reference moves included.

The testbed's exact sampler returns every response with its expected count under the checkpoint
(the limit of infinitely many samples), so the pairs stage's advantages are exact and the loss is
the population loss; what remains between the two trajectories is how well each fit of the
network reaches its step's target. The tabular run starts from the network's exact start policy
and applies ``rule.update`` with the same rule objects the loop executes (``config.rule_at(t)``).

Tolerances, at every iteration: 0.01 on the exact duality gap and 0.02 in total variation between
the network's policy and the tabular one. The fits (60 full-batch Adam steps from the policy they
replace) stay inside: measured deviations 0.0005–0.005 in gap and 0.0015–0.010 in total
variation for the pairwise forms, 0.008 / 0.010 for SPPO, whose pointwise form is exact only to
O(η²) (print them with ``-s``). Over the six iterations each rule moves its policy by 0.033–0.19
in total variation, so a loop that skipped or repeated a step, used a wrong anchor, sampled the
wrong policy or moved μ at another iteration leaves the band.
"""

import json

import numpy as np
import pytest

from comal.games import duality_gap
from comal.llm.loop import open_run
from comal.rules import CURRENT, RULES
from comal.testbed.demo import AlgorithmSettings, DemoSettings
from comal.testbed.space import ConstrainedLlama

ITERATIONS = 6
TESTBED = dict(tokens=3, length=2, prompts=1, game_seed=1)  # 9 responses; the LP Nash mixes 5
# every rule at its defaults for the game, plus COMAL's relative residual test (τ = L: the test
# fires at iterations 3 and 6, the ratio residual/distance 0.15–0.17 there and ≥ 0.35 one step
# before, clear of the 0.25 threshold) and MPO's magnet moved by its period
CASES = {name: AlgorithmSettings() for name in RULES}
CASES["comal (residual test)"] = AlgorithmSettings(tau_eta_ratio=1.0, tolerance=0.25)  # η = 1/L, τ = L
CASES["mpo (period 2)"] = AlgorithmSettings(reference_period=2)
# COMAL with optimistic inner steps (one round of samples an iteration, three kept policies) and η
# annealed from 2 to 0.5: each iteration's fits must use that iteration's η and τ
CASES["comal (onpo inner, eta annealed)"] = AlgorithmSettings(inner="onpo", eta=2.0, tau_eta_ratio=0.1, eta_final=0.5,
                                                              reference_period=2, tolerance=0.0)


@pytest.mark.parametrize("case", list(CASES))
def test_exact_advantages_make_the_loop_follow_the_tabular_rule(case, tmp_path):
    algorithm = case.split(" ")[0]
    settings = DemoSettings(**TESTBED, iterations=ITERATIONS, epochs=60, learning_rate=1e-2, batch_size=4096,
                            algorithms={algorithm: CASES[case]})
    testbed = settings.testbed()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": testbed.prompts[0]}) + "\n")
    run = open_run(settings.run_config(algorithm, prompts, testbed.preference), tmp_path / "run",
                   judge=testbed.judge(), model=testbed.initial_policy(0), tokenizer=testbed.tokenizer,
                   load_model=ConstrainedLlama.from_pretrained, sampler=testbed.exact_sampler())
    rule, game = run.rule, testbed.preference
    state = rule.init(np.log(testbed.exact_policy(ConstrainedLlama.from_pretrained(run.policy(0)))))
    network_gaps, tabular_gaps, tabular_moves, distances = [], [], [], []
    for t in range(ITERATIONS + 1):
        network = testbed.exact_policy(ConstrainedLlama.from_pretrained(run.policy(t)))
        tabular = np.exp(state.policies[CURRENT])
        network_gaps.append(duality_gap(game, network))
        tabular_gaps.append(duality_gap(game, tabular))
        distances.append(0.5 * np.abs(network - tabular).sum(-1).max())
        if t < ITERATIONS:
            run.iteration(t)
            following, _ = run.config.rule_at(t).update(game, state)
            if following.reference_updates > state.reference_updates:
                tabular_moves.append(t)
            state = following
    network_moves = [t for t in range(ITERATIONS) if run.reference_moved(t)]
    deviation = np.abs(np.array(network_gaps) - np.array(tabular_gaps))
    print(f"\n{case}: tabular {np.round(tabular_gaps, 4).tolist()}\n network {np.round(network_gaps, 4).tolist()}"
          f"\n max gap deviation {deviation.max():.4f}, total variation {max(distances):.4f}, "
          f"moves {tabular_moves} / {network_moves}")
    assert network_moves == tabular_moves
    assert deviation.max() <= 0.01 and max(distances) <= 0.02
    start = np.exp(rule.init(np.log(testbed.exact_policy(ConstrainedLlama.from_pretrained(run.policy(0))))).policies[CURRENT])
    moved = 0.5 * np.abs(np.exp(state.policies[CURRENT]) - start).sum(-1).max()
    print(f" the rule moved the policy by {moved:.3f} in total variation")
    assert moved > 0.02  # farther than the tolerance

