"""The shared form of every update rule: a short list of proximal steps on named log-policies.

Every rule in this package is "new log-policy = anchor + η · advantage", renormalised:

    log π_out(y) = Σ_k w_k log π_k(y) + η · a_{π_adv}(y) − log Z,    a_π(y) = P(y ≻ π) − 1/2

A :class:`ProxStep` states exactly that (output name, anchor weights ``w_k`` over named policies,
which policy's advantage, η). The tabular engine here applies it exactly; the LLM trainer reads
the same object and regresses differences of two responses of one prompt,

    h_θ(y, y') = [log π_θ(y) − anchor(y)] − [log π_θ(y') − anchor(y')],   loss = (h_θ − η (â(y) − â(y')))²,

so a rule is defined once and has two forms. Policies are arrays ``[prompts, n]`` of log-probs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Mapping, NamedTuple

import numpy as np
from scipy.special import log_softmax

from comal.games import advantage

CURRENT, REFERENCE = "current", "reference"


@dataclass(frozen=True)
class ProxStep:
    """``output ← normalise(Σ_k anchor[k] · log π_k + eta · a_{π_advantage_of})``.

    ``advantage_of`` names the policy whose samples estimate the advantage (``None``: no advantage,
    a pure mixture step). Advantages are those of the policies as they stood when first needed in
    the iteration, as with samples drawn once per policy per iteration.
    """

    output: str
    anchor: Mapping[str, float]
    advantage_of: str | None
    eta: float


class State(NamedTuple):
    """Named log-policies (``current`` is the played iterate) and counters."""

    policies: Mapping[str, np.ndarray]
    iteration: int = 0
    since_reference: int = 0  # steps since the reference last moved
    reference_updates: int = 0


@dataclass(frozen=True)
class Rule(ABC):
    """Hyper-parameters of a rule plus its pure ``init`` and ``update`` functions.

    Subclasses set ``name``, the policies they keep and :meth:`prox_steps`; rules with a moving
    reference (magnet) also override :meth:`reference_due`.
    """

    eta: float
    tau: float = 0.0
    name: ClassVar[str]
    keeps: ClassVar[tuple[str, ...]] = (CURRENT,)  # policies initialised to the start policy
    pointwise: ClassVar[bool] = False  # sampled loss regresses single responses (SPPO) not pairs

    def __post_init__(self):
        if not np.isfinite(self.eta) or self.eta <= 0:
            raise ValueError(f"{self.name}: eta must be a positive finite number, got {self.eta}")
        if not np.isfinite(self.tau) or self.tau < 0:
            raise ValueError(f"{self.name}: tau must be a non-negative finite number, got {self.tau}")

    @classmethod
    @abstractmethod
    def for_game(cls, scale: float, **overrides) -> "Rule":
        """Defaults for a game whose payoffs ``P − 1/2`` are at most ``scale`` in size."""

    @abstractmethod
    def prox_steps(self) -> tuple[ProxStep, ...]:
        """The rule's definition, shared by the tabular update and the sampled loss."""

    def advantage_evaluations(self) -> int:
        """Advantages evaluated per step: mat-vecs here, rounds of sampling for an LLM."""
        return len({step.advantage_of for step in self.prox_steps() if step.advantage_of is not None})

    def reference_due(self, state: State, advantages: Mapping[str, np.ndarray]) -> bool:
        """Whether to set the reference μ ← π_t before this step (COMAL, MPO)."""
        return False

    def init(self, log_policy: np.ndarray) -> State:
        log_policy = log_softmax(np.asarray(log_policy, dtype=np.float64), axis=-1)
        return State({name: log_policy for name in self.keeps})

    def update(self, game: np.ndarray, state: State) -> tuple[State, dict[str, np.ndarray]]:
        """One iteration; returns the new state and the advantages it used (keyed by policy)."""
        policies = dict(state.policies)
        advantages = AdvantageCache(game, policies)
        since, updates = state.since_reference, state.reference_updates
        if REFERENCE in policies and self.reference_due(state, advantages):
            policies[REFERENCE] = policies[CURRENT]
            since, updates = 0, updates + 1
        apply_prox_steps(self.prox_steps(), policies, advantages)
        return State(policies, state.iteration + 1, since + 1, updates), advantages.computed


class AdvantageCache(Mapping):
    """Advantages of the named policies in a live dict, each computed once (one mat-vec) on first use."""

    def __init__(self, game: np.ndarray, policies: Mapping[str, np.ndarray]):
        self.game, self.policies, self.computed = game, policies, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.computed:
            self.computed[name] = advantage(self.game, np.exp(self.policies[name]))
        return self.computed[name]

    def __iter__(self):
        return iter(self.policies)

    def __len__(self):
        return len(self.policies)


def apply_prox_steps(steps, policies: dict[str, np.ndarray], advantages: AdvantageCache) -> None:
    """Apply :class:`ProxStep` s in order to ``policies`` (in place; ``advantages`` reads that dict)."""
    for step in steps:
        logits = sum(weight * policies[name] for name, weight in step.anchor.items() if weight)
        if step.advantage_of is not None:
            logits = logits + step.eta * advantages[step.advantage_of]
        policies[step.output] = log_softmax(logits, axis=-1)


def check_period(name: str, period: int | None) -> None:
    if period is not None and period < 1:
        raise ValueError(f"{name}: the reference period must be ≥ 1 step, got {period}")

