"""Run configuration: YAML validated on load (unknown keys and wrong types name the key).

``algorithm`` is any rule of :data:`comal.rules.RULES`; the rule is built from the config by
:meth:`RunConfig.rule` and the loop executes it. Its parameters follow the paper's vocabulary:
``eta`` is η (the official code's ``eta`` is 1/η, here ``eta_code``), ``tau_eta_ratio`` is ητ
(the weight on the reference μ), ``reference_period`` is K (μ ← π_t every K iterations, COMAL and
MPO), ``inner`` and ``tolerance`` are COMAL's; ``eta_final`` anneals η geometrically over the
iterations with ητ held (:meth:`~comal.rules.base.Rule.annealed`). Each left out takes the rule's default for a judge
whose preferences span [0, 1] (payoff scale 1/2); one that the rule does not have is refused.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator

from comal.llm.sample import SamplingConfig
from comal.llm.train import TrainConfig
from comal.rules import RULES, Rule, make_rule
from comal.rules.base import run_fraction
from comal.settings import STRICT, Seed

JUDGE_SCALE = 0.5  # max |P − 1/2| of a judge with values in [0, 1]: the scale rule defaults are set for
NOT_RULES = {"dpo": "DPO's minimiser is a Bradley-Terry fit, not a step of the preference game; "
                    "use ipo (IPO against the fixed start policy)"}


SPLIT = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")  # train, train[-200:]


def split_name(split: str) -> str:
    """``split`` if it is a split name with an optional row slice (``train``, ``train[:1700]``)."""
    if SPLIT.match(split) is None:
        raise ValueError(f"split '{split}' is not a split name with an optional row slice, e.g. train or train[-200:]")
    return split


Split = Annotated[str, AfterValidator(split_name)]


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the key."""


class Strict(BaseModel):
    model_config = STRICT


class ModelSection(Strict):
    path: str = Field(description="local folder of a transformers causal LM (from_pretrained)")
    tokenizer: Optional[str] = Field(None, description="tokenizer folder; default: the model's")
    lora: Optional[dict] = Field(None, description="peft LoraConfig arguments; omit for full fine-tuning")

    @model_validator(mode="after")
    def _lora_arguments(self):
        if self.lora is not None:
            from dataclasses import fields as dataclass_fields

            from peft import LoraConfig

            known = {field.name for field in dataclass_fields(LoraConfig) if field.init}
            unknown = sorted(set(self.lora) - known)
            if unknown:
                raise ValueError(f"model.lora: unknown LoraConfig argument '{unknown[0]}' (e.g. r, lora_alpha, "
                                 "lora_dropout, target_modules)")
            rank = self.lora.get("r", 8)
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"model.lora: r must be a positive integer (the adapters' rank), got {rank!r}")
            try:
                LoraConfig(**self.lora)
            except (TypeError, ValueError) as error:
                raise ValueError(f"model.lora: {str(error).splitlines()[0]}") from None
        return self


class JudgeSection(Strict):
    kind: Literal["llm", "reward-model", "openai", "mixture"] = "llm"
    path: Optional[str] = Field(None, description="llm, reward-model: local folder of the judge model")
    template: str = Field("pairwise", description="'pairwise' (the preset) or a template with "
                          "{instruction}, {output_1}, {output_2}")
    template_file: Optional[str] = Field(None, description="a text file holding the template (instead of 'template')")
    answer_prefix: str = "Output ("
    answer_tokens: tuple[str, str] = ("a", "b")
    batch_size: int = Field(8, ge=1)
    base_url: Optional[str] = Field(None, description="openai: the endpoint, e.g. http://localhost:8000/v1")
    model: Optional[str] = Field(None, description="openai: the served model's name")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: the environment variable holding the key")
    concurrency: int = Field(4, ge=1, description="openai: requests in flight at once")
    max_retries: int = Field(4, ge=0, description="openai: retries with exponential backoff")
    timeout: float = Field(60.0, gt=0, description="openai: seconds per request")
    max_requests: Optional[int] = Field(None, ge=1, description="openai: the most requests the run may send")
    samples: int = Field(8, ge=1, description="openai: verdicts drawn per pair where the server gives no logprobs")
    judges: Optional[list["JudgeSection"]] = Field(None, description="mixture: the judges, each with its weight")
    weight: float = Field(1.0, gt=0, description="this judge's weight in a mixture")

    @model_validator(mode="after")
    def _one_template(self):
        if self.template_file is not None and self.template != "pairwise":
            raise ValueError("judge: give 'template' or 'template_file', not both")
        needs = {"llm": ("path",), "reward-model": ("path",), "openai": ("base_url", "model"), "mixture": ("judges",)}
        missing = [key for key in needs[self.kind] if not getattr(self, key)]
        if missing:
            raise ValueError(f"judge of kind {self.kind} needs '{missing[0]}'")
        return self

    def template_text(self) -> str:
        """The judge's template: the preset, the inline text or the file's."""
        if self.template_file is None:
            return self.template
        try:
            return Path(self.template_file).read_text()
        except OSError as error:
            raise ValueError(f"judge.template_file {self.template_file}: cannot be read ({error.strerror})") from None
        except UnicodeDecodeError:
            raise ValueError(f"judge.template_file {self.template_file}: cannot be read (not UTF-8 text)") from None


