"""Sampling stage: k responses per prompt from the current policy with transformers ``generate``.

Every prompt has its own seed, fixed by the run's seed and the prompt's text
(:func:`prompt_seed`), and its k responses are drawn together by the Gumbel-max trick from that
prompt's own random stream (:class:`SeededPrompts`): the samples of a prompt do not depend on the
batch size, on the other prompts of the call, on the number of processes the prompts are shared
among, or on where a resumed run starts. Prompts that do not fit the model's context with room for ``max_new_tokens``
are truncated from the left or skipped, and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from pydantic import BaseModel, Field
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TopPLogitsWarper

from comal.llm.logprobs import cache_argument, encode, left_padded, prefill
from comal.settings import STRICT, Seed


class SamplingConfig(BaseModel):
    model_config = STRICT

    samples_per_prompt: int = Field(5, ge=1, le=2**31 - 1, description="k responses per prompt (the paper: 5)")
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1, le=2**20, description="at most the model's context less a prompt")
    batch_size: int = Field(8, ge=1, description="prompts per generate call")
    seed: Seed = 0
    long_prompts: Literal["truncate", "skip"] = "truncate"
    backend: Literal["transformers", "vllm"] = Field("transformers", description="vllm where it is installed")
    vllm: dict = Field(default_factory=dict, description="arguments of vllm.LLM (gpu_memory_utilization, "
                       "tensor_parallel_size, enforce_eager, max_model_len, dtype: float32 unless given)")


@dataclass
class Samples:
    """Per kept prompt, k responses as token ids (ending in EOS when the model stopped) and text.

    ``counts`` weigh each response (None: one sample each); an exact sampler gives every response
    once with its expected count under the policy (the limit of infinitely many samples).
    """

    prompts: list[str] = field(default_factory=list)
    response_ids: list[list[tuple[int, ...]]] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)
    truncated: int = 0
    skipped: int = 0
    counts: list[list[float]] | None = None


def prompt_seed(seed: int, prompt: str) -> int:
    """The seed of the responses to ``prompt`` in a round seeded ``seed`` (63 bits)."""
    digest = hashlib.blake2b(f"{seed}\x00{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class SeededPrompts(LogitsProcessor):
    """Sampling as greedy decoding of perturbed scores, one random stream per prompt (Gumbel-max).

    The rows are ``k`` samples of each prompt in turn. Each step, every row's next-token scores
    become ``z/T`` with the tokens outside the top-p nucleus removed, plus Gumbel noise ``−log E``,
    ``E ~ Exp(1)``, a ``[k, vocabulary]`` block of it drawn from the prompt's own generator; the
    argmax is a draw from ``softmax(z/T)`` restricted to the nucleus. A prompt's block is drawn
    every step whatever the other rows do, so its samples depend on its seed and its own scores.
    """

    def __init__(self, seeds: Sequence[int], samples_per_prompt: int, temperature: float, top_p: float):
        self.generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        self.k, self.temperature = samples_per_prompt, temperature
        self.nucleus = TopPLogitsWarper(top_p) if top_p < 1 else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.nucleus is not None:
            scores = self.nucleus(input_ids, scores)
        noise = torch.cat([torch.empty(self.k, scores.shape[-1]).exponential_(generator=g) for g in self.generators])
        return scores - noise.log().to(scores.device)


def context_limit(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def fitted_prompts(tokenizer, prompts: Sequence[str], config: SamplingConfig, limit: int | None,
                   result: Samples) -> list[tuple[str, tuple[int, ...]]]:
    """Each prompt's token ids, cut from the left (or the prompt skipped) where it leaves less than
    ``max_new_tokens`` of a ``limit``-token context; ``result`` counts both."""
    kept = []
    for prompt in prompts:
        ids = encode(tokenizer, prompt, ()).ids
        room = None if limit is None else limit - config.max_new_tokens
        if room is not None and len(ids) > room:
            if config.long_prompts == "skip" or room < 1:
                result.skipped += 1
                continue
            ids, result.truncated = ids[-room:], result.truncated + 1
        kept.append((prompt, ids))
    return kept


def _collected(result: Samples, tokenizer, kept: list[tuple[str, tuple[int, ...]]],
               drawn: Sequence[list[tuple[int, ...]]]) -> Samples:
    for (prompt, _), responses in zip(kept, drawn):
        result.prompts.append(prompt)
        result.response_ids.append(responses)
        result.texts.append([tokenizer.decode(r, skip_special_tokens=True) for r in responses])
    return result


def sample(model, tokenizer, prompts: Sequence[str], config: SamplingConfig,
           advance: Callable[[int], None] = lambda count: None) -> Samples:
    """Draw ``config.samples_per_prompt`` responses for every prompt (``advance`` counts sequences;
    a skipped prompt counts as drawn)."""
    result = Samples()
    kept = fitted_prompts(tokenizer, prompts, config, context_limit(model), result)
    advance(result.skipped * config.samples_per_prompt)

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    drawn: dict[int, list[tuple[int, ...]]] = {}
    k = config.samples_per_prompt
    by_length = sorted(range(len(kept)), key=lambda n: len(kept[n][1]))  # batches of alike lengths pad little
    decoding = GenerationConfig(do_sample=False, max_new_tokens=config.max_new_tokens, pad_token_id=pad_id,
                                eos_token_id=tokenizer.eos_token_id)  # greedy on SeededPrompts' perturbed scores
    for start in range(0, len(kept), config.batch_size):
        numbers = by_length[start:start + config.batch_size]
        batch = [kept[n] for n in numbers]
        input_ids, attention = left_padded([ids for _, ids in batch], pad_id, device)
        width = input_ids.shape[1]
        rows = SeededPrompts([prompt_seed(config.seed, prompt) for prompt, _ in batch], k, config.temperature,
                             config.top_p)
        with torch.no_grad():
            # each prompt is read once and its cache shared by its k samples (generate alone reads it k times)
            cache = prefill(model, input_ids[:, :-1], attention[:, :-1]) if width > 1 else None
            if cache is not None:
                cache.batch_repeat_interleave(k)
            output = model.generate(input_ids=input_ids.repeat_interleave(k, 0),
                                    attention_mask=attention.repeat_interleave(k, 0), **cache_argument(cache),
                                    generation_config=decoding, logits_processor=LogitsProcessorList([rows]))
        generated = output[:, width:].tolist()
        for row, number in enumerate(numbers):
            drawn[number] = [_until_eos(tokens, tokenizer.eos_token_id) for tokens in generated[row * k:(row + 1) * k]]
        advance(len(batch) * k)
    return _collected(result, tokenizer, kept, [drawn[number] for number in range(len(kept))])


def sample_with_vllm(model_path, tokenizer, prompts: Sequence[str], config: SamplingConfig,
                     advance: Callable[[int], None] = lambda count: None) -> Samples:
    """The same stage on vLLM (imported only here): the checkpoint is loaded into an engine built
    with ``config.vllm`` as its arguments, every prompt is one request with its own seed
    (:func:`prompt_seed`, so its k samples do not depend on the other prompts), long prompts are
    cut or skipped as with ``generate``, and the engine is freed before the stage returns (the fit
    that follows needs the memory). The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``
    unless set otherwise): a round is one batch, and an engine process would cost its start-up every
    round (on 2 CPU cores, 31 s against 159 s for tests/vllm_sampling.py). vLLM's draws are its own:
    the same distribution as :func:`sample`, not the same tokens."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise ValueError("sampling.backend is 'vllm' but vllm is not installed; pip install vllm (on a CPU: "
                         "`make vllm`), or set sampling.backend: transformers") from None
    import gc
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    engine = LLM(model=str(model_path), tokenizer=str(model_path), seed=config.seed,
                 **{"dtype": "float32", **config.vllm})
    try:
        result = Samples()
        kept = fitted_prompts(tokenizer, prompts, config, engine.llm_engine.model_config.max_model_len, result)
        advance(result.skipped * config.samples_per_prompt)
        params = [SamplingParams(n=config.samples_per_prompt, temperature=config.temperature, top_p=config.top_p,
                                 max_tokens=config.max_new_tokens, seed=prompt_seed(config.seed, prompt))
                  for prompt, _ in kept]
        outputs = engine.generate([{"prompt_token_ids": list(ids)} for _, ids in kept], params, use_tqdm=False)
        advance(len(kept) * config.samples_per_prompt)
        drawn = [[_until_eos(list(choice.token_ids), tokenizer.eos_token_id)
                  for choice in sorted(output.outputs, key=lambda choice: choice.index)] for output in outputs]
        return _collected(result, tokenizer, kept, drawn)
    finally:
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _until_eos(tokens: list[int], eos_id: int | None) -> tuple[int, ...]:
    """The generated tokens up to and including the first EOS (the rest is padding)."""
    if eos_id is not None and eos_id in tokens:
        return tuple(tokens[:tokens.index(eos_id) + 1])
    return tuple(tokens)
