"""Run configuration: YAML validated on load (unknown keys and wrong types name the key).

The fields follow the paper's vocabulary: ``eta`` is η (the official code's ``eta`` is 1/η, here
``eta_code``), ``tau_eta_ratio`` is ητ (the weight on the reference μ), ``reference_period`` is
COMAL's K (μ ← π_t every K iterations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from comal.llm.sample import SamplingConfig
from comal.llm.train import TrainConfig

SAMPLED_ALGORITHMS = ("comal", "inpo", "onpo", "sppo", "iter-ipo", "ipo", "dpo")


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(Strict):
    path: str = Field(description="local folder of a transformers causal LM (from_pretrained)")
    tokenizer: Optional[str] = Field(None, description="tokenizer folder; default: the model's")
    lora: Optional[dict] = Field(None, description="peft LoraConfig arguments; omit for full fine-tuning")


class JudgeSection(Strict):
    kind: Literal["llm", "reward-model"] = "llm"
    path: str = Field(description="local folder of the judge model")
    template: str = Field("pairwise", description="'pairwise' (the preset) or a template with "
                          "{instruction}, {output_1}, {output_2}")
    answer_prefix: str = "Output ("
    answer_tokens: tuple[str, str] = ("a", "b")
    batch_size: int = Field(8, ge=1)


class EvaluateSection(Strict):
    prompts: Optional[str] = Field(None, description="held-out prompts (.jsonl with a prompt field)")
    max_prompts: int = Field(64, ge=1)


class RunConfig(Strict):
    model: ModelSection
    judge: JudgeSection
    prompts: str = Field(description=".jsonl file, one object per line with the prompt field")
    prompt_field: str = "prompt"
    prompts_per_iteration: Optional[int] = Field(None, ge=1, description="default: all prompts each iteration")
    algorithm: Literal[SAMPLED_ALGORITHMS] = "comal"
    iterations: int = Field(24, ge=1)
    eta: float = Field(500.0, gt=0, description="η; the official code's eta_code is 1/η")
    tau_eta_ratio: float = Field(1 / 3, ge=0, le=1, description="ητ, the weight on the reference μ")
    reference_period: int = Field(12, ge=1, description="COMAL: μ ← π_t every this many iterations")
    rows: Literal["hard", "soft"] = "hard"
    beta: float = Field(0.1, gt=0, description="DPO's β (dpo only)")
    sampling: SamplingConfig = SamplingConfig()
    training: TrainConfig = TrainConfig()
    evaluate: EvaluateSection = EvaluateSection()
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if self.sampling.samples_per_prompt < 2:
            raise ValueError("sampling.samples_per_prompt must be at least 2: preferences compare responses")
        if self.algorithm == "sppo" and self.rows == "hard":
            raise ValueError("sppo's loss is pointwise: use rows: soft")
        return self


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}'; check its spelling against configs/ and the docs"
    if first["type"] == "missing":
        return f"missing key '{where}'"
    return f"'{where}': {first['msg']}"


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read and validate a YAML run configuration (``overrides`` replace top-level keys)."""
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
        raw["eta"] = 1.0 / float(raw.pop("eta_code"))
    try:
        return RunConfig.model_validate({**raw, **(overrides or {})})
    except ValidationError as error:
        raise ConfigError(f"{path}: {_describe(error)}") from None
