"""Sampled losses: values by hand, and the link to the tabular rules (free-logit policy)."""

import itertools

import numpy as np
import pytest
import torch

from comal.games import advantage, random_intransitive
from comal.llm.losses import anchor_logps, pairwise_loss, pointwise_loss, step_loss
from comal.rules import CURRENT, REFERENCE, RULES, ProxStep, make_rule
from comal.rules.base import AdvantageCache, apply_prox_steps


def test_pairwise_loss_by_hand():
    # INPO, η = 2, ητ = 1/4: anchor = 0.75 log π_t + 0.25 log μ
    step = ProxStep(CURRENT, {CURRENT: 0.75, REFERENCE: 0.25}, CURRENT, 2.0)
    first = {CURRENT: torch.tensor([-1.0]), REFERENCE: torch.tensor([-2.0])}   # anchor −1.25
    second = {CURRENT: torch.tensor([-3.0]), REFERENCE: torch.tensor([-1.0])}  # anchor −2.5
    loss = pairwise_loss(step, torch.tensor([-0.5]), torch.tensor([-4.0]), first, second, 0.5)
    # h = (−0.5 + 1.25) − (−4 + 2.5) = 0.75 + 1.5 = 2.25; η · 1/2 = 1; (2.25 − 1)² = 1.5625
    assert loss.item() == pytest.approx(1.5625)


def test_pointwise_loss_by_hand():
    step = ProxStep(CURRENT, {CURRENT: 1.0}, CURRENT, 3.0)
    loss = pointwise_loss(step, torch.tensor([-1.0]), {CURRENT: torch.tensor([-1.5])}, torch.tensor([0.1]))
    assert loss.item() == pytest.approx((0.5 - 0.3) ** 2)


def test_ipo_rule_is_ipos_loss_by_hand():
    """The ipo rule's sampled form on a hard row is IPO's loss (Azar et al., Eq. 17) with τ_IPO = 1/η."""
    step = make_rule("ipo", 0.5, eta=1.0 / 0.5).prox_steps()[0]  # τ_IPO = 0.5
    chosen, rejected = {REFERENCE: torch.tensor([-1.5])}, {REFERENCE: torch.tensor([-1.0])}
    loss, margin = step_loss(step, torch.tensor([-1.0]), torch.tensor([-2.0]), chosen, rejected, torch.tensor([0.5]))
    # log-ratio margin = (−1 + 1.5) − (−2 + 1) = 1.5; IPO's target 1/(2τ) = 1
    assert margin.item() == pytest.approx(1.5) and loss.item() == pytest.approx((1.5 - 1.0) ** 2)


def test_step_loss_without_a_second_response_is_pointwise():
    step = make_rule("sppo", 0.5, eta=3.0).prox_steps()[0]
    loss, ratio = step_loss(step, torch.tensor([-1.0]), None, {CURRENT: torch.tensor([-1.5])}, None,
                            torch.tensor([0.1]))
    assert ratio.item() == pytest.approx(0.5) and loss.item() == pytest.approx((0.5 - 0.3) ** 2)


def test_anchor_names_what_is_missing():
    step = ProxStep(CURRENT, {CURRENT: 0.5, REFERENCE: 0.5}, CURRENT, 1.0)
    with pytest.raises(KeyError, match=r"needs log-probs of \['reference'\]"):
        anchor_logps(step, {CURRENT: torch.zeros(1)})


def fit_free_policy(step: ProxStep, pointwise: bool, policies: dict, advantages: dict) -> np.ndarray:
    """Minimise the sampled loss over a free table of logits, all ordered pairs, exact targets."""
    n = policies[CURRENT].shape[-1]
    logps = {name: torch.from_numpy(value[0]) for name, value in policies.items()}
    adv = torch.from_numpy(advantages[step.advantage_of][0])
    logits = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-14,
                                  tolerance_change=1e-16, line_search_fn="strong_wolfe")
    pairs = torch.tensor(list(itertools.permutations(range(n), 2)))
    first, second = pairs[:, 0], pairs[:, 1]

    def closure():
        optimiser.zero_grad()
        policy = torch.log_softmax(logits, -1)
        if pointwise:
            loss = pointwise_loss(step, policy, logps, adv).sum()
        else:
            loss = pairwise_loss(step, policy[first], policy[second],
                                 {k: v[first] for k, v in logps.items()},
                                 {k: v[second] for k, v in logps.items()}, adv[first] - adv[second]).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return torch.log_softmax(logits, -1).detach().numpy()[None]


@pytest.mark.parametrize("name", sorted(set(RULES) | {"comal-inpo"}))
def test_minimising_the_sampled_loss_gives_the_tabular_step(name):
    game = random_intransitive(6, seed=2)
    rng = np.random.default_rng(0)
    # SPPO's pointwise form treats the normaliser as known: log Z = log E_π[e^{η a}] = O(η² Var a)
    # since E_π[a_π] = 0, so it is exact only to O(η²); the pairwise forms cancel Z exactly.
    overrides = {"comal-inpo": {"inner": "inpo"}, "sppo": {"eta": 0.1}}.get(name, {})
    rule = make_rule(name.removesuffix("-inpo"), game, **overrides)
    policies = {key: np.log(rng.dirichlet(np.ones(6)))[None] for key in rule.keeps}
    tabular = dict(policies)
    apply_prox_steps(rule.prox_steps(), tabular, AdvantageCache(game, tabular))

    sampled, advantages = dict(policies), {}
    for step in rule.prox_steps():
        if step.advantage_of is not None and step.advantage_of not in advantages:
            advantages[step.advantage_of] = advantage(game, np.exp(sampled[step.advantage_of]))
        if step.advantage_of is None:  # a pure mixture step: normalise the anchor
            anchor = sum(w * sampled[k] for k, w in step.anchor.items())
            sampled[step.output] = anchor - np.log(np.exp(anchor).sum())
        else:
            sampled[step.output] = fit_free_policy(step, rule.pointwise, sampled, advantages)
    np.testing.assert_allclose(np.exp(sampled[CURRENT]), np.exp(tabular[CURRENT]), atol=1e-4)
