"""Every command under hostile input and faults (issue 11): each input is run as a user would run
it (``python -m comal …`` in a subprocess) and its outcome classified:

- **refused**: exit 2 with one ``error:`` line on stderr (no traceback), and nothing written where
  the command would write (the run folder absent or unchanged);
- **ran**: exit 0 on input that is valid, with finite numbers (``--json`` parsed strictly);
- **stopped**: exit 1 with one ``error:`` line for valid input whose computation cannot finish
  (a run that diverges, an LP past its time limit);
- **traceback**, **hang** (past the timeout), **silent wrong** (exit 0 on bad input, NaN or inf in
  the output, a refusal that changed the folder) and **unclear** (anything else): the failures.

    python benchmarks/hostile_inputs.py            # every case; the table and hostile_inputs.json
    python benchmarks/hostile_inputs.py --only config
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.progress import track
from rich.table import Table

from comal.games import paper_3x3, random_intransitive
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer

console = Console(width=160)
FAILURES = ("traceback", "hang", "silent wrong", "unclear")


@dataclass
class Case:
    group: str
    name: str
    args: list[str]  # after `python -m comal`; {dir} is the case's working folder
    valid: bool = False  # True: the input is valid and must run
    watch: str | None = None  # a folder that a refusal must leave as it was (relative to {dir})
    prepare: object = None  # prepare(folder): files the case needs
    timeout: float = 120
    notes: dict = field(default_factory=dict)


# ------------------------------------------------------------------ inputs
def matrix_files() -> dict[str, object]:
    """name → what to write (bytes, text or an array for np.save)."""
    paper = paper_3x3()[0]
    return {
        "nan.npy": np.array([[0.5, np.nan], [np.nan, 0.5]]), "inf.json": "[[0.5, Infinity], [-Infinity, 0.5]]",
        "negative.csv": "0.5,-0.2\n1.2,0.5\n", "above_one.npy": np.array([[0.5, 1.5], [-0.5, 0.5]]),
        "not_square.npy": np.full((2, 3), 0.5), "four_dims.npy": np.full((1, 1, 2, 2), 0.5),
        "scalar.npy": np.array(0.5), "vector.json": "[0.5, 0.5]", "empty_list.json": "[]",
        "empty.npy": b"", "empty.csv": "", "empty.json": "", "ragged.json": "[[0.5, 0.5], [0.5]]",
        "strings.json": '[["a", "b"], ["c", "d"]]', "bools.json": "[[true, false], [true, false]]",
        "text.csv": "a,b\nc,d\n", "ragged.csv": "0.5,0.5\n0.5\n", "complex.npy": np.array([[0.5 + 1j, 0.5], [0.5, 0.5]]),
        "huge_int.json": "[[0.5, 1" + "0" * 400 + "]]", "deep.json": "[" * 100_000 + "]" * 100_000,
        "garbage.npy": os.urandom(256), "garbage.json": os.urandom(256), "object.npy": np.array([[{}, 1]], dtype=object),
        "not_antisymmetric.json": "[[0.5, 0.2], [0.7, 0.5]]", "diagonal.json": "[[0.9, 0.5], [0.5, 0.1]]",
        "matrix.txt": "0.5 0.5\n0.5 0.5\n", "valid_big_stack.npy": np.full((200_000, 2, 2), 0.5),
        "valid_paper.json": json.dumps(paper.tolist()), "valid_1x1.json": "[[0.5]]",
        "valid_stack.npy": random_intransitive(6, 3, seed=0), "valid_ties.csv": "0.5,0.5\n0.5,0.5\n",
    }


def write_matrix(folder: Path, name: str, content) -> None:
    path = folder / name
    if isinstance(content, np.ndarray):
        with path.open("wb") as handle:  # np.save would add .npy to other names
            np.save(handle, content, allow_pickle=content.dtype == object)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def game_cases() -> list[Case]:
    files = matrix_files()

    def prepare(folder: Path) -> None:
        for name, content in files.items():
            write_matrix(folder, name, content)
        (folder / "a_folder.npy").mkdir()

    cases = [Case("game files", f"nash {name}", ["game", "nash", "{dir}/" + name, "--json", "--time-limit", "20"],
                  valid=name.startswith("valid"), prepare=prepare, notes={"may_stop": "big" in name})
             for name in [*files, "a_folder.npy", "missing.npy"]]
    cases += [Case("game files", f"run {name}", ["game", "run", "{dir}/" + name, "-T", "50", "--json"],
                   valid=name.startswith("valid"), prepare=prepare) for name in files]
    paper = ["game", "run", "{dir}/valid_paper.json", "--json"]
    options = {
        "-a nope": ["-a", "nope"], "-a ''": ["-a", ""], "--eta 0": ["--eta", "0"], "--eta -1": ["--eta", "-1"],
        "--eta nan": ["--eta", "nan"], "--eta inf": ["--eta", "inf"], "--eta abc": ["--eta", "abc"],
        "--tau -1": ["--tau", "-1"], "--tau nan": ["--tau", "nan"], "--tau inf": ["--tau", "inf"],
        "-a comal --inner nope": ["-a", "comal", "--inner", "nope"], "-a onpo --inner inpo": ["-a", "onpo", "--inner", "inpo"],
        "--eta-final 0": ["--eta-final", "0"], "--eta-final nan": ["--eta-final", "nan"],
        "--init ''": ["--init", ""], "--init 1,2": ["--init", "1,2"], "--init a,b,c": ["--init", "a,b,c"],
        "--init 0,0,0": ["--init", "0,0,0"], "--init nan,1,1": ["--init", "nan,1,1"], "--init inf,1,1": ["--init", "inf,1,1"],
        "--init -1,1,1": ["--init", "-1,1,1"], "--seed -1": ["--init", "random", "--seed", "-1"],
        "--seed 2**70": ["--init", "random", "--seed", str(2**70)], "-T -5": ["-T", "-5"], "-T 1e3": ["-T", "1e3"],
        "-T 10**29": ["-T", "9" * 29], "--samples 1": ["--samples", "1"], "--samples 0": ["--samples", "0"],
        "--time-limit 0": ["--time-limit", "0"],
        "--time-limit nan": ["--time-limit", "nan"], "--bogus": ["--bogus"],
    }
    cases += [Case("game options", name, paper + extra, prepare=prepare) for name, extra in options.items()]
    extreme = {"-a comal --tau 1e308": ["-a", "comal", "--tau", "1e308", "-T", "50"],
               "-a mpo --tau 1e308": ["-a", "mpo", "--tau", "1e308", "-T", "50"]}
    cases += [Case("game options", name, paper + extra, prepare=prepare, notes={"may_stop": True})
              for name, extra in extreme.items()]
    valid = {"-a inpo --tau 1e308": ["-a", "inpo", "--tau", "1e308", "-T", "50"],
             "--init 1e308,1e308,1e308": ["--init", "1e308,1e308,1e308", "-T", "50"],
             "--eta 1e-300": ["--eta", "1e-300", "-T", "50"], "--eta 1e300": ["--eta", "1e300", "-T", "50"],
             "--samples 2": ["--samples", "2", "-T", "50"], "-T 0": ["-T", "0"],
             "--samples 10**15": ["-T", "2", "--samples", str(10**15)]}
    cases += [Case("game options", name, paper + extra, valid=True, prepare=prepare, notes={"may_stop": True})
              for name, extra in valid.items()]
    generate = {"kind nope": ["nope"], "--n 0": ["intransitive", "--n", "0"],
                "--n -3": ["intransitive", "--n", "-3"], "--n 10**6": ["intransitive", "--n", str(10**6)],
                "--prompts 10**9": ["intransitive", "--prompts", str(10**9)],
                "--seed -1": ["intransitive", "--seed", "-1"], "--out .txt": ["intransitive", "--out", "{dir}/g.txt"],
                "--out missing dir": ["intransitive", "--out", "{dir}/no/such/g.npy"],
                "--out a folder": ["intransitive", "--out", "{dir}/a_folder.npy"]}
    cases += [Case("game generate", name, ["game", "generate", *extra] + ([] if "--out" in extra else ["--out", "{dir}/g.npy"]),
                   prepare=prepare) for name, extra in generate.items()]
    cases += [Case("game generate", "valid", ["game", "generate", "intransitive", "--n", "5", "--out", "{dir}/g.npy"],
                   valid=True)]
    reproduce = {"--size 1": ["--size", "1"], "--size -1": ["--size", "-1"], "--size 10**6": ["--size", str(10**6)],
                 "--iterations-3x3 0": ["--iterations-3x3", "0"], "--out a file": ["--out", "{dir}/valid_paper.json"]}
    cases += [Case("game reproduce", name, ["game", "reproduce", *extra] + ([] if "--out" in extra else ["--out", "{dir}/r"]),
                   prepare=prepare, watch="r") for name, extra in reproduce.items()]
    return cases


DEMO = ["demo", "--tokens", "2", "--length", "1", "--prompts", "1", "--iterations", "2", "--samples", "16",
        "--algorithms", "comal", "--workers", "1"]


def demo_cases() -> list[Case]:
    def with_file(folder: Path) -> None:
        (folder / "a_file").write_text("not a folder")

    options = {"--tokens 1": ["--tokens", "1"], "--tokens 9": ["--tokens", "9"], "--length 0": ["--length", "0"],
               "--length 100": ["--length", "100"], "--prompts 0": ["--prompts", "0"], "--prompts 9": ["--prompts", "9"],
               "--samples 1": ["--samples", "1"], "--samples 10**30": ["--samples", str(10**30)],
               "--samples 1e30": ["--samples", "1e30"], "--iterations 0": ["--iterations", "0"],
               "--iterations 10**12": ["--iterations", str(10**12)], "--workers 0": ["--workers", "0"],
               "--workers -1": ["--workers", "-1"], "--seed -1": ["--seed", "-1"], "--seed 2**70": ["--seed", str(2**70)],
               "--algorithms ''": ["--algorithms", ""], "--algorithms dpo": ["--algorithms", "dpo"],
               "--algorithms ,,": ["--algorithms", ",,"], "--bogus": ["--bogus"]}
    cases = [Case("demo options", name, DEMO + extra + ["--out", "{dir}/d"], watch="d") for name, extra in options.items()]
    cases.append(Case("demo options", "--out a file", DEMO + ["--out", "{dir}/a_file"], prepare=with_file, watch="a_file"))
    cases.append(Case("demo options", "valid", DEMO + ["--out", "{dir}/d"], valid=True, timeout=300))
    return cases


def tiny_setup(folder: Path) -> dict:
    """A tiny policy folder, a prompt file and a valid config that names them."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    tokenizer = tiny_tokenizer()
    tiny_causal_lm(tokenizer, 0).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("hello world", "say a")))
    return {"model": {"path": "model"}, "judge": {"kind": "llm", "path": "model"}, "prompts": "prompts.jsonl",
            "iterations": 1, "algorithm": "comal", "rows": "hard",
            "sampling": {"samples_per_prompt": 2, "max_new_tokens": 3, "batch_size": 2},
            "training": {"epochs": 1, "batch_size": 2, "mixed_precision": "no"}}


