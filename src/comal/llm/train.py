"""Training stage: fit π_θ to one proximal step of a rule by minimising its sampled loss.

Rows carry the stored anchor log-probs (computed without gradients beforehand), so only π_θ is in
memory. ``accelerate`` handles device, precision, gradient accumulation and multi-GPU; the learning
rate follows transformers' linear schedule with warm-up. Metrics go to a JSON-lines file and to
accelerate's trackers.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch
from pydantic import BaseModel, Field, model_validator

from comal.llm.logprobs import Encoded, PackingCost, SequenceLogps, collate, shared_prompt_rows
from comal.llm.losses import step_loss
from comal.llm.progress import Bar, no_bar
from comal.rules import ProxStep
from comal.settings import STRICT, Seed


@dataclass(frozen=True)
class TrainRow:
    """One regression row. Pairwise: ``first``/``second`` with target ``â(y) − â(y')`` or 1/2.
    Pointwise (SPPO): ``second`` is None and ``target`` is ``â(y)``."""

    first: Encoded
    anchors_first: Mapping[str, float]
    target: float
    second: Encoded | None = None
    anchors_second: Mapping[str, float] = field(default_factory=dict)
    weight: float = 1.0  # how many identical rows this one stands for


class TrainConfig(BaseModel):
    model_config = STRICT

    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(5e-7, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(8, ge=1, description="rows per forward pass and device")
    gradient_accumulation: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="auto: bf16 where supported")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, slower")
    share_prompts: bool = Field(True, description="forward a prompt once for the responses of it a batch holds, "
                                "where that saves (eager or sdpa attention)")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list,
                                                           description="accelerate trackers besides metrics.jsonl")
    seed: Seed = 0

    @model_validator(mode="after")
    def _trackers_installed(self):
        import accelerate.utils

        installed = {"tensorboard": accelerate.utils.is_tensorboard_available, "wandb": accelerate.utils.is_wandb_available}
        missing = [name for name in self.report_to if not installed[name]()]
        if missing:
            raise ValueError(f"training.report_to: {missing[0]} is not installed; `pip install {missing[0]}` "
                             "or remove it from report_to")
        return self


def _precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _collate_rows(rows: Sequence[TrainRow], pad_id: int, cost: PackingCost | None = None) -> dict:
    """One padded batch of the batch's *distinct* sequences (one forward pass: the soft rows of a
    prompt share its m responses among m(m − 1)/2 pairs; with ``cost``, a prompt's responses share
    one copy of it where that saves), their indices per row, and the columns."""
    names = sorted({name for row in rows for name in row.anchors_first})
    pairwise = rows[0].second is not None
    position: dict[Encoded, int] = {}
    for row in rows:
        for sequence in (row.first, row.second) if pairwise else (row.first,):
            position.setdefault(sequence, len(position))
    sequences = list(position)
    batch = {"sequences": collate(sequences, pad_id, rows=shared_prompt_rows(sequences, cost)),
             "first": torch.tensor([position[row.first] for row in rows]),
             "anchors_first": {n: torch.tensor([row.anchors_first[n] for row in rows]) for n in names},
             "target": torch.tensor([row.target for row in rows]),
             "weight": torch.tensor([row.weight for row in rows])}
    if pairwise:
        batch["second"] = torch.tensor([position[row.second] for row in rows])
        batch["anchors_second"] = {n: torch.tensor([row.anchors_second[n] for row in rows]) for n in names}
    return batch


class PromptGroupedOrder(torch.utils.data.Sampler):
    """Row indices in a fresh random order every epoch, with each prompt's rows kept together.

    The prompts are shuffled and so are the rows within a prompt; consecutive batches then hold the
    rows of one or two prompts, whose m responses (shared among m(m − 1)/2 soft rows) are forwarded
    once per batch by :func:`_collate_rows` instead of once per row they appear in.
    """

    def __init__(self, rows: Sequence[TrainRow], generator: torch.Generator):
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row.first.ids[:row.first.response_start], []).append(index)
        self.groups = list(groups.values())
        self.generator = generator

    def __len__(self) -> int:
        return sum(len(group) for group in self.groups)

    def __iter__(self):
        for g in torch.randperm(len(self.groups), generator=self.generator).tolist():
            group = self.groups[g]
            yield from (group[i] for i in torch.randperm(len(group), generator=self.generator).tolist())


def row_losses(logps: SequenceLogps, step: ProxStep, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses of ``step`` on a collated batch and the fitted margins (or log-ratios);
    ``logps`` is π_θ's :class:`SequenceLogps` (or its data-parallel wrapper)."""
    policy = logps(batch["sequences"])
    second = policy[batch["second"]] if "second" in batch else None
    return step_loss(step, policy[batch["first"]], second, batch["anchors_first"], batch.get("anchors_second"),
                     batch["target"])


