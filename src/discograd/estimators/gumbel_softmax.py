r"""Gumbel-softmax / Concrete relaxation (Jang et al., 2016; Maddison et al., 2016).

.. math:: y = \mathrm{softmax}((\theta + G)/\tau),\quad G_i \sim \mathrm{Gumbel}(0,1),\qquad
          \hat g = \nabla_\theta f(y)

f is evaluated at the relaxed sample y, so both value and gradient are those of the relaxed
objective :math:`\mathbb{E}[f(y)]`: biased for :math:`\mathbb{E}[f(z)]`, with a bias that
shrinks as :math:`\tau \to 0` (while the variance grows). Bernoulli variables use the binary
Concrete :math:`\sigma((a + L)/\tau)`, L ~ Logistic. Cost: 1 evaluation of f (S with n_samples).

``st-gumbel-softmax`` (straight-through Gumbel-softmax, Jang et al.): the forward value is the
exact sample :math:`\mathrm{onehot}(\arg\max(\theta + G))`, the gradient that of y. Biased.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from discograd.estimators._family import Family
from discograd.estimators.base import (
    LossFn,
    Relaxed,
    categorical_view,
    check_n_samples,
    evaluate,
    register,
)
from discograd.ops import gumbel_softmax
from discograd.schedules import Schedule


@register("gumbel-softmax")
class GumbelSoftmax(Relaxed):
    """Relaxed samples at temperature ``tau`` (float, tensor, or schedule)."""

    hard = False
    evaluations = "S"

    def __init__(self, tau: Union[float, Tensor, Schedule] = 1.0, n_samples: int = 1) -> None:
        super().__init__(tau)
        self.n_samples = check_n_samples(n_samples)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        logits, decode = categorical_view(family)
        expanded = logits.expand((self.n_samples,) + logits.shape)
        y = gumbel_softmax(expanded, self.temperature(), hard=self.hard, generator=generator)
        return evaluate(f, decode(y), family).mean(0)


@register("st-gumbel-softmax")
class STGumbelSoftmax(GumbelSoftmax):
    """Exact one-hot forward, Gumbel-softmax gradient backward."""

    hard = True
