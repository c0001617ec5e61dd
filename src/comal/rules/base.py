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
from dataclasses import dataclass, replace
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
    uses_tau: ClassVar[bool] = False  # τ enters the steps (else the field is unused and must stay 0)
    solves_subgame: ClassVar[bool] = False  # converges to π*_τ(μ) for a fixed μ: usable as COMAL's inner rule

    def __post_init__(self):
        if not np.isfinite(self.eta) or self.eta <= 0:
            raise ValueError(f"{self.name}: eta must be a positive finite number, got {self.eta}")
        if not np.isfinite(self.tau) or self.tau < 0:
            raise ValueError(f"{self.name}: tau must be a non-negative finite number, got {self.tau}")
        if self.tau and not self.uses_tau:
            raise ValueError(f"{self.name}: has no regularisation τ; leave tau unset")

    @classmethod
    @abstractmethod
    def for_game(cls, scale: float, **overrides) -> "Rule":
        """Defaults for a game whose payoffs ``P − 1/2`` are at most ``scale`` in size."""

    @abstractmethod
    def prox_steps(self) -> tuple[ProxStep, ...]:
        """The rule's definition, shared by the tabular update and the sampled loss."""

    def advantage_evaluations(self) -> int:
        """Advantages evaluated per step: mat-vecs here."""
        return len({step.advantage_of for step in self.prox_steps() if step.advantage_of is not None})

    def sampled_policies(self) -> tuple[str, ...]:
        """The policies an LLM iteration samples, in order: one round each (see :func:`rows_policy`)."""
        return tuple(dict.fromkeys(rows_policy(step) for step in self.prox_steps()))

    def reference_due(self, state: State, advantages: Mapping[str, np.ndarray]) -> bool:
        """Whether to set the reference μ ← π_t before this step (COMAL, MPO).

        ``state.policies`` and ``advantages`` are read lazily: the tabular engine gives exact arrays,
        the LLM loop estimates them on the current policy's samples only when read.
        """
        return False

    def next_state(self, state: State, policies: Mapping, reference_moved: bool) -> State:
        """The state after one iteration that produced ``policies`` (moving μ first if ``reference_moved``)."""
        since = 1 if reference_moved else state.since_reference + 1
        return State(policies, state.iteration + 1, since, state.reference_updates + int(reference_moved))

    def annealed(self, fraction: float, eta_final: float | None) -> "Rule":
        """This rule at ``fraction`` ∈ [0, 1] of a run whose η decays geometrically from ``eta`` to
        ``eta_final`` (``None``: constant), ητ held, so τ grows as η shrinks. Under sampling noise a
        step of size η leaves the last iterate a noise floor of order ``σ(â) √(η/τ)``; smaller, more
        regularised late steps lower it, as a decaying step size does in stochastic approximation."""
        if eta_final is None:
            return self
        if not np.isfinite(eta_final) or eta_final <= 0:
            raise ValueError(f"{self.name}: eta_final must be a positive finite number, got {eta_final}")
        eta = self.eta * (eta_final / self.eta) ** fraction
        return replace(self, eta=eta, tau=self.tau * self.eta / eta)

    def init(self, log_policy: np.ndarray) -> State:
        log_policy = log_softmax(np.asarray(log_policy, dtype=np.float64), axis=-1)
        return State({name: log_policy for name in self.keeps})

    def update(self, game: np.ndarray, state: State, estimate=None) -> tuple[State, dict[str, np.ndarray]]:
        """One iteration; returns the new state and the advantages it used (keyed by policy).
        ``estimate(game, policy)`` replaces the exact advantage (see :class:`AdvantageCache`)."""
        policies = dict(state.policies)
        advantages = AdvantageCache(game, policies, estimate)
        moved = REFERENCE in policies and self.reference_due(state, advantages)
        if moved:
            policies[REFERENCE] = policies[CURRENT]
        apply_prox_steps(self.prox_steps(), policies, advantages)
        return self.next_state(state, policies, moved), advantages.computed


class AdvantageCache(Mapping):
    """Advantages of the named policies in a live dict, each computed once (one mat-vec) on first use,
    exactly or by ``estimate(game, policy)`` (sampling noise, as the LLM loop sees it)."""

    def __init__(self, game: np.ndarray, policies: Mapping[str, np.ndarray], estimate=None):
        self.game, self.policies, self.computed = game, policies, {}
        self.estimate = estimate or advantage

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.computed:
            self.computed[name] = self.estimate(self.game, np.exp(self.policies[name]))
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


def magnetic_step(output: str, anchor: str, advantage_of: str, eta: float, tau: float,
                  magnet: str | None = REFERENCE) -> ProxStep:
    """A mirror step pulled toward ``magnet`` with the KL taken implicitly (stable for any ητ):

        log π_out = (log π_anchor + ητ log π_magnet + η a) / (1 + ητ)

    (``magnet=None``: the uniform policy, whose constant log the normaliser absorbs; τ = 0: a plain step).
    """
    shrink = 1.0 + eta * tau
    weights = {anchor: 1 / shrink}
    if magnet is not None and tau:
        weights[magnet] = eta * tau / shrink
    return ProxStep(output, weights, advantage_of, eta / shrink)


def heaviest_anchor(step: ProxStep) -> str:
    """The policy with the largest weight in ``step``'s anchor."""
    return max(step.anchor, key=lambda name: step.anchor[name])


def rows_policy(step: ProxStep) -> str:
    """The policy whose samples an LLM fit of ``step`` regresses on: the one whose advantage it uses,
    or for a pure mixture step (no advantage) its heaviest anchor."""
    return step.advantage_of if step.advantage_of is not None else heaviest_anchor(step)


def run_fraction(t: int, iterations: int) -> float:
    """How far iteration ``t`` of ``iterations`` is through the run: 0 at the first, 1 at the last."""
    return t / (iterations - 1) if iterations > 1 else 0.0


def check_period(name: str, period: int | None) -> None:
    if period is not None and period < 1:
        raise ValueError(f"{name}: the reference period must be ≥ 1 step, got {period}")

