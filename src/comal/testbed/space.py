"""The enumerable response space and a causal LM constrained to it.

Prompts are ``prompt_length`` tokens; a response is exactly ``length`` content tokens then EOS,
so there are ``len(tokens) ** length`` responses, indexed in lexicographic order (the digits of the
index in base ``len(tokens)``). :class:`ConstrainedLlama` masks its logits outside the space at
every response position, so generation, sequence log-probs and training all use the same
distribution, and :func:`exact_distribution` gives it exactly by enumeration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import LlamaForCausalLM

from comal.llm.logprobs import CACHE_ARGUMENT


@dataclass(frozen=True)
class ResponseSpace:
    tokens: tuple[int, ...]  # content token ids
    length: int  # content tokens per response
    eos: int
    prompt_length: int  # tokens of every prompt (BOS included)

    @property
    def size(self) -> int:
        return len(self.tokens) ** self.length

    def responses(self) -> np.ndarray:
        """Every response as token ids ``[size, length + 1]`` (EOS last), in index order."""
        digits = np.indices((len(self.tokens),) * self.length).reshape(self.length, -1).T
        return np.concatenate([np.asarray(self.tokens)[digits], np.full((self.size, 1), self.eos)], axis=1)

    def index(self, response_ids) -> int | None:
        """Index of a response (content tokens then EOS), or None when it is outside the space."""
        ids = list(response_ids)
        if len(ids) != self.length + 1 or ids[-1] != self.eos:
            return None
        position = {token: i for i, token in enumerate(self.tokens)}
        if any(token not in position for token in ids[:-1]):
            return None
        return int(np.ravel_multi_index([position[t] for t in ids[:-1]], (len(self.tokens),) * self.length))

    def allowed_mask(self, vocab_size: int, sequence_length: int) -> torch.Tensor:
        """``[sequence_length, vocab]`` additive mask: 0 where the next token is allowed, −inf elsewhere.

        Row ``i`` holds the logits that predict token ``i + 1``; rows before the response are free.
        """
        mask = torch.zeros(sequence_length, vocab_size)
        content = torch.full((vocab_size,), float("-inf"))
        content[list(self.tokens)] = 0.0
        end = torch.full((vocab_size,), float("-inf"))
        end[self.eos] = 0.0
        for step in range(self.length + 1):
            row = self.prompt_length - 1 + step
            if row < sequence_length:
                mask[row] = content if step < self.length else end
        return mask


class ConstrainedLlama(LlamaForCausalLM):
    """A Llama causal LM whose next-token distribution is restricted to the response space.

    The space lives in ``config.response_space`` (saved with the model), so ``from_pretrained``
    gives the same constrained policy back.
    """

    @property
    def space(self) -> ResponseSpace:
        return ResponseSpace(**{**self.config.response_space, "tokens": tuple(self.config.response_space["tokens"])})

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        past = kwargs.get(CACHE_ARGUMENT)  # read before the forward pass extends the cache
        offset = 0 if past is None or not hasattr(past, "get_seq_length") else past.get_seq_length()
        output = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        total = offset + (input_ids.shape[1] if input_ids is not None else kwargs["inputs_embeds"].shape[1])
        kept = output.logits.shape[1]  # the last positions only, under ``logits_to_keep``
        output.logits = output.logits + self.logit_bias(output.logits.shape[-1], total)[total - kept:].to(output.logits)
        return output

    def logit_bias(self, vocabulary: int, length: int) -> torch.Tensor:
        """``[length, vocabulary]``: 0 where a token may follow at that position, −inf elsewhere
        (added to the logits; :func:`~comal.llm.logprobs.sequence_logps` reads it too)."""
        return self.space.allowed_mask(vocabulary, length)


def exact_distribution(model: ConstrainedLlama, prompt_ids, batch_size: int = 512) -> np.ndarray:
    """``π(y | x)`` for every response of the space, by enumerating sequence log-probs."""
    space = model.space
    if len(prompt_ids) != space.prompt_length:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this space needs {space.prompt_length}")
    responses = torch.as_tensor(space.responses())
    sequences = torch.cat([torch.as_tensor(prompt_ids).expand(len(responses), -1), responses], dim=1)
    log_probs = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            logits = model(input_ids=batch).logits[:, space.prompt_length - 1:-1].double()
            targets = batch[:, space.prompt_length:]
            log_probs.append(torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0].sum(-1))
    return torch.cat(log_probs).double().exp().numpy()
