"""Sequence log-probabilities of responses (response tokens only), with and without gradients.

A sequence is ``prompt_ids + response_ids``; ``log π(y|x) = Σ_t log π(y_t | x, y_<t)`` over the
response positions. Anchors (π_t, μ, …) are computed once per iteration without gradients and
stored as columns of the training data, so training holds only π_θ in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import inspect

import numpy as np
import torch
from transformers import LlamaForCausalLM

# transformers 5.24 renamed the key/value cache argument of ``forward`` and ``generate`` from
# ``past_key_values`` to ``cache`` (the old name still works, with a deprecation warning)
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def cache_argument(cache) -> dict:
    """``{name: cache}`` under the keyword this transformers version reads (:data:`CACHE_ARGUMENT`)."""
    return {CACHE_ARGUMENT: cache}


@dataclass(frozen=True)
class Encoded:
    """Token ids of one prompt + response; the response starts at ``response_start``."""

    ids: tuple[int, ...]
    response_start: int


def conversation_text(tokenizer, user: str, assistant: str | None = None) -> str:
    """The chat template's rendering when the tokenizer has one, else plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user}]
        if assistant is None:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": assistant}],
                                             tokenize=False)
    return user if assistant is None else f"{user}\n{assistant}"


def encode(tokenizer, prompt: str, response_ids: Sequence[int]) -> Encoded:
    """The prompt as the model sees it (chat template when the tokenizer has one), then the response."""
    prompt_ids = list(tokenizer(conversation_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])
    if not getattr(tokenizer, "chat_template", None) and tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids  # a chat template writes its own BOS
    return Encoded(tuple(prompt_ids) + tuple(response_ids), len(prompt_ids))


def with_pad_token(tokenizer):
    """``tokenizer``, its EOS token made the pad token where it has none (batches are padded)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of token-id rows padded on the left, so every row ends
    at the last column (where the next-token logits of all rows are)."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in rows], device=device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=device)
    return input_ids, attention


def real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (``cumsum(mask) − 1``), as ``generate`` counts them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def collate(sequences: Sequence[Encoded], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask``, ``position_ids`` (real tokens counted from 0)
    and the mask of response tokens; every row ends at the last column, so the responses sit in
    the last columns and only those need logits."""
    input_ids, attention = left_padded([s.ids for s in sequences], pad_id)
    response = torch.zeros_like(attention, dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        response[row, input_ids.shape[1] - len(sequence.ids) + sequence.response_start:] = True
    batch = {"input_ids": input_ids, "attention_mask": attention, "position_ids": real_positions(attention),
             "response_mask": response}
    return {key: value.to(device) for key, value in batch.items()} if device is not None else batch


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The key/value cache of a batch of left-padded rows, for a later call to continue from.

    Positions count real tokens only (:func:`real_positions`), as ``generate`` counts them, so a
    continuation gives the logits one call on the whole rows would give.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=input_ids, attention_mask=attention_mask, position_ids=real_positions(attention_mask),
          use_cache=True, logits_to_keep=1, **cache_argument(cache))
    return cache


LOGIT_BUDGET = 64 * 2**20  # bytes of full-vocabulary logits held at once (float32)


def _token_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                 logit_bias: torch.Tensor | None) -> torch.Tensor:
    """``log softmax(h Wᵀ + b)[y]`` for a chunk of positions ``[B, C, H] → [B, C]``."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if logit_bias is not None:
        logits = logits + logit_bias
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``log π(y|x)`` per row: the sum of next-token log-probs over the response tokens.

    The decoder runs once; the output layer then runs over the response columns only, each token's
    log-prob its logit minus its position's log-sum-exp. Where the logits of all those columns would
    exceed ``LOGIT_BUDGET`` bytes (a large vocabulary), they are computed a chunk of positions at a
    time and, with gradients, recomputed in the backward pass (activation checkpointing), so no
    ``[rows, length, vocabulary]`` tensor exists in the forward or the backward pass. A model with a ``logit_bias(vocabulary,
    length)`` method (the testbed's constrained policy) has it added to its logits, as its forward does.
    """
    from torch.utils.checkpoint import checkpoint

    mask = batch["response_mask"]
    keep = min(int(mask.sum(-1).max()) + 1, mask.shape[1])  # the response columns and the one before them
    if keep < 2:
        return torch.zeros(mask.shape[0], device=mask.device)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 position_ids=batch["position_ids"]).last_hidden_state[:, -keep:-1]
    targets = batch["input_ids"][:, -(keep - 1):]
    head = model.get_output_embeddings()
    width = mask.shape[1]
    add = model.logit_bias(head.weight.shape[0], width)[width - keep:width - 1].to(hidden.device) \
        if hasattr(model, "logit_bias") else None
    size = max(1, LOGIT_BUDGET // (4 * hidden.shape[0] * head.weight.shape[0]))  # positions a chunk
    recompute = torch.is_grad_enabled() and size < keep - 1
    chunks = []
    for start in range(0, keep - 1, size):
        part = (hidden[:, start:start + size], head.weight, head.bias, targets[:, start:start + size],
                None if add is None else add[start:start + size])
        chunks.append(checkpoint(_token_logps, *part, use_reentrant=False) if recompute else _token_logps(*part))
    return (torch.cat(chunks, dim=1) * mask[:, width - (keep - 1):]).sum(dim=-1)


class SequenceLogps(torch.nn.Module):
    """:func:`sequence_logps` of a causal LM as a module, so that a data-parallel wrapper
    (accelerate's DDP) sees the whole computation as its forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logps(self.model, batch)


def batched_logps(model, sequences: Sequence[Encoded], pad_id: int, batch_size: int = 8,
                  advance: Callable[[int], None] = lambda count: None) -> np.ndarray:
    """Sequence log-probs of many sequences, without gradients, in float64 (``advance`` counts them)."""
    device = next(model.parameters()).device
    values = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = collate(sequences[start:start + batch_size], pad_id, device)
            values.append(sequence_logps(model, batch).double().cpu().numpy())
            advance(len(values[-1]))
    return np.concatenate(values) if values else np.empty(0)
