r"""Gumbel-Rao (Paulus, Maddison & Krause, 2021, "Rao-Blackwellizing the Straight-Through
Gumbel-Softmax Gradient Estimator").

Forward: the exact sample :math:`D = \mathrm{onehot}(\arg\max(\theta + G))` (or 0/1).
Backward: the straight-through Gumbel-softmax gradient with its Jacobian averaged over k
perturbations drawn given D (:func:`~discograd.estimators._conditional.conditional_gumbel`):

.. math:: G^{(j)} \sim p(G \mid \arg\max(\theta + G) = D),\qquad
          \hat g = \frac{\partial f}{\partial z}\Big|_{D}\; \frac1k \sum_{j=1}^k
          \frac{\partial}{\partial\theta}\, \mathrm{softmax}\big((\theta + G^{(j)})/\tau\big),

the derivative taken with the noise :math:`G^{(j)}` held fixed. This is a Monte Carlo estimate of
:math:`\mathbb{E}[\hat g_{\mathrm{ST\text{-}GS}} \mid D]`, so it has the same expectation as
ST-Gumbel-softmax and, by Rao-Blackwell, no more variance, for every k >= 1 (k = 1 is ST-GS in
distribution). The official code likewise draws the conditional noise without gradient;
differentiating through the noise's dependence on theta as well would change the expectation
by :math:`\sum_D (\partial p(D)/\partial\theta)\,\mathbb{E}[\,\cdot \mid D]`.

Biased for :math:`\nabla\mathbb{E}[f(z)]`, like ST-GS. Cost: 1 evaluation of f (S with
n_samples) and k softmaxes per sample.

Bernoulli variables (P(b = 1) = sigmoid(a)) take a closed form instead of the two-class view
[0, a]: the relaxed sample is :math:`\sigma(s/\tau)` with :math:`s = a + L` and L a logistic
truncated to the side of -a that b fixes, drawn exactly by inverse CDF
(:func:`~discograd.estimators._conditional.conditional_logistic`); s has derivative 1 in a with
the noise held fixed, as :math:`z_1 - z_0` has in the two-class view. Same distribution, so
the same estimator, at a fraction of the cost (no (..., 2) tensors, one exponential instead
of two per variable and perturbation).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from discograd._validation import check_positive_int
from discograd.estimators._conditional import conditional_gumbel, conditional_logistic
from discograd.estimators._family import BernoulliFamily, Family
from discograd.estimators.base import (
    LossFn,
    Relaxed,
    categorical_view,
    check_n_samples,
    evaluate,
    register,
    zero_value,
)
from discograd.ops import _tau_for, _tempered, compute_dtype, gumbel_max, straight_through
from discograd.schedules import Schedule


@register("gumbel-rao")
class GumbelRao(Relaxed):
    """Exact samples forward; the ST-GS gradient averaged over k conditional Gumbels backward."""

    unbiased = False
    evaluations = "S"

    def __init__(
        self, tau: Union[float, Tensor, Schedule] = 1.0, k: int = 10, n_samples: int = 1
    ) -> None:
        super().__init__(tau)
        check_positive_int(k, name="k")
        self.k = k
        self.n_samples = check_n_samples(n_samples)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        if isinstance(family, BernoulliFamily):
            return self._bernoulli(f, family, generator)
        logits, decode = categorical_view(family)
        theta = logits.to(compute_dtype(logits.dtype)).expand((self.n_samples,) + logits.shape)
        d = gumbel_max(theta.detach(), generator=generator, one_hot=True)  # (S, ..., K)
        tau = _tau_for(self.temperature(), theta, -1)

        # k draws of theta + G given D, (k, S, ..., K). The noise is held fixed in the derivative
        # (see the module docstring), so theta enters only through the zero-valued
        # theta - stop(theta); masked (-inf) categories get 0 there, not inf - inf.
        perturbed = conditional_gumbel(theta.detach(), d, generator, n=self.k)
        perturbed = perturbed + torch.where(torch.isfinite(theta), zero_value(theta), 0.0)
        soft = torch.softmax(_tempered(perturbed, tau, -1), -1).mean(0)
        z = straight_through(d, soft).to(logits.dtype)
        return evaluate(f, decode(z), family).mean(0)

    def _bernoulli(
        self, f: LossFn, family: BernoulliFamily, generator: Optional[torch.Generator]
    ) -> Tensor:
        """The closed form for Bernoulli variables (see the module docstring)."""
        logits = family.logits
        a = logits.to(compute_dtype(logits.dtype)).expand((self.n_samples,) + logits.shape)
        b = family.sample(self.n_samples, generator).to(a.dtype)  # (S, ...) exact 0/1
        # The 2-class view's checks and broadcasting of a tensor tau, without its class dim.
        tau = _tau_for(self.temperature(), a.unsqueeze(-1), -1)
        if isinstance(tau, Tensor):
            tau = tau.squeeze(-1)
        # k draws of a + L given b, (k, S, ...), the noise held fixed in the derivative.
        s = conditional_logistic(a.detach(), b, generator, n=self.k) + zero_value(a)
        soft = torch.sigmoid(s / tau).mean(0)
        z = straight_through(b, soft).to(logits.dtype)
        return evaluate(f, z, family).mean(0)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, tau={self.tau_schedule!r}, k={self.k}, n_samples={self.n_samples}"
        )
