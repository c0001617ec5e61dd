"""The demo on a small testbed: COMAL's exact gap falls at least 4× through the sampled pipeline
and ends below iterative IPO's; summary.json lets anyone recompute every gap."""

import json

import numpy as np
import pytest

from comal.games import duality_gap
from comal.testbed.demo import DemoSettings, algorithm_settings, run_demo

# 8 responses (2 tokens, length 3), one prompt; 20 iterations of 2,048 samples: ~20 s on 2 cores. With 512
# samples the last iterate's sampling noise (gaps of 0.04-0.35 from float-level changes) hid the trend.
SMALL = DemoSettings(tokens=2, length=3, prompts=1, game_seed=4, iterations=20, samples_per_prompt=2048,
                     algorithms=algorithm_settings(["comal", "iter-ipo"]))


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    seen = []
    summary = run_demo(SMALL, out, workers=1, report=lambda *update: seen.append(update))
    return out, summary, seen


def test_comal_gap_falls_fourfold_and_ends_below_iterative_ipo(small_demo):
    _, summary, _ = small_demo
    comal = summary["algorithms"]["comal"]["history"]["duality_gap"]
    iter_ipo = summary["algorithms"]["iter-ipo"]["history"]["duality_gap"]
    assert len(comal) == SMALL.iterations + 1 and comal[0] == pytest.approx(iter_ipo[0])  # same start network
    assert comal[-1] <= comal[0] / 4
    assert comal[-1] < iter_ipo[-1]


def test_summary_lets_anyone_recompute_every_gap(small_demo):
    out, _, seen = small_demo
    saved = json.loads((out / "summary.json").read_text())
    preference = np.array(saved["preference"])
    assert len(saved["responses"]) == preference.shape[-1] == 8 and saved["responses"][0] == "a a a"
    for result in saved["algorithms"].values():
        policy = np.array(result["policy"])
        np.testing.assert_allclose(policy.sum(-1), 1.0, atol=1e-9)
        assert result["duality_gap"] == pytest.approx(duality_gap(preference, policy), abs=1e-12)
        assert result["history"]["duality_gap"][-1] == result["duality_gap"]
        assert result["samples_drawn"] == SMALL.iterations * SMALL.samples_per_prompt  # one round an iteration
        assert set(result["history"]) == {"duality_gap", "kl_to_nash", "best_response_win_rate"}
    assert {(name, t) for name, t, _ in seen} == {(n, t) for n in ("comal", "iter-ipo") for t in range(21)}
    assert (out / "convergence.png").stat().st_size > 10_000 and (out / "policies.png").stat().st_size > 10_000
    assert (out / "comal" / "iter_019" / "fit_current" / "train" / "model").is_dir()  # the pipeline's own files
    comal = saved["algorithms"]["comal"]
    assert comal["reference_moves"] == [6, 12, 18] and comal["rule"]["inner"] == "inpo"  # K = 6


def test_a_rerun_resumes_from_the_saved_stages(small_demo):
    out, summary, _ = small_demo
    again = run_demo(SMALL, out, workers=1)
    for name in SMALL.algorithms:
        assert again["algorithms"][name]["history"] == summary["algorithms"][name]["history"]
