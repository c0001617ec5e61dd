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


def prompt_of(sequence: Encoded) -> tuple[int, ...]:
    return sequence.ids[:sequence.response_start]


@dataclass(frozen=True)
class PackingCost:
    """Relative cost of a decoder row of ``L`` tokens, ``per_token · L + per_pair · L²``: the linear
    layers cost ``2 · (weights of a layer)`` FLOPs a token, attention ``4 · hidden`` a (query, key)
    pair, and a masked attention computes every pair of its row."""

    per_token: float
    per_pair: float

    def __call__(self, length: int) -> float:
        return self.per_token * length + self.per_pair * length**2

    @classmethod
    def of(cls, model) -> PackingCost | None:
        """The model's cost, or None where its attention takes no 4D mask (flash attention), so
        prompts cannot be shared."""
        if getattr(model.config, "_attn_implementation", "eager") not in ("eager", "sdpa"):
            return None
        layer = model.get_decoder().layers[0]
        return cls(2.0 * sum(p.numel() for p in layer.parameters()), 4.0 * model.config.hidden_size)


def row_length(sequences: Sequence[Encoded], row: Sequence[int]) -> int:
    """Tokens of a decoder row holding the prompt of ``row``'s sequences once, then each response."""
    return sequences[row[0]].response_start + sum(len(sequences[i].ids) - sequences[i].response_start for i in row)


def shared_prompt_rows(sequences: Sequence[Encoded], cost: PackingCost | None) -> list[list[int]]:
    """Which sequences share a row: each prompt's responses are split into rows of ``m``
    consecutive ones behind one copy of the prompt, ``m`` the cheapest under ``cost`` (``m = 1``,
    a row per sequence, when packing would not save: long responses, short prompts). ``cost`` None:
    a row per sequence."""
    if cost is None:
        return [[i] for i in range(len(sequences))]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, sequence in enumerate(sequences):
        groups.setdefault(prompt_of(sequence), []).append(index)
    rows = []
    for members in groups.values():
        splits = [[members[k:k + m] for k in range(0, len(members), m)] for m in range(1, len(members) + 1)]
        rows += min(splits, key=lambda split: sum(cost(row_length(sequences, row)) for row in split))
    return rows