def set_key(config: dict, key: str, value) -> dict:
    config = json.loads(json.dumps(config))
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return config


DELETE = object()
BAD_CONFIG = {  # key: hostile values
    "algorithm": ["nope", "dpo", "", None, 3],
    "iterations": [0, -1, 1.5, "x", None, 10**30],
    "eta": [0, -1, ".inf", ".nan", "x", [1]], "eta_code": [0, None, [1], -2, ".inf", True],
    "tau_eta_ratio": [-0.1, 2, ".nan"], "reference_period": [0, -1, 1.5], "inner": ["nope", 3],
    "tolerance": [-1, 1, ".nan"], "eta_final": [0, ".inf"], "rows": ["x", None], "hard_min_margin": [-1, 0.5],
    "seed": [-1, 2**70, "x", 1.5], "prompts_per_iteration": [0, -1],
    "prompts": ["missing.jsonl", "empty.jsonl", "binary.jsonl", "no_field.jsonl", "not_text.jsonl", "a_folder", "", None],
    "prompt_field": ["nope", ""], "prompt_split": ["nope", "train[x]", "test"],
    "model": [None, "x", DELETE], "model.path": ["missing", "prompts.jsonl", "", None], "model.tokenizer": ["/nonexistent", "prompts.jsonl"],
    "model.lora": [{"bogus": 1}, {"r": -1}, "x", {"r": "x"}], "model.extra": [1],
    "judge": [None, DELETE], "judge.kind": ["nope"], "judge.path": ["missing", None], "judge.template": ["{nope}", ""],
    "judge.template_file": ["missing.txt", "binary.jsonl"], "judge.batch_size": [0, -1],
    "judge.answer_tokens": [["a"], "ab", ["a", "a"]],
    "sampling.samples_per_prompt": [0, 1, -1, 10**30], "sampling.temperature": [0, -1, ".inf", ".nan"],
    "sampling.top_p": [0, 1.5, ".nan"], "sampling.max_new_tokens": [0, -1, 10**30], "sampling.seed": [-1, 2**70],
    "sampling.backend": ["nope"], "sampling.bogus": [1],
    "training.epochs": [0, -1], "training.learning_rate": [0, -1, ".inf", ".nan"], "training.batch_size": [0],
    "training.warmup_ratio": [1, -0.5], "training.mixed_precision": ["fp64"], "training.report_to": [["wandb"], ["nope"], "x"],
    "training.seed": [-1, 2**70], "training.bogus": [1], "evaluate.prompts": ["missing.jsonl", "empty.jsonl"],
    "evaluate.max_prompts": [0], "evaluate.split": ["train[x]"], "bogus_key": [1], "": [None],
}


