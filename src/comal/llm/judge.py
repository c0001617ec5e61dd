"""Pairwise preference oracles: the probability that response ``first`` beats ``second``.

Every judge returns ``P(first ≻ second | prompt)`` for a batch of ordered pairs, with NaN where it
could not give one (an LLM judge whose answer tokens got no probability mass, say): failures are
counted by :func:`judge_samples`, never replaced by a coin flip. :func:`judge_samples` asks both
orders of every pair and averages them, ``(P(a ≻ b) + 1 − P(b ≻ a)) / 2``, to cancel position bias.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from comal.llm.logprobs import conversation_text, with_pad_token


class Judge(ABC):
    """``P(first ≻ second | prompt)`` for batches of ordered pairs (NaN: no judgement)."""

    @abstractmethod
    def prefer(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """Probabilities in [0, 1], one per pair, NaN where the judge failed."""


class CallableJudge(Judge):
    """Any ``function(prompt, first, second) -> probability``."""

    def __init__(self, function: Callable[[str, str, str], float]):
        self.function = function

    def prefer(self, prompts, first, second):
        return np.array([float(self.function(x, a, b)) for x, a, b in zip(prompts, first, second)])


class ScriptedJudge(Judge):
    """Exact preferences from a table: per prompt, its responses and the matrix ``P[i, j]``."""

    def __init__(self, table: Mapping[str, tuple[Sequence[str], np.ndarray]]):
        self.index = {prompt: {response: i for i, response in enumerate(responses)}
                      for prompt, (responses, _) in table.items()}
        self.matrices = {prompt: np.asarray(matrix, dtype=np.float64) for prompt, (_, matrix) in table.items()}

    def prefer(self, prompts, first, second):
        try:
            return np.array([self.matrices[x][self.index[x][a], self.index[x][b]]
                             for x, a, b in zip(prompts, first, second)])
        except KeyError as error:
            raise KeyError(f"the scripted preference has no entry for {error.args[0]!r}") from None


class JudgeCache:
    """Judgements keyed by (prompt, first, second), appended to a JSON-lines file as they come.

    A resumed run reloads the file and judges no pair twice; a line cut short by a kill is skipped.
    Process ``rank`` of several appends to its own ``<name>.rank<r>.jsonl`` beside the file (read
    by every process) until the main process moves those lines into the file (:meth:`gather_ranks`).
    """

    def __init__(self, path: str | Path | None = None, rank: int = 0):
        self.path = Path(path) if path is not None else None
        self.values: dict[str, float] = {}
        self.writes_to = self.path if self.path is None or rank == 0 else self._rank_file(rank)
        for source in self._sources():
            for line in source.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.values[entry["key"]] = float(entry["p"]) if entry["p"] is not None else np.nan
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def _rank_file(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.rank{rank}{self.path.suffix}")

    def _sources(self) -> list[Path]:
        if self.path is None:
            return []
        ranks = sorted(self.path.parent.glob(f"{self.path.stem}.rank*{self.path.suffix}"))
        return [path for path in [self.path, *ranks] if path.is_file()]

    def gather_ranks(self) -> None:
        """Move the other processes' judgements into the file (main process, when they are done)."""
        for source in self._sources()[1:] if self.path.is_file() else self._sources():
            text = source.read_text()
            with open(self.path, "a") as handle:
                handle.write(text if text.endswith("\n") or not text else text + "\n")  # a line cut by a kill
            source.unlink()
        self.__init__(self.path)

    @staticmethod
    def key(prompt: str, first: str, second: str) -> str:
        return hashlib.sha256("\x00".join((prompt, first, second)).encode()).hexdigest()

    def add(self, keys: Sequence[str], probabilities: np.ndarray) -> None:
        lines = []
        for key, p in zip(keys, probabilities):
            self.values[key] = float(p)
            lines.append(json.dumps({"key": key, "p": None if np.isnan(p) else float(p)}))
        if self.writes_to is not None and lines:
            self.writes_to.parent.mkdir(parents=True, exist_ok=True)
            with open(self.writes_to, "a") as handle:
                handle.write("\n".join(lines) + "\n")


