r"""NVIL (Mnih & Gregor, 2014, "Neural Variational Inference and Learning in Belief Networks"):
REINFORCE with an input-dependent baseline, centering and variance normalization.

A network :math:`b_\psi` sees the detached logits of the rows under each output entry (or
whatever a user ``baseline_net`` computes from them). With the learning signal
:math:`l = f(z) - b_\psi`, running estimates c (mean of l) and v (variance of l) give

.. math:: A = \frac{l - c}{\max(1, \sqrt{v})}, \qquad
          \hat g = \frac{1}{S}\sum_{s=1}^{S} A_s\,\nabla_\theta \log q_\theta(z_s) + \nabla f(z_s)

c and v are exponential moving averages, :math:`c \leftarrow \alpha c + (1-\alpha)\,
\mathrm{mean}(l)` and :math:`v \leftarrow \alpha v + (1-\alpha)\,\mathrm{var}(l)` over the
entries (samples x output entries) of each call, updated *after* they are used and only in
training mode (:math:`\alpha = 0.8` in the paper). The baseline is trained to minimize
:math:`\mathbb{E}[(l - c)^2]` through a term of the surrogate that is zero in value, so the
user's single backward trains it.

Bias: b, c and v do not depend on the current samples, so

- ``normalize=False`` (the default): unbiased.
- ``normalize=True`` (the paper's setting): the gradient reaching the logits is an unbiased
  estimate of :math:`\nabla_\theta\mathbb{E}[f] / \max(1, \sqrt{v})`: the direction is
  unbiased, the length is rescaled by a positive factor that changes over training (an
  adaptive step size). f's own parameters still get the unscaled :math:`\nabla f(z)`.

Cost: S evaluations of f and one pass of the baseline network. Works for categorical,
Bernoulli and any ``torch.distributions.Distribution`` (the network then sees its mean).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from discograd._validation import check_positive_int
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
from discograd.estimators.baselines import EMABaseline, NetworkBaseline


class _MLP(nn.Module):
    """features (..., F) -> (..., 1): one tanh hidden layer, output layer initialized to zero
    (the baseline starts at 0)."""

    def __init__(self, in_features: Optional[int], hidden: int) -> None:
        super().__init__()
        self.hidden = (
            nn.LazyLinear(hidden) if in_features is None else nn.Linear(in_features, hidden)
        )
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        # A materialized LazyLinear becomes a Linear, so this also catches logits whose shape
        # changed since the first call.
        if not isinstance(self.hidden, nn.LazyLinear) and x.shape[-1] != self.hidden.in_features:
            raise ValueError(
                f"in_features={self.hidden.in_features}, but each output of f depends on "
                f"{x.shape[-1]} logits; pass in_features={x.shape[-1]} (or None to infer it)"
            )
        # Masked (-inf) logits would turn the baseline into NaN; any finite stand-in keeps it a
        # valid (sample-independent) baseline.
        h = x.to(self.out.weight.dtype).clamp_min(-30.0)
        return self.out(torch.tanh(self.hidden(h))).to(x.dtype)


@register("nvil")
class NVIL(Estimator):
    """Score function with a learned input-dependent baseline, centering and normalization.

    Args:
        n_samples: samples per call (S).
        baseline_net: a module mapping features (*out_shape, F) to (*out_shape, 1); by default
            an MLP with one tanh layer of ``hidden`` units.
        hidden: hidden units of the default network.
        alpha: decay of the running mean c and variance v of the learning signal.
        normalize: divide the centered signal by max(1, sqrt(v)).
        in_features: F for the default network. When None it is a ``torch.nn.LazyLinear``
            whose parameters exist only after the first call: call the estimator once before
            building an optimizer over ``parameters()``.
    """

    distributions = ("categorical", "bernoulli", "distribution")
    unbiased = True  # with normalize=False; see the module docstring for normalize=True
    evaluations = "S"

    def __init__(
        self,
        n_samples: int = 1,
        baseline_net: Optional[nn.Module] = None,
        hidden: int = 100,
        alpha: float = 0.8,
        normalize: bool = False,
        in_features: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)
        check_positive_int(hidden, name="hidden")
        if in_features is not None:
            check_positive_int(in_features, name="in_features")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
            raise ValueError(f"alpha must be a float in [0, 1), got {alpha!r}")
        if baseline_net is not None and not isinstance(baseline_net, nn.Module):
            raise ValueError(
                f"baseline_net must be an nn.Module, got {type(baseline_net).__name__}"
            )
        self.alpha = float(alpha)
        self.normalize = bool(normalize)
        net = _MLP(in_features, hidden) if baseline_net is None else baseline_net
        self.baseline = NetworkBaseline(net)
        # Running mean c and variance v of the learning signal: both are moving averages that
        # update after use, in training mode only, which is what EMABaseline maintains.
        self.centre = EMABaseline(self.alpha)
        self.spread = EMABaseline(self.alpha)

    def scale(self) -> Tensor:
        """max(1, sqrt(v)): what the centered learning signal is divided by."""
        return self.spread.value.sqrt().clamp_min(1.0)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        _, fz, log_q = score_draws(f, family, self.n_samples, generator)
        b = self.baseline(family, fz.dim() - 1)
        c = self.centre.value  # read before the update below replaces it
        if self.normalize:
            log_q = log_q / self.scale()  # scales the score term only: A = (l - c) / scale
        surrogate = score_surrogate(fz, log_q, b.detach() + c).mean(0)
        aux = self.baseline.loss(fz - c, b)  # mean over samples of (l - c)^2, l = f - b
        l = (fz - b).detach()
        self.centre.update(l)
        self.spread.update((l - l.mean()) ** 2)
        return surrogate + zero_value(aux)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, n_samples={self.n_samples}, alpha={self.alpha}, "
            f"normalize={self.normalize}"
        )