class EvaluateSection(Strict):
    prompts: Optional[str] = Field(None, description="held-out prompts, in any form 'prompts' takes")
    split: Split = Field("train", description="the split (and rows, e.g. train[-200:]) of the held-out prompts")
    max_prompts: int = Field(64, ge=1)


class RunConfig(Strict):
    model: ModelSection
    judge: JudgeSection
    prompts: str = Field(description="a local .jsonl, .json, .parquet or .csv file, or a save_to_disk folder")
    prompt_field: str = Field("prompt", description="the column that holds the prompt text")
    prompt_split: Split = Field("train", description="the split of a saved DatasetDict folder, and rows: train[:1700]")
    prompts_per_iteration: Optional[int] = Field(None, ge=1, description="default: all prompts each iteration")
    algorithm: str = Field("comal", description="a rule of comal.rules.RULES")
    iterations: int = Field(24, ge=1, le=10**6)
    eta: Optional[float] = Field(None, gt=0, description="η; the official code's eta_code is 1/η")
    tau_eta_ratio: Optional[float] = Field(None, ge=0, le=1, description="ητ, the weight on the reference μ")
    reference_period: Optional[int] = Field(None, ge=1, description="μ ← π_t every this many iterations")
    inner: Optional[str] = Field(None, description="comal: the rule that solves each regularised subgame")
    tolerance: Optional[float] = Field(None, ge=0, lt=1, description="comal: relative residual test (0: period only)")
    eta_final: Optional[float] = Field(None, gt=0, description="η decays geometrically to this over the iterations, "
                                       "ητ held (default: η constant)")
    rows: Literal["hard", "soft"] = "hard"
    hard_min_margin: float = Field(0.0, ge=0, lt=0.5, description="hard rows: drop a prompt whose chosen beats its "
                                   "rejected by less than this (|P − 1/2| < δ), counted in the pairs stage")
    sampling: SamplingConfig = SamplingConfig()
    training: TrainConfig = TrainConfig()
    evaluate: EvaluateSection = EvaluateSection()
    seed: Seed = 0

    @model_validator(mode="after")
    def _check(self):
        if self.sampling.samples_per_prompt < 2:
            raise ValueError("sampling.samples_per_prompt must be at least 2: preferences compare responses")
        rule = self.rule()
        try:
            self.rule_at(self.iterations - 1)
        except ValueError as error:
            raise ValueError(f"'eta_final' {self.eta_final}: {error}") from None
        if self.hard_min_margin and self.rows != "hard":
            raise ValueError("'hard_min_margin' applies to rows: hard only; remove it or set rows: hard")
        if rule.pointwise and self.rows == "hard":
            raise ValueError(f"{self.algorithm}'s loss is pointwise (one response, target â(y)): use rows: soft")
        return self

    def identity(self, known: dict | None = None, defines: dict | None = None) -> dict:
        """What defines this run's numbers, key by key (:func:`~comal.llm.run_folder.flatten`): every
        setting but those of :data:`~comal.llm.run_folder.HOW_NOT_WHAT`, with each absolute path of
        :data:`PATH_KEYS` (:func:`load_config` makes them so) replaced by the digest of the file or
        folder's content, so neither its spelling nor a move
        matters (a name that is no absolute path, such as the demo's ``testbed``, is kept), and
        ``defines``: what else sets the numbers (the demo's testbed). ``known`` caches digests
        (:func:`~comal.llm.run_folder.content_digest`)."""
        from comal.llm.run_folder import HOW_NOT_WHAT, by_content, flatten

        def with_digests(settings: dict) -> dict:  # in place: model_dump's dicts are fresh
            for part in (settings.get("judge") or {}).get("judges") or []:
                with_digests({"judge": part})
            for keys in PATH_KEYS:
                parent = settings
                for key in keys[:-1]:
                    parent = parent.get(key) if isinstance(parent.get(key), dict) else {}
                if isinstance(parent.get(keys[-1]), str):
                    parent[keys[-1]] = by_content(parent[keys[-1]], known)
            return settings

        dump = with_digests(self.model_dump(mode="json"))
        return {key: value for key, value in flatten({**dump, "defines": defines or {}}).items()
                if key not in HOW_NOT_WHAT}

    def rule_at(self, t: int) -> Rule:
        """The rule of iteration ``t``: :meth:`rule` with η annealed toward ``eta_final``."""
        return self.rule().annealed(run_fraction(t, self.iterations), self.eta_final)

    def rule(self) -> Rule:
        """The rule this run executes (at its first iteration): the config's parameters over the rule's defaults."""
        if self.algorithm not in RULES:
            hint = NOT_RULES.get(self.algorithm, f"choose one of: {', '.join(RULES)}")
            raise ValueError(f"'algorithm': unknown algorithm '{self.algorithm}'; {hint}")
        kind = RULES[self.algorithm]
        has = {field.name for field in fields(kind)}
        given = {key: value for key, value in (("tau_eta_ratio", self.tau_eta_ratio), ("reference_period",
                 self.reference_period), ("inner", self.inner), ("tolerance", self.tolerance)) if value is not None}
        applies = {"tau_eta_ratio": kind.uses_tau, "reference_period": "period" in has,
                   "inner": "inner" in has, "tolerance": "tolerance" in has}
        extra = [key for key in given if not applies[key]]
        if extra:
            raise ValueError(f"'{extra[0]}' does not apply to {self.algorithm}; remove it from the config")
        if "tau_eta_ratio" in given and self.eta is None:
            raise ValueError("'tau_eta_ratio' needs 'eta' (or 'eta_code') too: τ = tau_eta_ratio / eta")
        overrides = {"eta": self.eta} if self.eta is not None else {}
        if "tau_eta_ratio" in given:
            overrides["tau"] = given.pop("tau_eta_ratio") / self.eta
        overrides.update({"period": given.pop("reference_period")} if "reference_period" in given else {})
        overrides.update(given)
        try:
            return make_rule(self.algorithm, JUDGE_SCALE, **overrides)
        except ValueError as error:
            raise ValueError(f"'algorithm' {self.algorithm} with these parameters: {error}") from None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}'; check its spelling against configs/ and the docs"
    if first["type"] == "missing":
        return f"missing key '{where}'"
    if first["type"] == "value_error":  # the project's own checks: their messages name the keys
        return str(first["ctx"]["error"])
    return f"'{where}': {first['msg']}"