def config_cases() -> list[Case]:
    def prepare_for(config: dict):
        def prepare(folder: Path) -> None:
            base = tiny_setup(folder)
            (folder / "empty.jsonl").write_text("")
            (folder / "binary.jsonl").write_bytes(os.urandom(512))
            (folder / "no_field.jsonl").write_text('{"text": "hello"}\n')
            (folder / "not_text.jsonl").write_text('{"prompt": 3}\n')
            (folder / "a_folder").mkdir()
            text = yaml.safe_dump(config if config is not None else base)
            (folder / "config.yaml").write_text(text.replace("'.inf'", ".inf").replace("'.nan'", ".nan"))
        return prepare

    base = tiny_setup(Path(tempfile.mkdtemp()))
    run = ["run", "{dir}/config.yaml", "--out", "{dir}/run"]
    cases = []
    for key, values in BAD_CONFIG.items():
        for value in values:
            config = base if key == "" else set_key(base, key, value)
            if key == "":
                config = [1, 2]  # a config that is no mapping
            label = "(delete)" if value is DELETE else json.dumps(value)
            cases.append(Case("run config", f"{key or 'whole file'}: {label}", run, prepare=prepare_for(config), watch="run"))
    cases.append(Case("run config", "valid", run, valid=True, prepare=prepare_for(base), timeout=300))
    cases.append(Case("run config", "not YAML", run, watch="run",
                      prepare=lambda folder: (tiny_setup(folder), (folder / "config.yaml").write_text("a: [b\n"))))
    cases.append(Case("run config", "config missing", ["run", "{dir}/nope.yaml", "--out", "{dir}/run"], watch="run"))
    return cases


