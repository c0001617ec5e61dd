"""SPPO (Wu et al. 2024, arXiv 2405.00675): self-play preference optimisation.

Tabular: the MWU step ``log π_{t+1} = log π_t + η a_{π_t}`` (SPPO's Eq. for the population
update; ``P(y ≻ π_t)`` and ``P(y ≻ π_t) − 1/2`` differ by a constant the normaliser absorbs).
Sampled form is *pointwise*: ``(log π_θ(y) − log π_t(y) − η â(y))²`` for each sampled y. It
takes the normaliser as known (SPPO approximates ``log Z`` by a constant): with ``a = P − 1/2``,
``log Z = log E_{π_t}[e^{η a}] = O(η² Var a)`` because ``E_{π_t}[a_{π_t}] = 0``, so its minimiser
matches the tabular step to O(η²); the pairwise forms of the other rules cancel Z exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.mwu import MWU


@dataclass(frozen=True)
class SPPO(MWU):
    name = "sppo"
    pointwise = True