def cached_prefer(judge: Judge, asks: Sequence[tuple[str, str, str]], cache: JudgeCache,
                  advance: Callable[[int], None] = lambda count: None) -> np.ndarray:
    """``P(first ≻ second | prompt)`` for each ``(prompt, first, second)``, asking the judge only
    for those not in ``cache``, a batch of the judge's size at a time, each recorded there as it
    comes (a killed stage keeps what was judged); ``advance`` counts the asks, cached ones at once."""
    keys = [JudgeCache.key(*ask) for ask in asks]
    todo = [n for n, key in enumerate(keys) if key not in cache.values]
    advance(len(asks) - len(todo))
    size = getattr(judge, "batch_size", None) or max(len(todo), 1)
    for start in range(0, len(todo), size):
        chunk = todo[start:start + size]
        prompts, first, second = zip(*[asks[n] for n in chunk])
        cache.add([keys[n] for n in chunk], np.asarray(judge.prefer(prompts, first, second), dtype=np.float64))
        advance(len(chunk))
    return np.array([cache.values[key] for key in keys])


@dataclass
class Judged:
    """Win matrix of the responses of one prompt and how many single judgements failed."""

    wins: np.ndarray  # [m, m] over the given responses, wins + winsᵀ = 1, NaN where both orders failed
    failures: int
    asked: np.ndarray  # [d, d] over the distinct texts: P(i ≻ j) as asked with i listed first (NaN: failed)


class JudgeQualityWarning(UserWarning):
    """The verdicts of a judge stage are mostly position bias or ties."""


NEAR_TIE = 0.05  # |P − 1/2| below which a pair's verdict (both orders averaged) counts as a near-tie


def judge_quality(asked: Sequence[np.ndarray]) -> dict:
    """What the verdicts of both orders say about the judge, over every pair judged in both orders:

    - ``first_listed_wins``: mean P(first-listed ≻ second-listed); 1/2 for a judge without position bias;
    - ``same_winner_both_orders``: share of pairs whose winner does not change when the order does;
    - ``near_ties``: share of pairs whose averaged verdict is within :data:`NEAR_TIE` of 1/2.
    """
    forward, backward = [], []
    for matrix in asked:
        upper = np.triu_indices(len(matrix), 1)
        a, b = matrix[upper], matrix.T[upper]  # P(i ≻ j) asked i first, P(j ≻ i) asked j first
        both = np.isfinite(a) & np.isfinite(b)
        forward.append(a[both])
        backward.append(b[both])
    a, b = (np.concatenate(side) if side else np.empty(0) for side in (forward, backward))
    if not len(a):
        return {"pairs": 0, "first_listed_wins": None, "same_winner_both_orders": None, "near_ties": None}
    return {"pairs": int(len(a)), "first_listed_wins": float(np.concatenate([a, b]).mean()),
            "same_winner_both_orders": float(((a - 0.5) * (b - 0.5) < 0).mean()),
            "near_ties": float((np.abs((a + 1 - b) / 2 - 0.5) < NEAR_TIE).mean())}


def judge_warning(quality: dict) -> str | None:
    """A loud line when the verdicts are mostly position bias or ties (no signal to train on)."""
    if not quality["pairs"]:
        return None
    same, ties = quality["same_winner_both_orders"], quality["near_ties"]
    if same >= 0.5 and ties <= 0.5:
        return None
    return (f"judge: only {same:.0%} of {quality['pairs']} pairs keep their winner when the order is swapped, "
            f"{ties:.0%} are within {NEAR_TIE} of a tie (P(first listed wins) = {quality['first_listed_wins']:.2f}): "
            "the verdicts are mostly position bias or noise and the rows carry little signal; use a stronger "
            "judge or a reward model")


