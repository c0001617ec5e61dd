"""A judge behind an OpenAI-compatible chat-completions endpoint (a vLLM or llama.cpp server, a
hosted model), and a weighted mixture of judges.

The template (``{instruction}``, ``{output_1}``, ``{output_2}``) is the user turn and the first
token of the reply is the verdict. Where the server returns ``top_logprobs``,
``P(output_1 ≻ output_2) = p(a) / (p(a) + p(b))`` over the listed tokens that spell an answer
(case, spaces and brackets ignored); where it returns none, ``samples`` verdicts are drawn at
temperature 1 and P is the share that answer ``a``. A pair the server cannot judge (errors after
the client's retries with exponential backoff, no answer token in the reply) is NaN: a failure
that :func:`~comal.llm.judge.judge_samples` counts, never a coin flip.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from comal.llm.judge import Judge
from comal.llm.run_folder import RunError

API_TEMPLATE = (
    "Compare two responses to the same instruction and decide which one follows it better: more "
    "helpful, more accurate, and more precisely what was asked, whatever its length or style.\n\n"
    "# Instruction:\n{instruction}\n\n# Output (a):\n{output_1}\n\n# Output (b):\n{output_2}\n\n"
    "Which output is better? Answer with one letter, a or b."
)


class RequestBudgetSpent(RunError):
    """The judge has sent as many requests as ``max_requests`` allows."""


class APIJudge(Judge):
    """``P(first ≻ second)`` from a chat model served over the OpenAI API (see the module's notes).

    ``concurrency`` requests are in flight at once; ``max_retries`` and ``timeout`` go to the
    ``openai`` client, which retries connection errors, 408, 429 and 5xx with exponential backoff;
    ``max_requests`` bounds the requests this judge sends (then :class:`RequestBudgetSpent`).
    ``requests`` and ``failures`` count what was sent and what could not be judged.
    """

    def __init__(self, base_url: str, model: str, *, template: str = API_TEMPLATE,
                 answer_tokens: tuple[str, str] = ("a", "b"), api_key: str | None = None, concurrency: int = 4,
                 max_retries: int = 4, timeout: float = 60.0, max_requests: int | None = None, samples: int = 8,
                 top_logprobs: int = 20):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                             max_retries=max_retries, timeout=timeout)
        self.model, self.template, self.answers = model, template, tuple(a.strip().lower() for a in answer_tokens)
        self.concurrency, self.max_requests, self.samples, self.top_logprobs = concurrency, max_requests, samples, top_logprobs
        self.batch_size = 4 * concurrency  # pairs per call of prefer: the cache is written after each
        self.requests, self.failures, self._lock = 0, 0, threading.Lock()

    def prefer(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        asks = [self.template.format(instruction=x, output_1=a, output_2=b) for x, a, b in zip(prompts, first, second)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return np.array(list(pool.map(self.judge_one, asks)), dtype=np.float64)

    def _send(self, **request):
        with self._lock:
            if self.max_requests is not None and self.requests >= self.max_requests:
                raise RequestBudgetSpent(f"judge: the request budget (judge.max_requests = {self.max_requests}) is "
                                         "spent; raise it, or resume the run later: every verdict so far is cached")
            self.requests += 1
        return self.client.chat.completions.create(model=self.model, **request)

    def judge_one(self, text: str) -> float:
        """P(a) for one filled-in template; NaN where the server gave no verdict."""
        from openai import APIError

        messages = [{"role": "user", "content": text}]
        try:
            reply = self._send(messages=messages, max_tokens=1, temperature=0.0, logprobs=True,
                               top_logprobs=self.top_logprobs)
            choice = reply.choices[0]
            listed = choice.logprobs.content[0].top_logprobs if choice.logprobs and choice.logprobs.content else None
            if listed:
                mass = [sum(math.exp(t.logprob) for t in listed if self._answer(t.token) == answer)
                        for answer in self.answers]
                return self._fail() if sum(mass) == 0 else mass[0] / sum(mass)
            reply = self._send(messages=messages, max_tokens=2, temperature=1.0, n=self.samples)
            verdicts = [self._answer(c.message.content or "") for c in reply.choices]
            said = [verdicts.count(answer) for answer in self.answers]
            return self._fail() if sum(said) == 0 else said[0] / sum(said)
        except APIError:
            return self._fail()

    def _answer(self, token: str) -> str:
        return token.strip().strip("()\"'.*:").lower()

    def _fail(self) -> float:
        with self._lock:
            self.failures += 1
        return float("nan")


class MixtureJudge(Judge):
    """``Σᵢ wᵢ Pᵢ(first ≻ second)`` over several judges, weights normalised to sum to one (the COMAL
    paper's second version mixes two reward models 50/50). A pair any judge fails on is a failure."""

    def __init__(self, judges: Sequence[Judge], weights: Sequence[float]):
        if len(judges) != len(weights) or not judges or min(weights) <= 0:
            raise ValueError("a judge mixture needs at least one judge and a positive weight for each")
        self.judges, self.weights = list(judges), np.asarray(weights, dtype=np.float64) / sum(weights)
        sizes = [getattr(judge, "batch_size", None) for judge in judges]
        self.batch_size = min((size for size in sizes if size), default=None)

    def prefer(self, prompts, first, second) -> np.ndarray:
        return sum(w * np.asarray(judge.prefer(prompts, first, second), dtype=np.float64)
                   for w, judge in zip(self.weights, self.judges))
