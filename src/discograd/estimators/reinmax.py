r"""ReinMax (Liu et al., 2023, "Bridging Discrete and Backpropagation: Straight-Through and
Beyond"): straight-through with second-order accuracy.

Forward: an exact sample :math:`D \sim \pi_0 = \mathrm{softmax}(\theta)` (one-hot, or 0/1).
Backward, with :math:`g = \partial f / \partial z` at :math:`z = D` and
:math:`J(p) = \mathrm{diag}(p) - p p^\top` the softmax Jacobian at output p:

.. math:: \pi_1 = \tfrac12\big(D + \mathrm{softmax}(\theta/\tau)\big), \qquad
          \hat g = 2\, J(\pi_1)\, g - \tfrac12\, J(\pi_0)\, g .

This is the paper's Algorithm 2: :math:`\pi_1 \leftarrow \mathrm{softmax}(\mathrm{stop}(\log\pi_1
- \theta) + \theta)` (the value :math:`\pi_1`, the Jacobian :math:`J(\pi_1)` in theta),
:math:`\pi_2 = 2\pi_1 - \tfrac12\pi_0`, and the output carries :math:`\pi_2`'s gradient with the
value D. tau only moves the point :math:`\pi_1`; no gradient reaches tau (the paper's stop-grad).

What is known. The exact gradient is
:math:`\sum_{i,j} \pi_j \big(f(e_i) - f(e_j)\big)\, \partial\pi_i/\partial\theta`. ST
replaces :math:`f(e_i) - f(e_j)` by :math:`\nabla f(e_j)^\top (e_i - e_j)` (forward Euler, first
order); ReinMax by :math:`\tfrac12(\nabla f(e_i) + \nabla f(e_j))^\top (e_i - e_j)` (Heun's
method, the trapezoid rule: second order). Consequences checked in the tests: at tau = 1 its
expectation is the exact gradient for every f quadratic (hence also linear) in z; for other f,
or tau != 1, it is biased (for linear :math:`f = c^\top z`:
:math:`\mathbb{E}\hat g = (J(s) + \tfrac12 (s - \pi_0)(s - \pi_0)^\top)\, c` with
:math:`s = \mathrm{softmax}(\theta/\tau)`). The paper recommends tau >= 1. Bernoulli variables
use the two-class view [0, a].

Cost: 1 evaluation of f (S with n_samples), two softmaxes.
"""

from __future__ import annotations

import math
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
from discograd.ops import _tau_for, compute_dtype, gumbel_max, straight_through
from discograd.schedules import Schedule


@register("reinmax")
class ReinMax(Relaxed):
    """Exact samples forward, the second-order (Heun) ReinMax gradient backward."""

    unbiased = False
    evaluations = "S"

    def __init__(self, tau: Union[float, Tensor, Schedule] = 1.0, n_samples: int = 1) -> None:
        super().__init__(tau)
        self.n_samples = check_n_samples(n_samples)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        logits, decode = categorical_view(family)
        work = compute_dtype(logits.dtype)
        theta = logits.to(work).expand((self.n_samples,) + logits.shape)  # (S, ..., K)
        d = gumbel_max(theta.detach(), generator=generator, one_hot=True)
        tau = _tau_for(self.temperature(), theta, -1)

        pi0 = torch.softmax(theta, -1)
        # log pi1 = log((D + softmax(theta / tau)) / 2), in log space so no category underflows.
        log_pi1 = torch.logaddexp(torch.log_softmax(theta.detach() / tau, -1), d.log())
        log_pi1 = log_pi1 - math.log(2.0)
        # softmax(theta + stop(log pi1 - theta)) has the value pi1 and the Jacobian J(pi1) in
        # theta. A masked (-inf) category has pi1 = 0; its shift is set to 0 to avoid inf - inf.
        shift = torch.where(torch.isfinite(theta), log_pi1 - theta, 0.0).detach()
        pi1 = torch.softmax(theta + shift, -1)
        pi2 = 2.0 * pi1 - 0.5 * pi0
        z = straight_through(d, pi2).to(logits.dtype)
        return evaluate(f, decode(z), family).mean(0)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, tau={self.tau_schedule!r}, n_samples={self.n_samples}"
