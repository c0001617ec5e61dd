"""``comal demo``: every algorithm through the real LLM pipeline on the testbed, scored exactly.

Each algorithm (any rule of :data:`comal.rules.RULES`) gets the same testbed, start network and
budget of samples: ``samples_per_prompt`` responses per prompt in every round of sampling and
``iterations`` rounds, so a rule that samples two policies an iteration (mirror-prox, COMAL with
it as inner rule, Nash-MD) runs half as many iterations; the summary records ``samples_drawn``.
Each runs the ordinary loop of :mod:`comal.llm.loop` in its own run folder (resumable). After every iteration the exact distribution of the network is enumerated and its
duality gap, KL to the Nash and best-response win rate recorded. Algorithms run in parallel worker
processes, one CPU thread each.

Outputs under the demo folder: ``<algorithm>/`` (the pipeline's run folder), ``summary.json``
(per algorithm: settings, final measures, ``history`` per iteration, final ``policy``; once:
``preference``, ``nash``, ``responses``, ``prompts``), ``convergence.png`` and ``policies.png``.
Beyond :data:`~comal.testbed.game.LP_LIMIT` responses the Nash is not solved (``nash`` and the KL
are None), ``preference`` names ``preference.npy`` instead of holding the matrices, and the bar
plot of the policies (readable up to 64 responses) is left out.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from queue import Empty

import numpy as np
from pydantic import BaseModel, Field, model_validator

from comal.rules import RULES, Rule, make_rule
from comal.settings import STRICT, Seed
from comal.testbed import check_testbed_shape

MEASURES = ("duality_gap", "kl_to_nash", "best_response_win_rate")


class AlgorithmSettings(BaseModel):
    """A rule's parameters on the testbed; each left None takes the rule's default for the game."""

    model_config = STRICT

    eta: float | None = Field(None, gt=0, description="η")
    tau_eta_ratio: float | None = Field(None, ge=0, le=1, description="ητ, the weight on the reference")
    reference_period: int | None = Field(None, ge=1, description="μ ← π_t every this many iterations")
    inner: str | None = Field(None, description="comal: the inner rule")
    tolerance: float | None = Field(None, ge=0, lt=1, description="comal: relative residual test (0: period only)")
    eta_final: float | None = Field(None, gt=0, description="η decays geometrically to this over the run, ητ held")

    def rule(self, algorithm: str, preference: np.ndarray) -> Rule:
        overrides = {key: value for key, value in (("eta", self.eta), ("period", self.reference_period),
                                                    ("inner", self.inner), ("tolerance", self.tolerance))
                     if value is not None}
        if self.tau_eta_ratio is not None:
            overrides["tau"] = self.tau_eta_ratio / (self.eta or make_rule(algorithm, preference).eta)
        return make_rule(algorithm, preference, **overrides)


# COMAL: the paper's recipe (INPO inner steps, the reference moved every K iterations). INPO: the
# same η and ητ with the reference fixed, so the pair isolates the reference moves. ONPO,
# iterative IPO and SPPO: the η their rules choose for the game's payoff scale L (make_rule: 0.5/L
# for ONPO, 0.1/L for the MWU family), as in `comal game reproduce`. Any other rule runs with its
# defaults for the game (`comal demo --algorithms`).
DEFAULT_ALGORITHMS = {
    "comal": AlgorithmSettings(eta=3.0, tau_eta_ratio=0.5, reference_period=6, inner="inpo", tolerance=0.0),
    "inpo": AlgorithmSettings(eta=3.0, tau_eta_ratio=0.5),
    "onpo": AlgorithmSettings(),
    "iter-ipo": AlgorithmSettings(),
    "sppo": AlgorithmSettings(),
    "nash-md": AlgorithmSettings(),
    "mpo": AlgorithmSettings(),
    "extragradient": AlgorithmSettings(),
    "mmd": AlgorithmSettings(),
}
assert set(DEFAULT_ALGORITHMS) <= set(RULES)


def algorithm_settings(names: Iterable[str]) -> dict[str, AlgorithmSettings]:
    """The demo's settings for each named rule: tuned where the demo has them, else the rule's defaults."""
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise ValueError(f"unknown algorithm {', '.join(unknown)}; choose from {', '.join(RULES)}")
    return {name: DEFAULT_ALGORITHMS.get(name, AlgorithmSettings()) for name in names}


class DemoSettings(BaseModel):
    """The testbed, the shared budget and the algorithms of a demo run."""

    model_config = STRICT

    tokens: int = Field(4, ge=2, description="content tokens; responses are all tokens**length sequences")
    length: int = Field(2, ge=1, description="content tokens per response (then EOS)")
    prompts: int = Field(2, ge=1)
    game: str = "intransitive"
    game_options: dict = Field(default_factory=lambda: {"rank": 2, "scale": 4.0})
    game_seed: Seed = 0
    seed: Seed = Field(0, description="start network, sampling and training")
    iterations: int = Field(50, ge=1, le=10**6, description="rounds of sampling per algorithm (iterations of a "
                            "one-round rule)")
    samples_per_prompt: int = Field(16384, ge=2, le=2**31 - 1)
    epochs: int = Field(20, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of a fit's steps warming the rate up from 0: "
                                "AdamW's first steps from fresh moments move every weight by about the full rate")
    batch_size: int = Field(64, ge=1)
    algorithms: dict[str, AlgorithmSettings] = Field(default_factory=lambda: dict(DEFAULT_ALGORITHMS))

    @model_validator(mode="after")
    def _buildable(self):
        check_testbed_shape(self.tokens, self.length, self.prompts)
        return self

    def testbed_identity(self) -> dict:
        """The settings that make the testbed (its prompts, responses and game)."""
        return self.model_dump(include={"tokens", "length", "prompts", "game", "game_options", "game_seed"})

    def testbed(self):
        from comal.testbed.game import make_testbed

        return make_testbed(tokens=self.tokens, length=self.length, prompts=self.prompts, game=self.game,
                            seed=self.game_seed, **self.game_options)

    def rule(self, algorithm: str, preference: np.ndarray) -> Rule:
        return self.algorithms[algorithm].rule(algorithm, preference)

    def run_config(self, algorithm: str, prompts_file: Path, preference: np.ndarray):
        """The pipeline configuration of one algorithm: the rule's parameters resolved for the testbed's
        game and written out in full; the model and judge come from the testbed."""
        from comal.llm.config import RunConfig

        rule = self.rule(algorithm, preference)
        iterations = max(1, self.iterations // len(rule.sampled_policies()))  # the same samples for every rule
        parameters = {"eta": rule.eta, "tau_eta_ratio": rule.eta * rule.tau if rule.uses_tau else None,
                      "reference_period": getattr(rule, "period", None), "inner": getattr(rule, "inner", None),
                      "tolerance": getattr(rule, "tolerance", None), "eta_final": self.algorithms[algorithm].eta_final}
        return RunConfig.model_validate({
            "model": {"path": "testbed"}, "judge": {"path": "testbed"}, "prompts": str(Path(prompts_file).resolve()),
            "algorithm": algorithm, "iterations": iterations, "rows": "soft",
            **{key: value for key, value in parameters.items() if value is not None},
            "sampling": {"samples_per_prompt": self.samples_per_prompt, "max_new_tokens": self.length + 1,
                         "temperature": 1.0, "top_p": 1.0},  # sample π itself: â estimates a_π
            "training": {"epochs": self.epochs, "learning_rate": self.learning_rate, "batch_size": self.batch_size,
                         "warmup_ratio": self.warmup_ratio, "mixed_precision": "no"},
            "seed": self.seed})


def run_algorithm(algorithm: str, settings: DemoSettings, out: Path,
                  report: Callable[[str, int, float], None] | None = None) -> dict:
    """Run one algorithm for its share of the budget; its exact measures per iteration."""
    from dataclasses import asdict

    from comal.llm.loop import open_run
    from comal.llm.stages import cached_loader
    from comal.testbed.space import ConstrainedLlama

    testbed = settings.testbed()
    config = settings.run_config(algorithm, out / "prompts.jsonl", testbed.preference)
    load = cached_loader(ConstrainedLlama.from_pretrained)  # tiny models: each checkpoint is read from disk once
    run = open_run(config, out / algorithm, judge=testbed.judge(), model=testbed.initial_policy(settings.seed),
                   tokenizer=testbed.tokenizer, load_model=load, defines={"testbed": settings.testbed_identity()})
    started = time.perf_counter()
    history = {name: [] for name in MEASURES}
    for t in range(config.iterations + 1):
        if t > 0:
            run.iteration(t - 1)
        policy = testbed.exact_policy(load(run.policy(t)))
        measured = testbed.measures(policy)
        for name in MEASURES:
            history[name].append(measured[name])
        if report is not None:
            report(algorithm, t * len(run.rule.sampled_policies()), measured["duality_gap"])
    rounds = len(run.rule.sampled_policies())
    return {"rule": asdict(run.rule), "eta_final": config.eta_final, "rounds_per_iteration": rounds,
            "samples_drawn": config.iterations * rounds * settings.samples_per_prompt,
            "reference_moves": [t for t in range(config.iterations) if run.reference_moved(t)],
            **{name: history[name][-1] for name in MEASURES},
            "history": history, "policy": policy.tolist(), "seconds": time.perf_counter() - started}


def quiet_libraries() -> None:
    """The demo shows its own progress: no per-save bars from transformers and datasets."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


