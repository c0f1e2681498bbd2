r"""Concrete / Gumbel-softmax on the simplex (Maddison et al., 2016; Jang et al., 2016).

With :math:`G_k \sim \mathrm{Gumbel}(0, 1)` independent, temperature :math:`\tau > 0` and
:math:`\pi = \mathrm{softmax}(\theta)`,

.. math:: x = \mathrm{softmax}((\theta + G)/\tau) = \exp(\mathrm{log\_softmax}((\theta + G)/\tau)),

and over the first :math:`n - 1` coordinates (Lebesgue measure on the simplex) the density is

.. math:: p(x) = (n-1)!\,\tau^{n-1} \prod_{k=1}^{n}
          \frac{\pi_k x_k^{-\tau-1}}{\sum_{i=1}^{n} \pi_i x_i^{-\tau}},

evaluated here in log space,

.. math:: \log p(x) = \log (n-1)! + (n-1)\log\tau + \sum_k(\log\pi_k - (\tau+1)\log x_k)
          - n\,\mathrm{logsumexp}_i(\log\pi_i - \tau \log x_i),

which agrees with ``torch.distributions.RelaxedOneHotCategorical`` where the latter is accurate
and stays finite at low temperatures, where torch's returns NaN or -inf: at
:math:`\tau = 0.01` most coordinates of a sample underflow to 0 in float32, and
:math:`\log 0` enters torch's formula as :math:`\infty - \infty`.

Underflow convention: ``rsample`` keeps every coordinate at least ``finfo.tiny`` of the dtype
(2^-24 in float16, see :func:`~discograd.distributions.exp_concrete.smallest_positive`), and
``log_prob`` reads coordinates below that floor as the floor. A floored sample is off the
simplex by at most K * tiny (about 1e-38 K in float32) and its log-density is that of the
floored point, finite in every dtype. Masked categories (logit ``-inf``) sit at the floor and are
left out of the density, which is then that of the face of the other :math:`n` categories.
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional, cast

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.constraints import Constraint
from torch.types import _size

from discograd.distributions.exp_concrete import (
    ExpConcrete,
    TemperatureLike,
    log_concrete_density,
    smallest_positive,
)
from discograd.ops import compute_dtype

__all__ = ["Concrete"]

_NO_SHAPE = torch.Size()  # the default sample_shape, as in torch


class Concrete(Distribution):
    r"""Relaxed one-hot categorical: points of the simplex that concentrate on its vertices.

    Args:
        temperature: :math:`\tau > 0`, a float or a tensor broadcastable with
            ``logits.shape[:-1]``; the broadcast is the batch shape. As :math:`\tau \to 0`
            samples approach one-hot vectors distributed as Categorical(softmax(logits)); as
            :math:`\tau \to \infty` they approach the centre (1/K, ..., 1/K).
            A number (not a tensor) leaves the samples in the parameters' dtype, as a Python
            scalar does in torch's type promotion, and is held in the compute dtype (float32
            for 16-bit parameters), so 1e-8 or 1e5 with float16 logits is neither 0 nor inf;
            a floating-point tensor's dtype is promoted with the parameters', as in torch.
        logits: (..., K) unnormalized log-probabilities; ``-inf`` masks a category.
        probs: (..., K) probabilities (instead of ``logits``); zeros mask categories.
        validate_args: torch's validation of parameters and log_prob values (None: torch's
            default). discograd's own checks of NaN / range run unless
            ``discograd.set_validate_args(False)``. Half-precision samples are not on the simplex
            to torch's 1e-6 tolerance: score them with ``validate_args=False``.

    ``rsample`` and ``sample`` take an optional keyword ``generator`` (a discograd extension).
    ``mean`` has no closed form and raises ``NotImplementedError``, as in torch.

    KL terms of relaxed latents (a Concrete VAE): compute them in log space with
    :class:`~discograd.distributions.ExpConcrete`, as Maddison et al. recommend, not as
    ``log_prob(rsample())`` here. Backpropagating through the sample passes
    :math:`\partial \log p / \partial x_k \sim 1/x_k`, which overflows where coordinates are
    tiny, and the logits' gradient becomes inf or NaN: in float16 at :math:`\tau = 0.01`, or in
    float32 at :math:`\tau = 100` with logits near 1e4. The values of ``log_prob`` stay finite;
    only that path's gradient is affected.

    References: Maddison, Mnih, Teh, "The Concrete Distribution", 2016;
    Jang, Gu, Poole, "Categorical Reparameterization with Gumbel-Softmax", 2016.
    """

    # Class attributes overriding torch's properties of the same names, as torch's own do.
    arg_constraints: ClassVar[Dict[str, Constraint]] = {
        "temperature": constraints.positive,
        "logits": constraints.real_vector,
        "probs": constraints.simplex,
    }
    support: ClassVar[Constraint] = constraints.simplex
    has_rsample = True

    def __init__(
        self,
        temperature: TemperatureLike,
        logits: Optional[Tensor] = None,
        probs: Optional[Tensor] = None,
        validate_args: Optional[bool] = None,
    ) -> None:
        # The parameters are validated by the base, which checks only the one given, as torch's
        # classes do: probs computed from logits (a plain property here) can be off torch's 1e-6
        # simplex tolerance by float32 rounding at large K (1.3e-6 at K = 32000).
        base = ExpConcrete(temperature, logits=logits, probs=probs, validate_args=validate_args)
        self.base_dist = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)
        self._validate_args = base._validate_args

    def expand(self, batch_shape: _size, _instance=None) -> Concrete:
        new = cast(Concrete, self._get_checked_instance(Concrete, _instance))
        batch_shape = torch.Size(batch_shape)
        new.base_dist = self.base_dist.expand(batch_shape)
        super(Concrete, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def __repr__(self) -> str:
        return type(self).__name__ + repr(self.base_dist)[len(type(self.base_dist).__name__) :]

    def _new(self, *args, **kwargs) -> Tensor:
        return self.base_dist._new(*args, **kwargs)

    @property
    def temperature(self) -> Tensor:
        return self.base_dist.temperature

    @property
    def logits(self) -> Tensor:
        return self.base_dist.logits

    @property
    def probs(self) -> Tensor:
        return self.base_dist.probs

    @property
    def param_shape(self) -> torch.Size:
        return self.base_dist.param_shape

    def rsample(
        self, sample_shape: _size = _NO_SHAPE, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Reparameterized draws, shape ``sample_shape + batch_shape + (K,)``, entries >= tiny.

        ``exp`` of :class:`ExpConcrete`'s draw with the same generator state, floored at tiny.
        """
        dtype = self.base_dist._dtype
        log_x = self.base_dist._log_sample(sample_shape, generator)
        return log_x.exp().clamp_min(smallest_positive(dtype)).to(dtype)

    def sample(
        self, sample_shape: _size = _NO_SHAPE, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density at points ``value`` (..., K); coordinates below tiny count as tiny."""
        if self._validate_args:
            self._validate_sample(value)
        dtype = torch.promote_types(self.base_dist._dtype, value.dtype)
        work = compute_dtype(dtype)
        log_x = value.to(work).clamp_min(smallest_positive(value.dtype)).log()
        logits = self.logits.to(work)
        # Change of variables y = log x: p(x) = p_Y(log x) / prod_k x_k over the unmasked k.
        masked = torch.isneginf(logits)
        log_jacobian = torch.where(masked, log_x.new_zeros(()), log_x).sum(-1)
        log_p = log_concrete_density(logits, self.temperature.to(work), log_x) - log_jacobian
        return log_p.to(dtype)
