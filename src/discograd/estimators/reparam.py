r"""The reparameterization (pathwise) estimator for continuous distributions.

.. math:: z = g(\epsilon, \phi),\ \epsilon \sim p(\epsilon): \quad
          \hat g = \frac{1}{S}\sum_s \nabla_\phi f(g(\epsilon_s, \phi))

(the seeds' eq. 5). Unbiased; usually far lower variance than the score function. Cost: S
evaluations of f and their backward. Needs a ``torch.distributions.Distribution`` with
``rsample``; for discrete variables use a relaxation (``gumbel-softmax``) instead.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; Rezende, Mohamed & Wierstra,
"Stochastic Backpropagation and Approximate Inference in Deep Generative Models", ICML 2014.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from discograd.estimators._family import Family
from discograd.estimators.base import Estimator, LossFn, check_n_samples, evaluate, register


@register("reparam")
class Reparam(Estimator):
    """Pathwise gradient through ``dist.rsample``."""

    distributions = ("distribution",)
    unbiased = True
    evaluations = "S"

    def __init__(self, n_samples: int = 1) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        if not family.dist.has_rsample:  # type: ignore[attr-defined]
            raise ValueError(
                f"reparam needs a distribution with rsample; {type(family.dist).__name__} has none"  # type: ignore[attr-defined]
            )
        z = family.rsample(self.n_samples, generator)  # type: ignore[attr-defined]
        return evaluate(f, z, family).mean(0)