PATH_KEYS = (("prompts",), ("model", "path"), ("model", "tokenizer"), ("judge", "path"), ("judge", "template_file"),
             ("evaluate", "prompts"))


def _relative_to(folder: Path, raw: dict) -> dict:
    """``raw`` with every relative path of :data:`PATH_KEYS` read from ``folder`` (the config's own),
    so a config works from any working directory; ``~`` is expanded, absolute paths are kept. The
    judges of a mixture are read the same way."""
    raw = dict(raw)
    judge = raw.get("judge")
    if isinstance(judge, dict) and isinstance(judge.get("judges"), list):
        raw["judge"] = {**judge, "judges": [_relative_to(folder, {"judge": part})["judge"] if isinstance(part, dict)
                                            else part for part in judge["judges"]]}
    for keys in PATH_KEYS:
        parent = raw
        for key in keys[:-1]:
            if not isinstance(parent.get(key), dict):
                break
            parent[key] = parent = dict(parent[key])
        else:
            value = parent.get(keys[-1])
            if isinstance(value, str) and value:
                path = Path(value).expanduser()
                parent[keys[-1]] = str(path if path.is_absolute() else (folder / path).resolve())
    return raw


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read and validate a YAML run configuration (``overrides`` replace top-level keys). Paths in
    it are relative to the config file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    if "eta_code" in raw:  # the official code's parameterisation, accepted for comparison
        code = raw.pop("eta_code")
        if isinstance(code, bool) or not isinstance(code, (int, float)) or not 0 < code < float("inf"):
            raise ConfigError(f"{path}: 'eta_code' must be a positive number (η = 1/eta_code), got {code!r}")
        raw["eta"] = 1.0 / code
    raw = _relative_to(path.parent.resolve(), raw)
    try:
        return RunConfig.model_validate({**raw, **(overrides or {})})
    except ValidationError as error:
        raise ConfigError(f"{path}: {_describe(error)}") from None