def collate(sequences: Sequence[Encoded], pad_id: int, device=None, rows: Sequence[Sequence[int]] | None = None
            ) -> dict[str, torch.Tensor | int]:
    """Decoder rows (right-padded) for the log-probs of ``sequences``, and where their response
    tokens are.

    ``rows`` (:func:`shared_prompt_rows`; default a row per sequence) lists the sequences of each
    row, which share a prompt: the row holds the prompt once, then each response, every response
    attending to the prompt and to itself only (a 4D block mask) at the positions it would have
    alone, so each token's log-prob is the one a row of its own would give. ``source`` indexes
    the flattened ``[row, column]`` hidden states that predict each response token, ``target`` is
    the token and ``owner`` its sequence. Rows of one sequence each take a 2D padding mask."""
    rows = shared_prompt_rows(sequences, None) if rows is None else rows
    width = max(row_length(sequences, row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # 0 the prompt, j the row's j-th response
    source, target, owner = [], [], []
    for g, members in enumerate(rows):
        start = sequences[members[0]].response_start
        input_ids[g, :start] = torch.tensor(prompt_of(sequences[members[0]]), dtype=torch.long)
        positions[g, :start], segment[g, :start] = torch.arange(start), 0
        column = start
        for j, s in enumerate(members, 1):
            response = sequences[s].ids[start:]
            end = column + len(response)
            input_ids[g, column:end] = torch.tensor(response, dtype=torch.long)
            positions[g, column:end], segment[g, column:end] = torch.arange(start, start + len(response)), j
            if response:  # each token is predicted at the column before it, the first at the prompt's last
                skip = int(start == 0)  # without a prompt nothing predicts the first token
                source += [g * width + c for c in ([start - 1] + list(range(column, end - 1)))[skip:]]
                target += response[skip:]
                owner += [s] * (len(response) - skip)
            column = end
    real = segment >= 0
    if all(len(members) == 1 for members in rows):
        attention = real.long()
    else:  # causal, a response sees the prompt and itself; a padding column sees itself (no empty softmax row)
        query, key = segment[:, :, None], segment[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        attention = (causal & real[:, None, :] & ((key == 0) | (key == query))) | torch.eye(width, dtype=torch.bool)
        attention = attention[:, None]
    batch = {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions,
             "source": torch.tensor(source, dtype=torch.long), "target": torch.tensor(target, dtype=torch.long),
             "owner": torch.tensor(owner, dtype=torch.long), "count": len(sequences)}
    return {k: v.to(device) if device is not None and torch.is_tensor(v) else v for k, v in batch.items()}


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
    """``log softmax(h Wᵀ + b)[y]`` for a chunk of tokens ``[T, H] → [T]``."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if logit_bias is not None:
        logits = logits + logit_bias
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """``log π(y|x)`` per sequence of a :func:`collate` batch: the sum of its response tokens'
    next-token log-probs.

    The decoder runs once; the output layer then runs over the hidden states that predict response
    tokens only, each token's log-prob its logit minus its position's log-sum-exp. Where the logits
    of all those tokens would exceed ``LOGIT_BUDGET`` bytes (a large vocabulary), they are computed
    a chunk of tokens at a time and, with gradients, recomputed in the backward pass (activation
    checkpointing), so no ``[tokens, vocabulary]`` tensor of the whole batch exists in the forward or
    the backward pass. A model with a ``logit_bias(vocabulary, length)`` method (the testbed's
    constrained policy) has it added to its logits at each token's position, as its forward does.
    """
    from torch.utils.checkpoint import checkpoint

    source, targets = batch["source"], batch["target"]
    values = torch.zeros(batch["count"], device=source.device)
    if len(source) == 0:
        return values
    mask = batch["attention_mask"]
    if mask.dim() == 4 and getattr(model.config, "_attn_implementation", "eager") == "eager":  # eager adds its mask
        blocked = torch.finfo(model.dtype).min
        mask = torch.zeros(mask.shape, dtype=model.dtype, device=mask.device).masked_fill(~mask, blocked)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=mask,
                                 position_ids=batch["position_ids"]).last_hidden_state
    hidden = hidden.flatten(0, 1)[source]
    head = model.get_output_embeddings()
    add = None
    if hasattr(model, "logit_bias"):
        positions = batch["position_ids"].flatten()[source]
        add = model.logit_bias(head.weight.shape[0], int(positions.max()) + 1).to(hidden.device)[positions]
    size = max(1, LOGIT_BUDGET // (4 * head.weight.shape[0]))  # tokens a chunk
    recompute = torch.is_grad_enabled() and size < len(source)
    chunks = []
    for start in range(0, len(source), size):
        part = (hidden[start:start + size], head.weight, head.bias, targets[start:start + size],
                None if add is None else add[start:start + size])
        chunks.append(checkpoint(_token_logps, *part, use_reentrant=False) if recompute else _token_logps(*part))
    return values.index_add(0, batch["owner"], torch.cat(chunks).to(values.dtype))


class SequenceLogps(torch.nn.Module):
    """:func:`sequence_logps` of a causal LM as a module, so that a data-parallel wrapper
    (accelerate's DDP) sees the whole computation as its forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logps(self.model, batch)


def batched_logps(model, sequences: Sequence[Encoded], pad_id: int, batch_size: int = 8,
                  advance: Callable[[int], None] = lambda count: None, share_prompts: bool = True) -> np.ndarray:
    """Sequence log-probs of many sequences, without gradients, in float64 (``advance`` counts them).
    The sequences are taken a prompt's together, ``batch_size`` a batch, and (``share_prompts``)
    packed behind one copy of their prompt where that saves (:func:`shared_prompt_rows`)."""
    device = next(model.parameters()).device
    cost = PackingCost.of(model) if share_prompts else None
    rank: dict[tuple[int, ...], int] = {}  # prompts in order of first appearance
    for sequence in sequences:
        rank.setdefault(prompt_of(sequence), len(rank))
    order = sorted(range(len(sequences)), key=lambda i: rank[prompt_of(sequences[i])])
    values = np.empty(len(sequences))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chosen = [sequences[i] for i in order[start:start + batch_size]]
            batch = collate(chosen, pad_id, device, shared_prompt_rows(chosen, cost))
            values[order[start:start + batch_size]] = sequence_logps(model, batch).double().cpu().numpy()
            advance(len(chosen))
    return values