_progress_queue = None  # a worker's: where its measures go to the demo's process


def _start_worker(queue, parent: int) -> None:
    """A demo worker: it dies with the demo's process (so a killed demo leaves no worker behind that
    would go on holding its run folder), runs one CPU thread (tiny models gain nothing from more),
    and reports its measures to ``queue``."""
    import ctypes
    import signal
    import sys

    import torch

    global _progress_queue
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the demo died before the line above
            os._exit(1)
    _progress_queue = queue
    torch.set_num_threads(1)
    quiet_libraries()


def _run_in_worker(algorithm: str, settings: DemoSettings, out: Path) -> dict:
    return run_algorithm(algorithm, settings, out, lambda *update: _progress_queue.put(update))


def check_demo_folder(settings: DemoSettings, out: Path) -> None:
    """Refuse, before anything is written, a demo folder that holds another testbed, or an algorithm's
    run with other settings (the one that differs named); a folder a running demo holds is refused
    when the demo locks it."""
    from comal.llm.config import RunConfig
    from comal.llm.run_folder import RunError, RunFolder, differences

    RunFolder(out).check_root()
    recorded = out / "testbed.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != settings.testbed_identity():
        changed = differences(json.loads(recorded.read_text()), settings.testbed_identity())
        raise RunError(f"{out} holds a demo of another testbed ({changed}); choose a new --out, or give that "
                       "testbed's options")
    prompts = out / "prompts.jsonl"
    if not prompts.is_file():
        return  # no algorithm has run here: its stages would have needed the prompts
    testbed = settings.testbed()
    defines = {"testbed": settings.testbed_identity()}
    for algorithm in settings.algorithms:
        config = settings.run_config(algorithm, prompts, testbed.preference)
        RunFolder(out / algorithm).refuse_other(config.identity(None, defines),
                                                lambda saved: RunConfig.model_validate_json(saved).identity(None, defines))


