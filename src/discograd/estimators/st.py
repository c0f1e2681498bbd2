r"""Straight-through (Bengio et al., 2013), as in Jang et al.'s tables.

Forward: an exact sample z (one-hot, or 0/1). Backward: the gradient of f at z is passed to the
probabilities :math:`\pi = \mathrm{softmax}(\theta)` (or :math:`\sigma(\theta)`) as if
:math:`z = \pi`:

.. math:: \hat g = \frac{\partial f}{\partial z}\Big|_{z}\, \frac{\partial \pi}{\partial \theta}

Biased: for linear :math:`f(z) = c^\top z` it equals the exact gradient :math:`c^\top
\partial\pi/\partial\theta`; otherwise it is not. Cost: 1 evaluation of f (S with n_samples).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from discograd.estimators._family import Family
from discograd.estimators.base import Estimator, LossFn, check_n_samples, evaluate, register
from discograd.ops import straight_through


@register("st")
class StraightThrough(Estimator):
    """Exact samples forward, gradient through the probabilities."""

    unbiased = False
    evaluations = "S"

    def __init__(self, n_samples: int = 1) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        z = family.sample(self.n_samples, generator)
        probs = family.mean().expand(z.shape)
        return evaluate(f, straight_through(z, probs), family).mean(0)
