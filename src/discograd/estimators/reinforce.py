r"""REINFORCE, the score-function estimator (Williams, 1992), with an optional baseline.

.. math:: \hat g = \frac{1}{S}\sum_{s=1}^{S} \big(f(z_s) - b\big)\,\nabla_\theta \log q_\theta(z_s)
          + \nabla f(z_s), \qquad z_s \sim q_\theta

Unbiased for any baseline b that does not depend on the samples (none, a moving average of past
losses, or a learned input-dependent network). Cost: S evaluations of f (default S = 1).
Works for categorical, Bernoulli and any ``torch.distributions.Distribution``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from discograd.estimators._family import Family
from discograd.estimators.base import (
    Estimator,
    LossFn,
    check_n_samples,
    register,
    score_draws,
    score_surrogate,
    zero_value,
)
from discograd.estimators.baselines import make_baseline


@register("reinforce")
class Reinforce(Estimator):
    """Score function with ``baseline`` None, ``"ema"``, a float EMA decay, or a module."""

    distributions = ("categorical", "bernoulli", "distribution")
    unbiased = True
    evaluations = "S"

    def __init__(
        self, n_samples: int = 1, baseline: Union[None, str, float, nn.Module] = None
    ) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)
        self.baseline = make_baseline(baseline)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        _, fz, log_q = score_draws(f, family, self.n_samples, generator)
        out_ndim = fz.dim() - 1
        if self.baseline is None:
            return score_surrogate(fz, log_q).mean(0)
        b = self.baseline(family, out_ndim)
        surrogate = score_surrogate(fz, log_q, b).mean(0)
        aux = self.baseline.loss(fz, b)
        self.baseline.update(fz)
        return surrogate if aux is None else surrogate + zero_value(aux)
