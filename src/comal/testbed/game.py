"""The testbed's game: prompts of fixed token length, the enumerable responses of each, a general
(intransitive) preference over them from :mod:`comal.games`, its Nash by LP, and the exact
measures of a constrained policy."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from comal.games import GENERATORS, best_response_win_rate, duality_gap, kl_divergence, nash_lp
from comal.llm.judge import ScriptedJudge
from comal.llm.tiny import tiny_config, tiny_tokenizer
from comal.testbed import CONTENT_WORDS, PROMPT_WORDS, check_testbed_shape
from comal.testbed.space import ConstrainedLlama, ResponseSpace, exact_distribution

LP_LIMIT = 1024  # responses per prompt up to which the Nash is solved (HiGHS takes minutes beyond)


@dataclass
class Testbed:
    tokenizer: object
    space: ResponseSpace
    prompts: list[str]  # each encodes to exactly space.prompt_length tokens (BOS + one word)
    preference: np.ndarray  # [prompts, N, N], P(y_i ≻ y_j | x)

    @cached_property
    def nash(self) -> np.ndarray:
        """``[prompts, N]`` by LP, solved when first needed (large spaces take long)."""
        return nash_lp(self.preference)

    def responses(self) -> list[str]:
        """The decoded text of every response index (what the judge and the summary see)."""
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in self.space.responses().tolist()]

    def judge(self) -> ScriptedJudge:
        """The scripted preference with its exact probabilities."""
        texts = self.responses()
        return ScriptedJudge({prompt: (texts, matrix) for prompt, matrix in zip(self.prompts, self.preference)})

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.tokenizer.bos_token_id] + self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def exact_policy(self, model: ConstrainedLlama) -> np.ndarray:
        """π(·|x) over every response of every prompt, ``[prompts, N]``."""
        return np.stack([exact_distribution(model, self.prompt_ids(prompt)) for prompt in self.prompts])

    @property
    def solves_nash(self) -> bool:
        return self.space.size <= LP_LIMIT

    def measures(self, policy: np.ndarray) -> dict:
        """Exact measures of ``policy`` (``[prompts, N]``), averaged over prompts; the KL to the Nash
        only where the space is small enough for the LP (else None)."""
        kl = kl_divergence(self.nash, policy) if self.solves_nash else None
        return {"duality_gap": duality_gap(self.preference, policy), "kl_to_nash": kl,
                "best_response_win_rate": best_response_win_rate(self.preference, policy),
                "valid_mass": float(policy.sum(-1).mean())}

    def exact_sampler(self, draws: float = 1e9):
        """A sampler for the pipeline that returns every response once with its expected count in
        ``draws`` samples of the checkpoint's exact distribution: the limit of infinitely many
        samples, so the advantages the pairs stage estimates are exact (to O(1/draws)) and the
        loss is the population loss. For checking the loop against the tabular rule."""
        from comal.llm.sample import Samples

        responses = [tuple(ids) for ids in self.space.responses().tolist()]
        texts = self.responses()

        def sampler(policy, prompts, settings, advance=lambda count: None) -> Samples:
            model = ConstrainedLlama.from_pretrained(policy)
            counts = [(draws * exact_distribution(model, self.prompt_ids(prompt))).tolist() for prompt in prompts]
            advance(len(prompts) * settings.samples_per_prompt)
            return Samples(list(prompts), [responses] * len(prompts), [texts] * len(prompts), counts=counts)

        return sampler

    def initial_policy(self, seed: int = 0, **config) -> ConstrainedLlama:
        """A freshly initialised tiny transformer constrained to the space."""
        settings = tiny_config(self.tokenizer, **config)
        settings.response_space = {"tokens": list(self.space.tokens), "length": self.space.length,
                                   "eos": self.space.eos, "prompt_length": self.space.prompt_length}
        torch.manual_seed(seed)
        return ConstrainedLlama(settings).eval()


def make_testbed(*, tokens: int = 4, length: int = 2, prompts: int = 2, game: str = "intransitive",
                 seed: int = 0, **game_options) -> Testbed:
    """``prompts`` prompts, ``tokens ** length`` responses each, preferences from ``game``
    (a name of :data:`comal.games.GENERATORS`, given ``game_options``)."""
    check_testbed_shape(tokens, length, prompts)
    if game not in GENERATORS:
        raise ValueError(f"unknown game '{game}'; choose one of: {', '.join(GENERATORS)}")
    tokenizer = tiny_tokenizer()
    space = ResponseSpace(tuple(tokenizer.convert_tokens_to_ids(list(CONTENT_WORDS[:tokens]))), length,
                          tokenizer.eos_token_id, prompt_length=2)
    preference = GENERATORS[game](n=space.size, prompts=prompts, seed=seed, **game_options)
    return Testbed(tokenizer, space, list(PROMPT_WORDS[:prompts]), preference)
