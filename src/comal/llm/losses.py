"""Sampled-loss forms of the rules, built from their :class:`~comal.rules.ProxStep` s.

A proximal step ``log π_out = anchor + η a − log Z`` has an unknown normaliser when responses are
sampled, so the loss regresses the difference between two responses of one prompt:

    h_θ(y, y') = [log π_θ(y) − anchor(y)] − [log π_θ(y') − anchor(y')]
    loss       = (h_θ(y, y') − η · target(y, y'))²

with ``anchor(y) = Σ_k w_k log π_k(y)`` over stored sequence log-probs and ``target`` either
``â(y) − â(y')`` (soft rows) or ``1/2`` for a judged (chosen, rejected) pair (hard rows). Its
minimiser over a free policy is exactly the tabular step (``tests/test_losses.py``). SPPO's form
is pointwise, ``(log π_θ(y) − anchor(y) − η â(y))²``. Every function returns per-row losses;
:func:`step_loss` is the one the trainer calls.
"""

from __future__ import annotations

from typing import Mapping

import torch

from comal.rules import ProxStep


def anchor_logps(step: ProxStep, logps: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``Σ_k w_k log π_k(y)`` for a batch, from the stored sequence log-probs of each named policy."""
    missing = [name for name, weight in step.anchor.items() if weight and name not in logps]
    if missing:
        raise KeyError(f"the anchor of '{step.output}' needs log-probs of {missing}; compute them first")
    return sum(weight * logps[name] for name, weight in step.anchor.items() if weight)


def pairwise_margin(step: ProxStep, policy_first: torch.Tensor, policy_second: torch.Tensor,
                    anchors_first: Mapping[str, torch.Tensor], anchors_second: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``h_θ(y, y') = [log π_θ(y) − anchor(y)] − [log π_θ(y') − anchor(y')]``."""
    return (policy_first - anchor_logps(step, anchors_first)) - (policy_second - anchor_logps(step, anchors_second))


def pairwise_loss(step: ProxStep, policy_first: torch.Tensor, policy_second: torch.Tensor,
                  anchors_first: Mapping[str, torch.Tensor], anchors_second: Mapping[str, torch.Tensor],
                  target: torch.Tensor | float) -> torch.Tensor:
    """``(h_θ(y, y') − η · target)²`` for pairs ``(y, y')`` (``y`` = chosen for hard rows)."""
    return (pairwise_margin(step, policy_first, policy_second, anchors_first, anchors_second) - step.eta * target) ** 2


def pointwise_loss(step: ProxStep, policy: torch.Tensor, anchors: Mapping[str, torch.Tensor],
                   advantage: torch.Tensor) -> torch.Tensor:
    """SPPO's form ``(log π_θ(y) − anchor(y) − η â(y))²`` for single responses."""
    return (policy - anchor_logps(step, anchors) - step.eta * advantage) ** 2


def step_loss(step: ProxStep, policy_first: torch.Tensor, policy_second: torch.Tensor | None,
              anchors_first: Mapping[str, torch.Tensor], anchors_second: Mapping[str, torch.Tensor] | None,
              target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses of ``step`` and what they fit: the margins ``h_θ`` of pairs, or the log-ratios
    ``log π_θ(y) − anchor(y)`` of single responses (``policy_second`` None: the pointwise form)."""
    if policy_second is None:
        return pointwise_loss(step, policy_first, anchors_first, target), \
            (policy_first - anchor_logps(step, anchors_first)).detach()
    margin = pairwise_margin(step, policy_first, policy_second, anchors_first, anchors_second)
    return (margin - step.eta * target) ** 2, margin.detach()
