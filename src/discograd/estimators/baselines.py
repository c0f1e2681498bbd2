r"""Baselines for score-function estimators: modules passed in, not flags inside estimators.

A baseline :math:`b` lowers the variance of :math:`(f(z) - b)\nabla\log q(z)` and keeps it
unbiased as long as :math:`b` does not depend on the sample :math:`z` it multiplies. Both kinds
here are computed before the current samples are seen.

- :class:`EMABaseline`: an exponential moving average of past losses (updated in training
  mode only, after the estimate).
- :class:`NetworkBaseline`: a user module :math:`b_\psi(x)` of the detached logits (an
  input-dependent baseline, as in NVIL), trained by the surrogate to minimize
  :math:`\mathbb{E}(f - b_\psi)^2` through a term that is zero in value.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from discograd._validation import checks_contents
from discograd.estimators._family import BernoulliFamily, CategoricalFamily, Family, TorchFamily


def baseline_features(family: Family, out_ndim: int) -> Tensor:
    """Detached inputs for an input-dependent baseline: (*out_shape, F), one row per output.

    The logits; for a torch Distribution its logits where it has them (Categorical,
    Bernoulli, Concrete, ...: torch defines a Categorical's mean as NaN), else its mean.
    """
    if isinstance(family, (CategoricalFamily, BernoulliFamily)):
        x = family.logits
    else:
        if not isinstance(family, TorchFamily):
            raise TypeError(f"no baseline features for {type(family).__name__}")
        dist = family.dist
        x = getattr(dist, "logits", None)  # only some torch Distributions have logits
        if x is None:
            try:
                x = dist.mean
            except NotImplementedError:
                raise ValueError(
                    f"an input-dependent baseline needs the logits or the mean of the "
                    f"distribution; {type(dist).__name__} has neither"
                ) from None
            if checks_contents() and bool(torch.isnan(x.detach()).any()):
                raise ValueError(
                    f"an input-dependent baseline needs the logits or the mean of the "
                    f"distribution; {type(dist).__name__} has no logits and its mean is NaN "
                    f"(undefined); use an EMA baseline or another estimator"
                )
    out_shape = tuple(family.row_shape[:out_ndim])
    # Rows' features flattened: F from the shape, not -1 (an empty batch has no numel to divide).
    features = math.prod(x.shape[len(out_shape) :])
    # A masked (-inf) logit would make a network's output NaN; far below any live logit will do.
    return x.detach().clamp_min(-30.0).reshape(out_shape + (features,))


class Baseline(nn.Module):
    """Interface: ``forward(family, out_ndim)`` gives b (broadcastable to f's output entries);
    ``update(fz)`` sees the detached losses after each estimate; ``loss(fz, b)`` is the
    training loss of a learned baseline (or None)."""

    def forward(self, family: Family, out_ndim: int) -> Union[Tensor, float]:
        raise NotImplementedError

    def update(self, fz: Tensor) -> None:
        return None

    def loss(self, fz: Tensor, b: Union[Tensor, float]) -> Optional[Tensor]:
        return None


class EMABaseline(Baseline):
    """b = running average of f: b <- decay * b + (1 - decay) * mean(f)."""

    value: Tensor  # buffers, declared for the type checker (nn.Module types them loosely)
    initialized: Tensor

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, family: Family, out_ndim: int) -> Tensor:
        return self.value

    @torch.no_grad()
    def update(self, fz: Tensor) -> None:
        if not self.training:
            return
        m = fz.detach().mean().to(self.value.dtype)
        # A new tensor, not an in-place update: a step compiled by torch.compile may keep the
        # old value for its backward (NVIL divides by a function of it), and an in-place write
        # would invalidate it. torch.where, not `if initialized`: no device sync per update on
        # a GPU, and no graph break under torch.compile.
        ema = self.decay * self.value + (1 - self.decay) * m
        self.value = torch.where(self.initialized, ema, m)
        self.initialized.fill_(True)


class NetworkBaseline(Baseline):
    """b = net(detached logits of the rows under each output entry), trained by squared error."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, family: Family, out_ndim: int) -> Tensor:
        out_shape = tuple(family.row_shape[:out_ndim])
        return self.net(baseline_features(family, out_ndim)).reshape(out_shape)

    def loss(self, fz: Tensor, b: Union[Tensor, float]) -> Tensor:
        return ((fz.detach() - b) ** 2).mean(0)


def make_baseline(spec: Union[None, str, float, nn.Module]) -> Optional[Baseline]:
    """None; "ema" (decay 0.9) or a float decay; a Baseline; or any module (a NetworkBaseline)."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, Baseline):
        return spec
    if isinstance(spec, nn.Module):
        return NetworkBaseline(spec)
    if spec == "ema":
        return EMABaseline()
    if isinstance(spec, float):
        return EMABaseline(spec)
    raise ValueError(
        f"baseline must be None, 'ema', a float decay in [0, 1), or an nn.Module; got {spec!r}"
    )
