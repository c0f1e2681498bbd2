r"""MuProp (Gu, Levine, Sutskever & Mnih, 2016): REINFORCE with a first-order Taylor control
variate taken at the mean-field point.

With :math:`\mu = \mathbb{E}_{q_\theta}[z]` (softmax or sigmoid of the logits) the control
variate is the linearization of f at :math:`\mu`,
:math:`h(z) = f(\mu) + f'(\mu)^\top (z - \mu)`, and since h is linear in z its score-function
term has the closed form :math:`\mathbb{E}[h(z)\nabla\log q(z)] = f'(\mu)^\top\nabla_\theta\mu`
(the paper's eq. 3):

.. math:: \hat g = \frac{1}{S}\sum_{s=1}^{S}\big(f(z_s) - h(z_s)\big)\,\nabla_\theta\log q(z_s)
          + \nabla f(z_s) \;+\; f'(\mu)^\top \nabla_\theta \mu,
          \qquad z_s \sim q_\theta

Unbiased for any f (f(mu) and f'(mu) are held constant). The closer f is to linear, the smaller
the residual f - h and the variance; for linear f the estimate is exact. f's own parameters get
only the gradient at the samples: the control variate is differentiated with respect to a
detached copy of mu alone. Cost: S + 1 evaluations of f (S samples and mu) and one backward of
f at mu. f must accept relaxed inputs (probabilities in place of one-hots / bits) and be
differentiable in them. Categorical and Bernoulli only.
"""

from __future__ import annotations

from typing import Optional, Tuple

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
    sum_rows,
    value_and_grad,
    zero_value,
)


@register("muprop")
class MuProp(Estimator):
    """Score function with the Taylor expansion of f at the mean as control variate."""

    unbiased = True
    compilable = False  # torch.autograd.grad in the call, graph kept (see Estimator)
    evaluations = "S + 1"

    def __init__(self, n_samples: int = 1) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)

    def control_variate(
        self, f: LossFn, family: Family, z: Tensor, out_ndim: int
    ) -> Tuple[Tensor, Tensor]:
        """h(z_s) (S, *out_shape), detached, and the analytic term f'(mu)^T mu (*out_shape),
        differentiable in the logits through mu."""
        mu = family.mean()
        f_mu, df = value_and_grad(
            f, mu.unsqueeze(0), family, what="f at the mean", keep_graph=False
        )
        h = f_mu + sum_rows(df * (z - mu.detach()), out_ndim)
        return h, sum_rows(df * mu, out_ndim)[0]

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        z, fz, log_q = score_draws(f, family, self.n_samples, generator)
        h, analytic = self.control_variate(f, family, z, fz.dim() - 1)
        return score_surrogate(fz, log_q, h).mean(0) + zero_value(analytic)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, n_samples={self.n_samples}"
