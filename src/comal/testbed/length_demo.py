"""``comal length-game``: COMAL's 3×3 game played by a real chat model, scored exactly.

The policy is a real causal LM (SmolLM2-135M-Instruct by default); the judge sees only each
response's length class (:mod:`comal.testbed.length_game`): short, medium or long, with thresholds
at the 20th and 70th percentiles of the start model's response lengths on the prompts, so the start
plays about ``[0.2, 0.5, 0.3]``, and between classes COMAL's cyclic matrix. The policy's exact
duality gap is then the gap of its class distribution, ``2 · max(M p) − 1``; it is measured on
every round of samples (fresh draws of π_t) and, for the last iterate, on a round of
``evaluation_samples`` per prompt, with a bootstrap standard error over prompts.

Prompts: the first ``prompt_count`` of the prompt file whose chat rendering is at most
``max_prompt_tokens`` tokens, each followed by ``instruction`` (SmolLM2 answers 84% of UltraFeedback
prompts past a 64-token cap; asked for one short sentence, its lengths spread over 7–48 tokens, so
all three classes are real). Every algorithm draws the same samples per prompt (``rounds`` rounds
of ``samples_per_prompt``; a rule that samples twice an iteration runs half the iterations) and
runs the ordinary pipeline (:mod:`comal.llm.loop`) in its own run folder, resumable.

Outputs: ``calibration.json`` (thresholds, the start's lengths and class shares), one run folder per
algorithm, ``summary.json`` (per algorithm and iteration the class distribution, its gap and
standard error, and the tabular rule's trajectory from the same start) and ``length_game.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from comal.games import duality_gap, nash_lp
from comal.games.generators import paper_3x3
from comal.llm.progress import Bar, no_bar, prefixed
from comal.settings import STRICT, Seed
from comal.testbed.demo import AlgorithmSettings
from comal.testbed.length_game import (
    CLASSES,
    LengthClasses,
    LengthClassJudge,
    class_gap,
    class_shares,
    token_length,
)

# Each rule at the setting its sampled tabular rule prefers at the default budget (20 rounds of 4
# responses on 16 prompts), every rule searched the same way: benchmarks/length_game_steps.py.
DEFAULT_LENGTH_ALGORITHMS = {
    "comal": AlgorithmSettings(eta=0.5, tau_eta_ratio=0.3, reference_period=6, inner="inpo", tolerance=0.0),
    "iter-ipo": AlgorithmSettings(eta=0.25),
    "onpo": AlgorithmSettings(eta=0.25),
}


class LengthGameSettings(BaseModel):
    """The model, prompts, budget and algorithms of a length-game run (all saved with it)."""

    model_config = STRICT

    model: str = Field("models/smollm2-135m-instruct", description="a local causal LM folder (`make smollm2`)")
    prompts: str = Field("data/ultrafeedback_prompts_test.jsonl", description="any file `prompts:` takes")
    prompt_count: int = Field(16, ge=1)
    max_prompt_tokens: int = Field(64, ge=1, description="prompts whose chat rendering is at most this long")
    instruction: str = Field(" Answer in one short sentence.", description="appended to every prompt")
    samples_per_prompt: int = Field(4, ge=2, description="responses per prompt in every round")
    max_new_tokens: int = Field(48, ge=3)
    calibration_samples: int = Field(8, ge=2, description="start responses per prompt that set the thresholds")
    evaluation_samples: int = Field(8, ge=1, description="responses per prompt that measure the last iterate")
    rounds: int = Field(20, ge=1, description="rounds of sampling per algorithm (the budget)")
    epochs: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int | None = Field(None, ge=1, description="rows per optimiser step; None: one prompt's "
                                   "k(k − 1)/2 soft rows, so each step forwards that prompt's k responses once")
    lora_rank: int | None = Field(16, ge=1, description="LoRA rank on every linear layer; None: full fine-tune")
    seed: Seed = 0
    algorithms: dict[str, AlgorithmSettings] = Field(default_factory=lambda: dict(DEFAULT_LENGTH_ALGORITHMS))

    def sampling(self, samples: int, seed: int) -> dict:
        # temperature 1, no nucleus: π itself is sampled, so the class shares are the policy's own
        return {"samples_per_prompt": samples, "max_new_tokens": self.max_new_tokens, "temperature": 1.0,
                "top_p": 1.0, "batch_size": 16, "seed": seed}

    def run_config(self, algorithm: str, prompts_file: Path):
        """The pipeline configuration of one algorithm; a rule that samples twice an iteration gets
        half the iterations, so every rule draws ``rounds`` rounds."""
        from comal.llm.config import RunConfig

        chosen = self.algorithms[algorithm]
        lora = None if self.lora_rank is None else {"r": self.lora_rank, "lora_alpha": 2 * self.lora_rank,
                                                    "target_modules": "all-linear"}
        parameters = {"eta": chosen.eta, "tau_eta_ratio": chosen.tau_eta_ratio,
                      "reference_period": chosen.reference_period, "inner": chosen.inner,
                      "tolerance": chosen.tolerance, "eta_final": chosen.eta_final}
        config = RunConfig.model_validate({
            "model": {"path": str(Path(self.model).resolve()), "lora": lora}, "judge": {"path": "length-classes"},
            "prompts": str(Path(prompts_file).resolve()), "algorithm": algorithm, "iterations": self.rounds,
            "rows": "soft",
            **{key: value for key, value in parameters.items() if value is not None},
            "sampling": self.sampling(self.samples_per_prompt, self.seed),
            "training": {"epochs": self.epochs, "learning_rate": self.learning_rate,
                         "batch_size": self.batch_size or self.samples_per_prompt * (self.samples_per_prompt - 1) // 2,
                         "mixed_precision": "no", "seed": self.seed},
            "seed": self.seed})
        rounds = len(config.rule().sampled_policies())
        return config.model_copy(update={"iterations": max(1, self.rounds // rounds)})


def choose_prompts(settings: LengthGameSettings, tokenizer) -> list[str]:
    """The first ``prompt_count`` short prompts of the file, each with the instruction appended."""
    from comal.llm.logprobs import encode
    from comal.llm.stages import load_prompts

    chosen = [prompt + settings.instruction for prompt in load_prompts(settings.prompts)
              if len(encode(tokenizer, prompt + settings.instruction, ()).ids) <= settings.max_prompt_tokens]
    if len(chosen) < settings.prompt_count:
        raise ValueError(f"{settings.prompts} has {len(chosen)} prompts of at most {settings.max_prompt_tokens} "
                         f"tokens, fewer than prompt_count {settings.prompt_count}; raise max_prompt_tokens")
    return chosen[:settings.prompt_count]


def text_lengths(tokenizer, texts: list[list[str]]) -> list[list[int]]:
    """Per prompt, each response's length as the judge counts it (:func:`token_length`)."""
    return [[token_length(tokenizer, text) for text in row] for row in texts]


