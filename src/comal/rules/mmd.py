"""Magnetic mirror descent (Sokota et al. 2022, arXiv 2206.05825; OpenSpiel's ``mmd``).

Each step maximises ``η⟨a_{π_t}, π⟩ − ητ KL(π‖ρ) − KL(π‖π_t)`` with the uniform magnet ρ:

    log π_{t+1} = (log π_t + η a_{π_t}) / (1 + ητ)       (log ρ is a constant: the normaliser takes it)

Its last iterate converges linearly to the quantal-response (logit) equilibrium of temperature τ,
the fixed point ``π ∝ exp(a_π / τ)``: a gap of order τ remains, as for INPO, but toward the
uniform policy rather than the start. MPO is the same step with the start policy as the magnet,
refreshed. Sampled form: anchor ``log π_t / (1 + ητ)``, step ``η/(1 + ητ)`` (the uniform magnet
cancels in the difference of two responses, and the pointless constant in the pointwise form).
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, Rule, magnetic_step
from comal.rules.mpo import magnetic_eta


@dataclass(frozen=True)
class MMD(Rule):
    name = "mmd"
    uses_tau = True

    def __post_init__(self):
        super().__post_init__()
        if self.tau <= 0:
            raise ValueError("mmd: tau must be positive (the strength of the uniform magnet)")

    @classmethod
    def for_game(cls, scale: float, **overrides) -> "MMD":
        tau = overrides.pop("tau", scale / 10)
        return cls(**{"eta": magnetic_eta(tau, scale), "tau": tau, **overrides})

    def prox_steps(self):
        return (magnetic_step(CURRENT, CURRENT, CURRENT, self.eta, self.tau, magnet=None),)
