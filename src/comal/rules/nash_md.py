"""Nash-MD (Munos et al. 2023, arXiv 2312.00886): mirror descent against a geometric mixture.

Tabular: ``log π̃_t = (1 − ητ) log π_t + ητ log μ`` (normalised), then
``log π_{t+1} = log π̃_t + η a_{π̃_t}``. Converges to the regularised Nash (bias O(τ)).
Sampled form: two steps; the second has anchor ``log π̃_t`` and needs samples from π̃_t.
"""

from __future__ import annotations

from dataclasses import dataclass

from comal.rules.base import CURRENT, REFERENCE, ProxStep
from comal.rules.inpo import INPO

MIXTURE = "mixture"


@dataclass(frozen=True)
class NashMD(INPO):
    name = "nash-md"

    def prox_steps(self):
        mix = self.eta * self.tau
        return (ProxStep(MIXTURE, {CURRENT: 1 - mix, REFERENCE: mix}, None, 0.0),
                ProxStep(CURRENT, {MIXTURE: 1.0}, MIXTURE, self.eta))
