r"""REINFORCE leave-one-out (RLOO; Kool, van Hoof & Welling, 2019, "Buy 4 REINFORCE samples,
get a baseline for free!").

With :math:`S \ge 2` samples, each sample's baseline is the mean loss of the *other* samples:

.. math:: b_s = \frac{1}{S-1}\sum_{j \ne s} f(z_j), \qquad
          \hat g = \frac{1}{S}\sum_{s=1}^{S} \big(f(z_s) - b_s\big)\nabla_\theta \log q_\theta(z_s)
          + \nabla f(z_s), \qquad z_s \overset{iid}{\sim} q_\theta

Unbiased: :math:`b_s` is independent of :math:`z_s`, so
:math:`\mathbb{E}[b_s \nabla\log q(z_s)] = \mathbb{E}[b_s]\,\mathbb{E}[\nabla\log q(z_s)] = 0`.
Equivalently :math:`\hat g = \frac{1}{S-1}\sum_s (f(z_s) - \bar f)\nabla\log q(z_s)`. (Using
:math:`\bar f`, which includes :math:`f(z_s)` itself, as the baseline would shrink the
expectation by the factor :math:`(S-1)/S`.) Cost: S evaluations of f, one batched call.
Works for categorical, Bernoulli and any ``torch.distributions.Distribution``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from discograd.estimators._family import Family
from discograd.estimators.base import (
    Estimator,
    LossFn,
    check_n_samples,
    register,
    score_draws,
    score_surrogate,
)


@register("rloo")
class RLOO(Estimator):
    """Score function with the leave-one-out baseline; ``n_samples`` (S) must be at least 2."""

    distributions = ("categorical", "bernoulli", "distribution")
    unbiased = True
    evaluations = "S"

    def __init__(self, n_samples: int = 2) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples, minimum=2)

    def baseline(self, fz: Tensor) -> Tensor:
        """b_s = mean of the other samples' losses, (S, *out_shape)."""
        fz = fz.detach()
        return (fz.sum(0, keepdim=True) - fz) / (fz.shape[0] - 1)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        _, fz, log_q = score_draws(f, family, self.n_samples, generator)
        return score_surrogate(fz, log_q, self.baseline(fz)).mean(0)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, n_samples={self.n_samples}"