def run_demo(settings: DemoSettings, out: Path, *, workers: int = 2,
             report: Callable[[str, int, float], None] | None = None) -> dict:
    """Run every algorithm of ``settings`` (``workers`` at a time) and write the summary and plots.
    The folder is checked first (:func:`check_demo_folder`) and held by this process while it runs."""
    import multiprocessing

    from comal.llm.run_folder import RunFolder

    algorithm_settings(settings.algorithms)  # names checked before anything is written
    quiet_libraries()
    RunFolder(out).take(lambda: check_demo_folder(settings, out))
    (out / "testbed.json").write_text(json.dumps(settings.testbed_identity()))
    testbed = settings.testbed()
    prompts = "".join(json.dumps({"prompt": p}) + "\n" for p in testbed.prompts)
    if not (out / "prompts.jsonl").is_file() or (out / "prompts.jsonl").read_text() != prompts:
        (out / "prompts.jsonl").write_text(prompts)
    started = time.perf_counter()
    if workers <= 1:
        results = {name: run_algorithm(name, settings, out, report) for name in settings.algorithms}
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that has used torch
        queue = context.Queue()
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(queue, os.getpid())) as pool:
            futures = {name: pool.submit(_run_in_worker, name, settings, out) for name in settings.algorithms}
            while not all(future.done() for future in futures.values()) or not queue.empty():
                try:
                    update = queue.get(timeout=0.2)
                except Empty:
                    continue
                if report is not None:
                    report(*update)
            results = {name: future.result() for name, future in futures.items()}
    summary = {"settings": settings.model_dump(), "seconds": time.perf_counter() - started,
               "algorithms": results, "prompts": testbed.prompts, "responses": testbed.responses(),
               "preference": "preference.npy", "nash": None}
    if testbed.solves_nash:
        summary.update(preference=testbed.preference.tolist(), nash=testbed.nash.tolist())
    else:  # millions of entries: a .npy beside the summary, named in it
        np.save(out / "preference.npy", testbed.preference)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_convergence(summary, out / "convergence.png")
    if testbed.space.size <= 64:  # one bar per response: readable up to a few dozen
        plot_policies(summary, out / "policies.png")
    return summary


