r"""RELAX (Grathwohl et al., 2018): REBAR's estimator with a learned, free-form control variate.

With :math:`z = \theta + G`, :math:`b = H(z)`, :math:`\tilde z \sim p(z \mid b)` as in REBAR and

.. math:: c_\phi(z) = \eta f(\sigma_\lambda(z)) + r_\rho(z),

.. math:: \hat g = \big[f(b) - c_\phi(\tilde z)\big]\nabla_\theta\log p(b)
          + \nabla_\theta c_\phi(z) - \nabla_\theta c_\phi(\tilde z).

Unbiased for ANY value of :math:`\phi = (\eta, \lambda, \rho)`; all of them are trained to
minimize the variance of the logits' gradient estimate (``train_cv=False`` switches that off);
see :mod:`._control_variate`. f's parameters get :math:`\nabla f(b)` only.

:math:`r_\rho` sees the perturbed logits z, (S, ..., K); a Bernoulli variable's are the
logistic-perturbed logits a + L, (S, *logits.shape); masked (-inf) entries are given as 0. It is

- ``net``: a module mapping them to (S, *out_shape), one value per output of f;
- else, with ``in_features`` (the number of entries of z under one output of f), an MLP
  (``hidden`` tanh units) of those entries, flattened;
- else an MLP :math:`m: \mathbb{R} \to \mathbb{R}` applied to every entry and summed over the
  entries under each output, which fits any shape.

``rebar_term=False`` drops :math:`\eta f(\sigma_\lambda(z))`. Cost: 3 evaluations of f per
sample with the REBAR term, 1 without, plus 2 of r. Categorical and Bernoulli; Bernoulli
variables take REBAR's closed form, where ``coupling="tied"`` (default) makes
:math:`\tilde z = z` in value, so c is evaluated once: 2 evaluations of f with the REBAR term,
1 without, and 1 of r (:mod:`._control_variate`).

Grathwohl, Choi, Wu, Roeder & Duvenaud, "Backpropagation through the void: optimizing control
variates for black-box gradient estimation", ICLR 2018.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from discograd.estimators._control_variate import ControlVariateEstimator
from discograd.estimators._family import Family
from discograd.estimators.base import register, sum_rows


def _mlp(in_features: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))


@register("relax")
class RELAX(ControlVariateEstimator):
    """RELAX with the residual control variate ``net`` (see the module docstring)."""

    evaluations = "3S (S with rebar_term=False; 2S and S for tied Bernoulli)"

    def __init__(
        self,
        net: Optional[nn.Module] = None,
        in_features: Optional[int] = None,
        hidden: int = 32,
        rebar_term: bool = True,
        n_samples: int = 1,
        eta: float = 1.0,
        temperature: float = 0.5,
        train_cv: bool = True,
        coupling: str = "tied",
    ) -> None:
        super().__init__(n_samples, eta, temperature, train_cv, coupling)
        self.rebar_term = bool(rebar_term)
        if not self.rebar_term:  # c = r alone: eta and the temperature have no part in it
            del self.eta, self.log_temperature
        if net is not None and in_features is not None:
            raise ValueError("give either net or in_features (to build an MLP), not both")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        if net is not None:
            self.mode = "net"
        elif in_features is not None:
            if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
                raise ValueError(f"in_features must be an int >= 1, got {in_features!r}")
            self.mode, net = "flat", _mlp(in_features, hidden)
            self.in_features = in_features
        else:
            self.mode, net = "elementwise", _mlp(1, hidden)
        self.net = net

    def residual(self, z: Tensor, family: Family, out_ndim: int) -> Tensor:
        # A masked category's z is -inf in every draw: a constant 0 tells the net as much.
        x = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
        param = next(self.net.parameters(), None)
        x = x.to(z.dtype if param is None else param.dtype)
        if self.mode == "flat":
            entries = math.prod(x.shape[1 + out_ndim :])  # not -1: an empty batch has no numel
            if entries != self.in_features:
                raise ValueError(
                    f"in_features={self.in_features}, but each output of f depends on "
                    f"{entries} entries of z; pass in_features={entries}"
                )
            r = self.net(x.reshape(tuple(x.shape[: 1 + out_ndim]) + (entries,))).squeeze(-1)
        elif self.mode == "elementwise":
            r = sum_rows(self.net(x.unsqueeze(-1)).squeeze(-1), out_ndim)
        else:
            r = self.net(x)
        want = tuple(z.shape[: 1 + out_ndim])
        if not isinstance(r, Tensor) or tuple(r.shape) != want:
            got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(f"net returned {got} for input {tuple(x.shape)}; expected {want}")
        return r
