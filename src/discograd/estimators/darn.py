r"""The DARN estimator (Gregor, Danihelka, Mnih, Blundell & Wierstra, 2014, "Deep AutoRegressive
Networks"), called the "1/2 estimator" in MuProp (Gu et al., 2016, section 4.2, eqs. 5-7) and
"DARN" in the Gumbel-Softmax paper's comparisons (Jang et al., 2017).

The learning signal of a unit is the first-order Taylor expansion of f *around the sample* z,
evaluated at a fixed point :math:`\bar z`: :math:`f(z) - f(\bar z) \approx f'(z)^\top(z - \bar z)`.
Each unit (a Bernoulli variable, or a categorical row) is treated as if it were the only one:

.. math:: \hat g_r = \frac{1}{S}\sum_{s=1}^{S}
          \Big(\textstyle\sum_{k} \partial_{z_{rk}} f(z_s)\,(z_{s,rk} - \bar z_k)\Big)
          \nabla_\theta \log q_\theta(z_{s,r}) \;+\; \nabla f(z_s)

Bernoulli (:math:`\bar z = 1/2`, the paper's choice; eq. 6): for logit :math:`\theta_i`,
:math:`\hat g_i = f'_i(z)(z_i - \tfrac12)(z_i - \sigma_i) = f'_i(z)\,\sigma_i(1-\sigma_i)
/ (2\,q(z_i))`. Its expectation replaces the exact finite difference
:math:`f(z_i{=}1) - f(z_i{=}0)` by the trapezoid rule :math:`\tfrac12[f'_i(z_i{=}1) +
f'_i(z_i{=}0)]`:

.. math:: \mathbb{E}[\hat g_i] = \sigma_i(1-\sigma_i)\;
          \mathbb{E}_{z_{-i}}\tfrac12\big[f'_i(1, z_{-i}) + f'_i(0, z_{-i})\big]

so it is exact when f is at most quadratic in each single variable (linear f, :math:`z^\top A z`)
and **biased** otherwise: for :math:`f = c z^3` it is 3/2 of the gradient.

Categorical (eq. 7): no canonical :math:`\bar z` exists; MuProp tried 1/2, 1/K and the mean and
reported 1/K, the default here (``center``). Exact for linear f, **biased** otherwise (already
for a quadratic of one row).

Cost: S evaluations of f and one backward of f with respect to the samples. f must be
differentiable in its input (it receives exact one-hots / 0-1 values). Categorical and
Bernoulli only.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from discograd.estimators._family import Family
from discograd.estimators.base import (
    Estimator,
    LossFn,
    check_n_samples,
    register,
    sum_rows,
    value_and_grad,
    zero_value,
)


@register("darn")
class DARN(Estimator):
    """Per-unit learning signal f'(z)^T (z - center), biased.

    Args:
        n_samples: samples averaged per call.
        center: the expansion point :math:`\\bar z`: None for 1/K (1/2 for Bernoulli), a float
            used for every entry, or ``"mean"`` for the (detached) probabilities.
    """

    unbiased = False
    compilable = False  # torch.autograd.grad in the call, graph kept (see Estimator)
    evaluations = "S"

    def __init__(self, n_samples: int = 1, center: Union[None, float, str] = None) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)
        ok = center is None or center == "mean" or isinstance(center, (int, float))
        if isinstance(center, (int, float)) and not math.isfinite(center):
            ok = False  # a NaN / inf centre makes every surrogate and gradient NaN
        if not ok or isinstance(center, bool):
            raise ValueError(f"center must be None, a finite float or 'mean', got {center!r}")
        self.center = center

    def _center(self, family: Family) -> Union[float, Tensor]:
        if self.center == "mean":
            return family.mean().detach()
        if self.center is not None:
            return float(self.center)
        return 1.0 / family.num_classes if family.kind == "categorical" else 0.5  # type: ignore

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        z = family.sample(self.n_samples, generator)
        fz, df = value_and_grad(f, z, family, what="f", keep_graph=True)
        signal = df * (z - self._center(family))
        if family.kind == "categorical":
            signal = signal.sum(-1)  # one signal per categorical row
        # Each unit's score is weighted by its own signal, not by the sum over units.
        per_unit = signal.detach() * zero_value(family.log_prob(z))
        return (fz + sum_rows(per_unit, fz.dim() - 1)).mean(0)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, n_samples={self.n_samples}, center={self.center!r}"