def judge_samples(judge: Judge, prompt: str, responses: Sequence[str], cache: JudgeCache | None = None,
                  advance: Callable[[int], None] = lambda count: None) -> Judged:
    """Judge every ordered pair of ``responses`` (both orders, averaged), using ``cache`` if given.

    Equal texts are judged once and tie at 1/2 with each other.
    """
    texts, index = np.unique(np.asarray(responses, dtype=object).astype(str), return_inverse=True)
    m = len(texts)
    ordered = [(i, j) for i in range(m) for j in range(m) if i != j]
    single = np.full((m, m), np.nan)
    if ordered:
        rows, columns = np.array(ordered).T
        single[rows, columns] = cached_prefer(judge, [(prompt, texts[i], texts[j]) for i, j in ordered],
                                              cache if cache is not None else JudgeCache(), advance)
    failures = int(np.isnan(single).sum()) - m
    # P(i ≻ j) from both orders: asked as (i, j) and, reversed, as 1 − P(j ≻ i); NaN if both failed
    both = np.stack([single, 1.0 - single.T])
    judged = np.isfinite(both).sum(0)
    distinct = np.where(judged > 0, np.nansum(both, 0) / np.maximum(judged, 1), np.nan)
    np.fill_diagonal(distinct, 0.5)
    return Judged(distinct[np.ix_(index, index)], failures, single)