def measured(classes: LengthClasses, lengths: list[list[int]]) -> dict:
    """The class distribution of a round, its exact gap and the gap's bootstrap standard error."""
    shares = class_shares([classes.classify(row) for row in lengths])
    return class_gap(shares)


def calibrate(settings: LengthGameSettings, prompts: list[str], out: Path, model_path: Path, tokenizer,
              bar: Bar = no_bar) -> dict:
    """``calibration.json``: thresholds from ``calibration_samples`` start responses per prompt, the
    lengths and the start's measured class distribution (read back when saved)."""
    from comal.llm.sample import SamplingConfig, sample

    path = out / "calibration.json"
    if path.is_file():
        return json.loads(path.read_text())
    with bar("calibration: start responses", len(prompts) * settings.calibration_samples) as advance:
        drawn = sample(_load_causal_lm(model_path), tokenizer, prompts,
                       SamplingConfig(**settings.sampling(settings.calibration_samples, settings.seed + 1)), advance)
    lengths = text_lengths(tokenizer, drawn.texts)
    classes = LengthClasses.calibrate([n for row in lengths for n in row])
    calibration = {"thresholds": list(classes.thresholds), "classes": CLASSES, "lengths": lengths,
                   "start": measured(classes, lengths), "prompts": prompts}
    path.write_text(json.dumps(calibration, indent=1))
    return calibration


def run_algorithm(algorithm: str, settings: LengthGameSettings, out: Path, prompts: list[str], tokenizer,
                  classes: LengthClasses, start: np.ndarray, report: Callable[[str, int, dict], None] | None = None,
                  bar: Bar = no_bar, progress: Callable[[str], None] = lambda message: None) -> dict:
    """One algorithm for its share of the budget: the class distribution of every iterate, and the
    tabular rule's exact trajectory from the start's measured distribution ``start``."""
    from dataclasses import asdict

    from comal.llm.loop import open_run
    from comal.llm.run_folder import load_rows, write_atomically
    from comal.llm.sample import SamplingConfig
    from comal.llm.stages import cached_loader, sample_stage
    from comal.rules import CURRENT
    from comal.tabular import run as tabular_run

    config = settings.run_config(algorithm, out / "prompts.jsonl")
    judge = LengthClassJudge(tokenizer, classes)
    # the class judge is exact: its ties are pairs of one class, not noise, so no judge-quality warning
    run = open_run(config, out / algorithm, judge=judge, load_model=cached_loader(_load_causal_lm, size=2),
                   bar=prefixed(bar, algorithm), progress=lambda message: progress(f"{algorithm} {message}"),
                   warn=lambda message: None)
    started = time.perf_counter()

    def lengths_of(folder: Path) -> list[list[int]]:
        return text_lengths(tokenizer, [record["texts"] for record in load_rows(folder)])

    history = []
    for t in range(config.iterations):
        run.iteration(t)
        history.append(measured(classes, lengths_of(run.folder.round(t, CURRENT, "sample"))))
        if report is not None:
            report(algorithm, t, history[-1])
    final = out / algorithm / "final_sample"
    evaluation = SamplingConfig(**settings.sampling(settings.evaluation_samples, settings.seed + 2))
    write_atomically(final, lambda folder: sample_stage(
        folder, prompts=prompts, policy=run.policy(config.iterations), settings=evaluation,
        sampler=run.parts.sampler, bar=prefixed(bar, f"{algorithm} last iterate")))
    history.append(measured(classes, lengths_of(final)))
    if report is not None:
        report(algorithm, config.iterations, history[-1])
    rule = config.rule()
    tabular = tabular_run(rule, paper_3x3(), start, config.iterations, keep_trajectory=True,
                          eta_final=config.eta_final)
    rounds = len(rule.sampled_policies())
    return {"rule": asdict(rule), "eta_final": config.eta_final, "rounds_per_iteration": rounds,
            "samples_drawn": config.iterations * rounds * settings.samples_per_prompt,
            "reference_moves": [t for t in range(config.iterations) if run.reference_moved(t)],
            "history": history, "distribution": history[-1]["distribution"], "duality_gap": history[-1]["gap"],
            "standard_error": history[-1]["standard_error"],
            "tabular": {"distribution": tabular.trajectory[:, 0].tolist(),
                        "gap": [duality_gap(paper_3x3(), p[None]) for p in tabular.trajectory[:, 0]]},
            "seconds": time.perf_counter() - started}


