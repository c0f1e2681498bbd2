r"""ARM, Augment-REINFORCE-Merge (Yin & Zhou, 2019), for Bernoulli variables.

With :math:`u \sim U(0,1)^D` the antithetic pair

.. math:: b = 1[u < \sigma(\alpha)], \qquad \tilde b = 1[u > \sigma(-\alpha)]
          \;(= 1[1 - u < \sigma(\alpha)])

holds two exact Bernoulli(:math:`\sigma(\alpha)`) samples, and

.. math:: \hat g_d = \big(f(\tilde b) - f(b)\big)\,(u_d - \tfrac12).

Unbiased. Cost: 2 evaluations of f per pair, in one call of f on the 2S stacked samples
(``n_samples`` = S pairs). The surrogate's value is the mean of f over all 2S samples, and f's
own parameters get the mean of the 2S pathwise gradients. Bernoulli only.

Yin & Zhou, "ARM: Augment-REINFORCE-Merge gradient for stochastic binary networks", ICLR 2019.
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
    evaluate,
    register,
    sum_rows,
    zero_value,
)
from discograd.ops import compute_dtype, standard_exponential


@register("arm")
class ARM(Estimator):
    r"""ARM with ``n_samples`` antithetic pairs.

    Subclasses change only :meth:`weights`: the estimate is
    :math:`\hat g_d = (f(b) - f(\tilde b))\, w_d`, averaged over the pairs.
    """

    distributions = ("bernoulli",)
    unbiased = True
    evaluations = "2S"

    def __init__(self, n_samples: int = 1) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)

    def weights(self, logits: Tensor, noise: Tensor, b: Tensor, b_anti: Tensor) -> Tensor:
        r"""w with :math:`\hat g = (f(b) - f(\tilde b))\,w`; here :math:`w = 1/2 - u`.

        ``noise`` is the logistic :math:`L = \mathrm{logit}(u)`; ``logits`` are detached.
        """
        return 0.5 - torch.sigmoid(noise)

    def pair(
        self, alpha: Tensor, n: int, generator: Optional[torch.Generator]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """n antithetic pairs for the detached logits ``alpha``: (L, b, b~), each (n, *alpha.shape).

        L = log E2 - log E1 is Logistic, so u = sigmoid(L) is uniform; comparing alpha with L
        keeps the pair exact even where sigmoid(alpha) rounds to 0 or 1.
        """
        shape = (2, n) + tuple(alpha.shape)
        e = standard_exponential(shape, generator=generator, dtype=alpha.dtype, device=alpha.device)
        noise = e[1].log() - e[0].log()
        b = (alpha - noise > 0).to(alpha.dtype)  # u < sigmoid(alpha)
        b_anti = (alpha + noise > 0).to(alpha.dtype)  # u > sigmoid(-alpha)
        return noise, b, b_anti

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        logits = family.logits  # type: ignore[attr-defined]
        alpha = logits.detach().to(compute_dtype(logits.dtype))
        s = self.n_samples
        noise, b, b_anti = self.pair(alpha, s, generator)
        values = evaluate(f, torch.cat([b, b_anti]).to(logits.dtype), family)
        f_b, f_anti = values[:s], values[s:]
        out_ndim = values.dim() - 1
        w = self.weights(alpha, noise, b, b_anti).to(logits.dtype)
        score = sum_rows(w * logits, out_ndim)
        surrogate = 0.5 * (f_b + f_anti) + (f_b - f_anti).detach() * zero_value(score)
        return surrogate.mean(0)