class RewardModelJudge(Judge):
    """Bradley-Terry judge from a sequence-classification reward model: ``σ(r(x, a) − r(x, b))``.

    Each (prompt, response) is scored once and the score reused for every pair it appears in.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_length: int | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.scores: dict[tuple[str, str], float] = {}

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        import torch

        todo = list(dict.fromkeys(pair for pair in zip(prompts, responses) if pair not in self.scores))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            texts = [conversation_text(self.tokenizer, x, y) for x, y in batch]
            inputs = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=self.max_length is not None,
                                    max_length=self.max_length, add_special_tokens=False).to(self.model.device)
            with torch.no_grad():
                rewards = self.model(**inputs).logits[:, 0].float().cpu().numpy()
            self.scores.update(zip(batch, rewards.tolist()))
        return np.array([self.scores[pair] for pair in zip(prompts, responses)])

    def prefer(self, prompts, first, second):
        from scipy.special import expit

        return expit(self.score(prompts, first) - self.score(prompts, second))


PAIRWISE_TEMPLATE = (
    "Compare two responses to the same instruction and decide which one follows it better: more "
    "helpful, more accurate, and more precisely what was asked, whatever its length or style.\n\n"
    "# Instruction:\n{instruction}\n\n# Output (a):\n{output_1}\n\n# Output (b):\n{output_2}\n\n"
    'Which output is better? Answer "Output (a)" or "Output (b)".'
)
PAIRWISE_ANSWER_PREFIX = "Output ("


class LLMJudge(Judge):
    """A generative judge read off its logits: at the answer position, the probability of the
    first answer token against the second, ``softmax(logit_a, logit_b)[0] = P(output_1 ≻ output_2)``.

    ``template`` needs ``{instruction}``, ``{output_1}`` and ``{output_2}``; it is sent as the user
    turn (through the chat template when the tokenizer has one) and ``answer_prefix`` is appended,
    so the next token is the answer. A judgement where the two answer tokens together get less
    than ``min_mass`` of the next-token probability is a failure (NaN), counted by the caller.
    """

    PLACEHOLDERS = ("{instruction}", "{output_1}", "{output_2}")

    def __init__(self, model, tokenizer, *, template: str = PAIRWISE_TEMPLATE,
                 answer_prefix: str = PAIRWISE_ANSWER_PREFIX, answer_tokens: tuple[str, str] = ("a", "b"),
                 batch_size: int = 8, min_mass: float = 0.01):
        missing = [p for p in self.PLACEHOLDERS if p not in template]
        if missing:
            raise ValueError(f"judge template lacks the placeholder(s) {', '.join(missing)}; "
                             "it needs {instruction}, {output_1} and {output_2}")
        self.answer_ids = []
        for token in answer_tokens:
            ids = tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"answer token {token!r} is {len(ids)} tokens for this tokenizer, not one; "
                                 "choose answer tokens that are single tokens")
            if ids[0] == tokenizer.unk_token_id:
                raise ValueError(f"answer token {token!r} is not in this tokenizer's vocabulary (it reads as the "
                                 "unknown token); choose answer tokens the judge can say")
            self.answer_ids.append(ids[0])
        if self.answer_ids[0] == self.answer_ids[1]:
            raise ValueError(f"answer tokens {answer_tokens[0]!r} and {answer_tokens[1]!r} are the same token for "
                             "this tokenizer; every verdict would be 1/2")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template, self.answer_prefix = template, answer_prefix
        self.batch_size, self.min_mass = batch_size, min_mass

    def fill(self, instruction: str, output_1: str, output_2: str) -> str:
        """The template with its placeholders replaced in one pass (braces in the texts are kept)."""
        values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
        return re.sub(r"\{(instruction|output_1|output_2)\}", lambda match: values[match.group(1)], self.template)

    def prefer(self, prompts, first, second):
        import torch

        texts = [conversation_text(self.tokenizer, self.fill(x, a, b)) + self.answer_prefix
                 for x, a, b in zip(prompts, first, second)]
        encoded = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        # in token order, so a batch holds asks that share the longest prefix (one prompt, one first output)
        order = np.array(sorted(range(len(encoded)), key=encoded.__getitem__), dtype=int)
        probabilities = np.empty(len(texts))
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            with torch.no_grad():
                last = self.next_token_logits([encoded[row] for row in rows]).float()
            answers = last[:, self.answer_ids]
            mass = torch.softmax(last, dim=-1)[:, self.answer_ids].sum(dim=-1)
            p_first = torch.softmax(answers, dim=-1)[:, 0]
            probabilities[rows] = torch.where(mass >= self.min_mass, p_first, torch.nan).cpu().numpy()
        return probabilities

    def next_token_logits(self, rows: Sequence[Sequence[int]]):
        """The judge's next-token logits after each row of token ids, ``[len(rows), vocab]``.

        The rows' common prefix (the template's head and the instruction, when a batch judges
        pairs of one prompt) is read once and its cache shared; the rest is left-padded, so only
        the last position's logits are computed.
        """
        import torch

        from comal.llm.logprobs import cache_argument, left_padded, prefill, real_positions

        shared = _common_prefix(rows, limit=min(len(ids) for ids in rows) - 1) if len(rows) > 1 else 0
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        device = self.model.device
        ids, mask = left_padded([ids[shared:] for ids in rows], pad, device)
        if not shared:
            return self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        head = torch.tensor([list(rows[0][:shared])], device=device)
        cache = prefill(self.model, head, torch.ones_like(head))
        cache.batch_repeat_interleave(len(rows))
        full_mask = torch.cat([torch.ones(len(rows), shared, dtype=mask.dtype, device=device), mask], dim=1)
        positions = shared + real_positions(mask)
        return self.model(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                          logits_to_keep=1, **cache_argument(cache)).logits[:, -1]


def _common_prefix(rows: Sequence[Sequence[int]], limit: int) -> int:
    """Length of the longest prefix all ``rows`` share, at most ``limit``."""
    first = rows[0]
    for length in range(limit):
        if any(row[length] != first[length] for row in rows[1:]):
            return length
    return max(limit, 0)


def build_judge(section) -> Judge:
    """The judge a run config's ``judge:`` section names (a :class:`~comal.llm.config.JudgeSection`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from comal.llm.api_judge import API_TEMPLATE, APIJudge, MixtureJudge
    from comal.llm.prepare import check_model_folder

    if section.kind == "mixture":
        return MixtureJudge([build_judge(part) for part in section.judges], [part.weight for part in section.judges])
    if section.kind == "openai":
        template = section.template_text()
        return APIJudge(section.base_url, section.model, template=API_TEMPLATE if template == "pairwise" else template,
                        answer_tokens=section.answer_tokens, api_key=os.environ.get(section.api_key_env),
                        concurrency=section.concurrency, max_retries=section.max_retries, timeout=section.timeout,
                        max_requests=section.max_requests, samples=section.samples)
    path = check_model_folder(section.path, "judge.path")
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(path))
    if section.kind == "reward-model":
        return RewardModelJudge(AutoModelForSequenceClassification.from_pretrained(path), tokenizer,
                                batch_size=section.batch_size)
    template = section.template_text()
    template = PAIRWISE_TEMPLATE if template == "pairwise" else template
    return LLMJudge(AutoModelForCausalLM.from_pretrained(path), tokenizer, template=template,
                    answer_prefix=section.answer_prefix, answer_tokens=section.answer_tokens,
                    batch_size=section.batch_size)