def step_batches(rows: Sequence[TrainRow], config: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """Per optimiser step of ``epoch``, its micro-batches of row indices, ``batch_size`` rows each
    (``gradient_accumulation`` of them a step), in :class:`PromptGroupedOrder`. The same on every
    process, so a step's rows do not depend on how many processes share them."""
    order = list(PromptGroupedOrder(rows, torch.Generator().manual_seed(config.seed + epoch)))
    micro = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    return [micro[i:i + config.gradient_accumulation] for i in range(0, len(micro), config.gradient_accumulation)]


def process_share(micro_batch: list[int], rank: int, count: int) -> tuple[list[int], float]:
    """Process ``rank``'s contiguous part of a micro-batch (a prompt's rows stay together) and the
    factor its loss counts with: a process left without rows forwards the first row at weight 0,
    so every process takes part in the gradient's all-reduce."""
    size = len(micro_batch)
    part = micro_batch[rank * size // count:(rank + 1) * size // count]
    return (part, 1.0) if part else (micro_batch[:1], 0.0)


def train(model, rows: Sequence[TrainRow], step: ProxStep, config: TrainConfig, *, pad_id: int,
          log_path: str | Path | None = None, accelerator=None, bar: Bar = no_bar) -> list[dict]:
    """Minimise the step's sampled loss over ``rows``; returns the per-optimiser-step metrics.

    Each optimiser step minimises the weighted mean loss of its rows, ``Σ wᵢ ℓᵢ / Σ wᵢ``, however
    they are shared among processes (data-parallel through accelerate: each process forwards its
    part of every micro-batch and the all-reduced gradient is the one-process gradient)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    if not rows:
        raise ValueError("no training rows: every prompt was skipped or judged a tie; check the earlier stages")
    if accelerator is None:
        accelerator = Accelerator(mixed_precision=_precision(config.mixed_precision),
                                  log_with=list(config.report_to) or None,
                                  project_dir=Path(log_path).parent if log_path is not None else None)
        if config.report_to:
            accelerator.init_trackers("comal", config=config.model_dump(exclude={"report_to"}))
    _check_sharding(accelerator, config)
    set_seed(config.seed)
    if config.gradient_checkpointing:  # transformers 5 renamed it activation checkpointing
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # one fused kernel over all parameters (3.5× faster a step than the per-tensor loop on a CPU)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    total = config.epochs * len(step_batches(rows, config, 0))
    scheduler = get_linear_schedule_with_warmup(optimiser, int(config.warmup_ratio * total), total)
    cost = PackingCost.of(model) if config.share_prompts else None
    prepared, optimiser = accelerator.prepare(SequenceLogps(model), optimiser)
    prepared.train()
    metrics, log = [], open(log_path, "a") if log_path is not None and accelerator.is_main_process else None
    with bar(f"train: optimiser steps ({len(rows)} rows)", total) as advance:
        for epoch in range(config.epochs):
            for micro_batches in step_batches(rows, config, epoch):
                record = _optimiser_step(prepared, rows, micro_batches, optimiser, scheduler, accelerator, step,
                                         config, pad_id, cost)
                metrics.append({"epoch": epoch, "step": len(metrics), **record})
                accelerator.log(metrics[-1], step=len(metrics))
                if log is not None:
                    log.write(json.dumps(metrics[-1]) + "\n")
                advance(1)
    if log is not None:
        log.close()
    if config.report_to:
        accelerator.end_training()
    if config.gradient_checkpointing:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    model.eval()
    return metrics


def _check_sharding(accelerator, config: TrainConfig) -> None:
    """Refuse the launch setups this loop does not support yet, before any step: weights sharded
    across processes (FSDP, DeepSpeed ZeRO-3; the main process saves its own copy of the weights),
    and accumulation under DeepSpeed (which counts micro-batches itself)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if kind == DistributedType.FSDP or (kind == DistributedType.DEEPSPEED and plugin.zero_stage == 3):
        raise ValueError("training with the weights sharded (FSDP, DeepSpeed ZeRO-3) is not supported yet: the "
                         "checkpoint is saved from the main process's copy; launch with configs/accelerate/ddp.yaml "
                         "or zero2.yaml")
    if kind == DistributedType.DEEPSPEED:
        if config.gradient_accumulation != 1:
            raise ValueError("under DeepSpeed set training.gradient_accumulation: 1 (raise training.batch_size instead)")
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = max(1, config.batch_size // accelerator.num_processes)


def _optimiser_step(logps: SequenceLogps, rows: Sequence[TrainRow], micro_batches: list[list[int]], optimiser,
                    scheduler, accelerator, step: ProxStep, config: TrainConfig, pad_id: int,
                    cost: PackingCost | None) -> dict:
    """One optimiser step on its micro-batches (this process's share of each); the step's metrics."""
    from accelerate.utils import send_to_device

    total_weight = sum(rows[i].weight for batch in micro_batches for i in batch)
    learning_rate = scheduler.get_last_lr()[0]  # the rate this step uses
    totals = [0.0, 0.0, 0.0, 0.0]  # Σ wℓ / Σ w, Σ margin, rows, rows with a positive margin
    for number, micro_batch in enumerate(micro_batches):
        part, counts = process_share(micro_batch, accelerator.process_index, accelerator.num_processes)
        batch = send_to_device(_collate_rows([rows[i] for i in part], pad_id, cost), accelerator.device)
        last = number == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(logps):  # all-reduce once a step
            losses, margins = row_losses(logps, step, batch)
            weighted = counts * (batch["weight"] * losses).sum() / total_weight
            accelerator.backward(weighted * accelerator.num_processes)  # the all-reduce averages over processes
        if counts:
            totals = [totals[0] + weighted.item(), totals[1] + margins.sum().item(), totals[2] + len(part),
                      totals[3] + (margins > 0).sum().item()]
    accelerator.clip_grad_norm_(logps.parameters(), config.max_grad_norm)
    optimiser.step()
    scheduler.step()
    optimiser.zero_grad()
    summed = accelerator.reduce(torch.tensor(totals, dtype=torch.float64, device=accelerator.device), reduction="sum")
    loss, margin, count, right = summed.tolist()
    record = {"loss": loss, "margin": margin / count, "learning_rate": learning_rate}
    if rows[0].second is not None:
        record["pair_accuracy"] = right / count
    return record
