"""Iterative IPO (Azar et al. 2023; COMAL's baseline): IPO with the previous iterate as reference.

IPO's population optimum with samples and reference π_t is ``π_t · exp(P(y ≻ π_t)/τ_IPO)``, i.e.
the MWU step with ``η = 1/τ_IPO`` (the official code's ``eta`` is ``1/η``). Sampled form:
``([log π_θ(y_w) − log π_t(y_w)] − [log π_θ(y_l) − log π_t(y_l)] − η/2)²`` on judged pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.mwu import MWU


@dataclass(frozen=True)
class IterIPO(MWU):
    name = "iter-ipo"
