r"""DisARM (Dong, Mnih & Tucker, 2020): ARM with the antithetic noise integrated out.

With ARM's antithetic pair :math:`b = 1[u < \sigma(\alpha)]`,
:math:`\tilde b = 1[1 - u < \sigma(\alpha)]`, :math:`u \sim U(0,1)^D`,

.. math:: \hat g_d = \tfrac12\big(f(b) - f(\tilde b)\big)\,(-1)^{\tilde b_d}\,
          1[b_d \ne \tilde b_d]\,\sigma(|\alpha_d|),

the conditional expectation of ARM's estimate given the pair, so never of higher variance.
Unbiased. Cost: 2 evaluations of f per pair, in one call (``n_samples`` = S pairs). Bernoulli
only.

Dong, Mnih & Tucker, "DisARM: An antithetic gradient estimator for binary latent variables",
NeurIPS 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discograd.estimators.arm import ARM
from discograd.estimators.base import register


@register("disarm")
class DisARM(ARM):
    """DisARM with ``n_samples`` antithetic pairs."""

    def weights(self, logits: Tensor, noise: Tensor, b: Tensor, b_anti: Tensor) -> Tensor:
        sign = 1.0 - 2.0 * b_anti  # (-1)^b~
        return 0.5 * sign * (b != b_anti).to(logits.dtype) * torch.sigmoid(logits.abs())