def folder_cases() -> list[Case]:
    """Faults of the run folder: another run's folder, a file, a held lock."""
    def finished_then(change):
        def prepare(folder: Path) -> None:
            base = tiny_setup(folder)
            (folder / "config.yaml").write_text(yaml.safe_dump(base))
            done = subprocess.run([sys.executable, "-m", "comal", "run", str(folder / "config.yaml"), "--out",
                                   str(folder / "run")], capture_output=True, text=True, cwd=folder)
            assert done.returncode == 0, done.stderr
            change(folder, base)
        return prepare

    def other_settings(folder: Path, base: dict) -> None:
        (folder / "config.yaml").write_text(yaml.safe_dump({**base, "seed": 7}))

    def moved_prompts(folder: Path, base: dict) -> None:
        (folder / "elsewhere").mkdir()
        shutil.move(folder / "prompts.jsonl", folder / "elsewhere" / "prompts.jsonl")
        (folder / "config.yaml").write_text(yaml.safe_dump({**base, "prompts": "elsewhere/prompts.jsonl"}))

    def changed_prompts(folder: Path, base: dict) -> None:
        (folder / "prompts.jsonl").write_text(json.dumps({"prompt": "other words"}) + "\n")

    def held(folder: Path, base: dict) -> None:
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from comal.llm.run_folder import RunFolder; "
                                   "RunFolder(sys.argv[1]).lock(); print('held', flush=True); time.sleep(600)",
                                   str(folder / "run")], stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
        (folder / "holder.pid").write_text(str(holder.pid))

    def demo_running(folder: Path) -> None:
        """A demo at work in folder/d (its lock taken), as a second identical demo starts."""
        holder = subprocess.Popen([sys.executable, "-m", "comal", *DEMO, "--iterations", "50", "--out", str(folder / "d")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (folder / "d" / "lock").is_file() or not (folder / "d" / "lock").read_text().strip():
            time.sleep(0.2)
        (folder / "holder.pid").write_text(str(holder.pid))

    run = ["run", "{dir}/config.yaml", "--out", "{dir}/run"]
    return [Case("run folder", "a second identical demo", [*DEMO, "--iterations", "50", "--out", "{dir}/d"],
                 prepare=demo_running),
            Case("run folder", "other settings", run, prepare=finished_then(other_settings), watch="run"),
            Case("run folder", "prompts changed", run, prepare=finished_then(changed_prompts), watch="run"),
            Case("run folder", "held by a running process", run, prepare=finished_then(held), watch="run"),
            Case("run folder", "prompts moved (same content)", run, valid=True, prepare=finished_then(moved_prompts)),
            Case("run folder", "resumed under another spelling", ["run", "{dir}/config.yaml", "--out", "{dir}/./run/"],
                 valid=True, prepare=finished_then(lambda folder, base: None)),
            Case("run folder", "--out a file", ["run", "{dir}/config.yaml", "--out", "{dir}/prompts.jsonl"],
                 prepare=finished_then(lambda folder, base: None), watch="prompts.jsonl")]


def command_cases() -> list[Case]:
    """The other commands (plan, status, the stage commands, evaluate, model prepare, length-game)."""
    def finished(folder: Path) -> None:
        base = tiny_setup(folder)
        (folder / "config.yaml").write_text(yaml.safe_dump(base))
        (folder / "bad.yaml").write_text(yaml.safe_dump({**base, "seed": -1}))
        (folder / "a_file").write_text("x")
        done = subprocess.run([sys.executable, "-m", "comal", "run", str(folder / "config.yaml"), "--out",
                               str(folder / "run")], capture_output=True, text=True, cwd=folder)
        assert done.returncode == 0, done.stderr

    run = "{dir}/run"
    commands = {
        "plan: bad config": ["plan", "{dir}/bad.yaml", "--no-probe"],
        "plan: missing config": ["plan", "{dir}/nope.yaml", "--no-probe"],
        "plan: --price-in -1": ["plan", "{dir}/config.yaml", "--no-probe", "--price-in", "-1"],
        "plan: --price-in nan": ["plan", "{dir}/config.yaml", "--no-probe", "--price-in", "nan"],
        "status: missing folder": ["status", "{dir}/nope"], "status: a file": ["status", "{dir}/a_file"],
        "status: not a run": ["status", "{dir}/model"],
        "sample: -i 99": ["sample", run, "-i", "99"], "sample: -i -1": ["sample", run, "-i", "-1"],
        "sample: --policy nope": ["sample", run, "-i", "0", "--policy", "nope"],
        "judge: -i 99": ["judge", run, "-i", "99"], "train: --step nope": ["train", run, "-i", "0", "--step", "nope"],
        "pairs: a file": ["pairs", "{dir}/a_file", "-i", "0"],
        "evaluate: no option": ["evaluate", run], "evaluate: no held-out prompts": ["evaluate", run, "-i", "0"],
        "prepare: missing source": ["model", "prepare", "{dir}/nope.gguf", "--out", "{dir}/m"],
        "prepare: out not empty": ["model", "prepare", "{dir}/model", "--out", "{dir}/run"],
        "prepare: a text file": ["model", "prepare", "{dir}/a_file", "--out", "{dir}/m"],
        "length-game: missing model": ["length-game", "--model", "{dir}/nope", "--out", "{dir}/lg"],
        "length-game: --rounds 0": ["length-game", "--model", "{dir}/model", "--rounds", "0", "--out", "{dir}/lg"],
        "length-game: --samples 1": ["length-game", "--model", "{dir}/model", "--samples", "1", "--out", "{dir}/lg"],
    }
    cases = [Case("other commands", name, args, prepare=finished, watch="run") for name, args in commands.items()]
    cases.append(Case("other commands", "status: valid", ["status", run], valid=True, prepare=finished))
    return cases


GROUPS = {"game": game_cases, "demo": demo_cases, "config": config_cases, "folder": folder_cases,
          "commands": command_cases}


# ------------------------------------------------------------------ running and classifying
def snapshot(path: Path) -> str | None:
    """A digest of everything under ``path`` (names and contents), None when it does not exist."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for item in sorted([path] if path.is_file() else path.rglob("*")):
        if item.is_file() and item.name != "lock":
            digest.update(str(item.relative_to(path.parent)).encode() + item.read_bytes())
    return digest.hexdigest()


def finite_json(text: str) -> bool:
    """Strict JSON (no NaN or Infinity) with finite numbers, or no JSON at all."""
    try:
        json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    except json.JSONDecodeError:
        return "nan" not in text.lower().split() and "inf" not in text.lower().split()
    except ValueError:
        return False
    return True


def classify(case: Case, code: int | None, out: str, err: str, before: str | None, after: str | None) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code is None:
        return "hang"
    if "Traceback" in out + err:
        return "traceback"
    if code == 0:
        return "ran" if case.valid and finite_json(out) else "silent wrong"
    if code == 2 and len(errors) == 1:
        return "refused" if case.valid is False and before == after else "silent wrong" if before != after else "unclear"
    if code == 1 and len(errors) == 1 and (case.notes.get("may_stop") or not case.valid) and before == after:
        return "stopped"
    return "unclear"


def run_case(case: Case, root: Path) -> dict:
    folder = root / f"{case.group}-{case.name}".replace("/", "_").replace(" ", "_")[:80]
    folder.mkdir(parents=True)
    if case.prepare is not None:
        case.prepare(folder)
    args = [arg.replace("{dir}", str(folder)) for arg in case.args]
    watched = folder / case.watch if case.watch else None
    before = snapshot(watched) if watched else None
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "comal", *args], capture_output=True, text=True, cwd=folder,
                              timeout=case.timeout, env={**os.environ, "COLUMNS": "200"})
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        code, out, err = None, str(expired.stdout or ""), str(expired.stderr or "")
    if (folder / "holder.pid").is_file():
        os.kill(int((folder / "holder.pid").read_text()), 9)
    after = snapshot(watched) if watched else None
    (folder / "stderr.txt").write_text(err)
    outcome = classify(case, code, out, err, before, after)
    return {"group": case.group, "name": case.name, "command": "comal " + " ".join(case.args), "valid": case.valid,
            "exit_code": code, "outcome": outcome, "seconds": round(time.perf_counter() - started, 2),
            "stderr": err.strip().splitlines()[-1][:300] if err.strip() else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(GROUPS), nargs="+", default=list(GROUPS))
    parser.add_argument("--match", default="", help="only the cases whose name holds this text")
    parser.add_argument("--keep", action="store_true", help="keep the cases' folders (and full stderr) to look at")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hostile_inputs.json")
    args = parser.parse_args()
    cases = [case for group in args.only for case in GROUPS[group]() if args.match in case.name]
    root = Path(tempfile.mkdtemp(prefix="comal-hostile-"))
    started = time.perf_counter()
    results = [run_case(case, root) for case in track(cases, description="hostile inputs", console=console)]
    if args.keep:
        console.print(f"the cases' folders: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    groups = list(dict.fromkeys(result["group"] for result in results))
    outcomes = ("refused", "ran", "stopped", *FAILURES)
    table = Table("inputs", "tried", *outcomes, title=f"{len(results)} hostile inputs, {time.perf_counter() - started:.0f} s")
    counts = {group: Counter(r["outcome"] for r in results if r["group"] == group) for group in groups}
    for group in groups:
        table.add_row(group, str(sum(counts[group].values())), *(str(counts[group][o]) for o in outcomes))
    total = Counter(r["outcome"] for r in results)
    table.add_row("[bold]all", str(len(results)), *(str(total[o]) for o in outcomes))
    console.print(table)
    for result in results:
        if result["outcome"] in FAILURES:
            console.print(f"{result['outcome']}: {result['group']} / {result['name']}: {result['stderr']}",
                          highlight=False, markup=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.is_file():  # a run of some cases replaces those cases in the saved results
        rerun = {(result["group"], result["name"]) for result in results}
        results = [c for c in json.loads(args.out.read_text())["cases"] if (c["group"], c["name"]) not in rerun] + results
    counts = {}
    for result in results:
        counts.setdefault(result["group"], Counter())[result["outcome"]] += 1
    total = Counter(r["outcome"] for r in results)
    args.out.write_text(json.dumps({"counts": {g: dict(c) for g, c in counts.items()}, "total": dict(total),
                                    "cases": results}, indent=1))
    console.print(f"saved {args.out}")
    sys.exit(1 if any(total[o] for o in FAILURES) else 0)


if __name__ == "__main__":
    main()