def plot_convergence(summary: dict, path: Path) -> None:
    """Exact duality gap, KL to the Nash and best-response win rate of each iterate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"duality_gap": "exact duality gap", "kl_to_nash": "KL(π* ‖ π_t)",
              "best_response_win_rate": "best response's win rate"}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    per_round = summary["settings"]["samples_per_prompt"]
    for axis, measure in zip(axes, MEASURES):
        for index, (name, result) in enumerate(summary["algorithms"].items()):
            values = np.array(result["history"][measure], dtype=float)
            drawn = np.arange(len(values)) * result["rounds_per_iteration"] * per_round / 1e3
            axis.plot(drawn, values, label=name, lw=2.4 if name == "comal" else 1.2, color=f"C{index % 10}",
                      ls="-" if name == "comal" or index < 10 else "--")
        axis.set_title(titles[measure])
        axis.set_xlabel("thousand samples drawn per prompt")
        if measure != "best_response_win_rate":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("Sampled pipeline on the enumerable testbed (last iterate, averaged over prompts)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_policies(summary: dict, path: Path) -> None:
    """The final network distribution of each algorithm against the Nash, one panel per prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nash = np.array(summary["nash"])
    names = list(summary["algorithms"])
    figure, axes = plt.subplots(len(nash), 1, figsize=(max(8, 0.5 * nash.shape[1]), 2.6 * len(nash)), squeeze=False)
    width = 0.8 / (len(names) + 1)
    x = np.arange(nash.shape[1])
    for prompt, axis in enumerate(axes[:, 0]):
        axis.bar(x, nash[prompt], width, color="black", label="Nash (LP)")
        for k, name in enumerate(names):
            axis.bar(x + (k + 1) * width, summary["algorithms"][name]["policy"][prompt], width, label=name)
        axis.set_title(f"prompt '{summary['prompts'][prompt]}'")
        axis.set_xticks(x + 0.4, summary["responses"], rotation=90, fontsize=7)
        axis.set_ylabel("π(y | x)")
    axes[0, 0].legend(ncol=len(names) + 1, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