def _load_causal_lm(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def run_length_game(settings: LengthGameSettings, out: Path, report: Callable[[str, int, dict], None] | None = None,
                    bar: Bar = no_bar, progress: Callable[[str], None] = lambda message: None) -> dict:
    """Calibrate the classes on the start model, run every algorithm, write the summary and plot."""
    from transformers import AutoTokenizer

    from comal.llm.prepare import check_model_folder
    from comal.llm.run_folder import RunFolder, by_content, flatten
    from comal.testbed.demo import algorithm_settings, quiet_libraries

    algorithm_settings(settings.algorithms)  # names checked before anything is written
    model_path = check_model_folder(settings.model, "--model")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = choose_prompts(settings, tokenizer)
    quiet_libraries()
    folder = RunFolder(out)  # the folder is this game's, under any spelling of its paths: files by content
    identity = flatten({**settings.model_dump(mode="json"), "model": by_content(str(model_path.resolve())),
                        "prompts": by_content(str(Path(settings.prompts).resolve()))})
    folder.adopt(identity, lambda saved: {})
    (out / "settings.json").write_text(settings.model_dump_json(indent=1))
    (out / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    started = time.perf_counter()
    calibration = calibrate(settings, prompts, out, model_path, tokenizer, bar)
    classes = LengthClasses(tuple(calibration["thresholds"]))
    start = np.clip(calibration["start"]["distribution"], 1e-3, None)  # the tabular rules need every class
    results = {name: run_algorithm(name, settings, out, prompts, tokenizer, classes, start / start.sum(), report,
                                   bar, progress)
               for name in settings.algorithms}
    game = paper_3x3()
    summary = {"settings": settings.model_dump(), "seconds": time.perf_counter() - started,
               "thresholds": list(classes.thresholds), "classes": CLASSES, "matrix": game[0].tolist(),
               "nash": nash_lp(game)[0].tolist(), "calibration": calibration["start"],
               "algorithms": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_length_game(summary, out / "length_game.png")
    return summary


def plot_length_game(summary: dict, path: Path) -> None:
    """Left: each algorithm's class distribution per iteration on the simplex, beside the tabular
    rule's trajectory from the same start. Right: the gap per iteration with ±1 standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from comal.reproduce import to_plane

    figure, (simplex, gaps) = plt.subplots(1, 2, figsize=(12, 5))
    simplex.fill(*to_plane(np.eye(3)).T, color="#f4f4f4", edgecolor="#888")
    for label, xy in zip(CLASSES, to_plane(np.eye(3))):
        simplex.annotate(label, xy, xytext=(0, 5), textcoords="offset points", ha="center")
    simplex.plot(*to_plane(np.asarray(summary["nash"])), "*", ms=15, color="gold", mec="k", label="Nash")
    for index, (name, result) in enumerate(summary["algorithms"].items()):
        llm = to_plane(np.array([h["distribution"] for h in result["history"]]))
        tabular = to_plane(np.array(result["tabular"]["distribution"]))
        simplex.plot(*llm.T, "-o", ms=3, color=f"C{index}", label=f"{name} (LLM)")
        simplex.plot(*tabular.T, "--", color=f"C{index}", alpha=0.6, label=f"{name} (tabular)")
        drawn = np.arange(len(result["history"])) * result["rounds_per_iteration"]
        gap = np.array([h["gap"] for h in result["history"]])
        error = np.array([h["standard_error"] for h in result["history"]])
        gaps.errorbar(drawn, gap, yerr=error, color=f"C{index}", capsize=2, label=name)
        gaps.plot(drawn, result["tabular"]["gap"], "--", color=f"C{index}", alpha=0.6)
    simplex.set_aspect("equal")
    simplex.axis("off")
    simplex.legend(fontsize=7, loc="upper left")
    gaps.set_xlabel("rounds of sampling")
    gaps.set_ylabel("duality gap of the class distribution")
    gaps.grid(alpha=0.3)
    gaps.legend()
    figure.suptitle("COMAL's 3×3 game played by a real LLM through its response lengths (dashed: tabular rule)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
