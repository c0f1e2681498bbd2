r"""Binary Concrete (relaxed Bernoulli; Maddison et al., 2016; Jang et al., 2016).

With :math:`L = \log E_2 - \log E_1` logistic (:math:`E_1, E_2 \sim \mathrm{Exp}(1)`
independent), logit :math:`a` and temperature :math:`\tau > 0`,

.. math:: y = \sigma((a + L)/\tau) \in (0, 1),\qquad
          P(Y \le y) = \sigma(\tau\,\mathrm{logit}(y) - a).

Differentiating the CDF, with :math:`z = \mathrm{logit}(y)` and :math:`u = \tau z - a`,

.. math:: \log p(y) = \log\tau - \mathrm{softplus}(u) - \mathrm{softplus}(-u)
          - \log y - \log(1 - y),

computed from :math:`\log y` and :math:`\log(1-y)`, so it stays finite for every representable
:math:`y` and every finite logit (torch's ``RelaxedBernoulli`` overflows to -inf once
:math:`a - \tau z` exceeds about 88 in float32). Agrees with ``RelaxedBernoulli`` elsewhere.

Boundary convention: :math:`\sigma` rounds to exactly 0 or 1 in floating point, so ``rsample``
clamps to the representable open interval [tiny, 1 - eps/2] of the dtype (tiny as in
:func:`~discograd.distributions.exp_concrete.smallest_positive`), and ``log_prob`` clamps its
input the same way: its value at 0 or 1 is that of the nearest representable interior point.
"""

from __future__ import annotations

from numbers import Number
from typing import ClassVar, Dict, Optional, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.constraints import Constraint
from torch.distributions.utils import lazy_property
from torch.types import _size

from discograd._validation import check_tau, validate_args_enabled
from discograd.distributions.exp_concrete import (
    TemperatureLike,
    as_temperature,
    smallest_positive,
)
from discograd.ops import compute_dtype, standard_exponential

__all__ = ["BinaryConcrete"]

_NO_SHAPE = torch.Size()  # the default sample_shape, as in torch

ParamLike = Union[Tensor, float]


def _open_interval(y: Tensor, dtype: torch.dtype) -> Tensor:
    """Clamp y to [tiny, 1 - eps/2], the representable open unit interval of ``dtype``."""
    return y.clamp(smallest_positive(dtype), 1.0 - torch.finfo(dtype).eps / 2)


def _as_tensor(x: ParamLike, name: str) -> Tensor:
    if isinstance(x, Tensor):
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        return x
    if isinstance(x, Number) and not isinstance(x, bool):
        return torch.tensor(float(x), dtype=torch.get_default_dtype())
    raise ValueError(f"{name} must be a float or a torch.Tensor, got {type(x).__name__}")


class BinaryConcrete(Distribution):
    r"""Relaxed Bernoulli on (0, 1): :math:`y = \sigma((a + L)/\tau)`, L logistic.

    Args:
        temperature: :math:`\tau > 0`, a float or a tensor broadcastable with the logits; the
            broadcast is the batch shape. As :math:`\tau \to 0` samples approach
            Bernoulli(sigmoid(a)) draws; as :math:`\tau \to \infty` they approach 1/2.
            A number (not a tensor) leaves the samples in the parameters' dtype, as a Python
            scalar does in torch's type promotion, and is held in the compute dtype (float32
            for 16-bit parameters), so 1e-8 or 1e5 with float16 logits is neither 0 nor inf;
            a floating-point tensor's dtype is promoted with the parameters', as in torch.
        logits: log-odds :math:`a` of any shape (a float or tensor); ``-inf`` / ``+inf`` give
            the degenerate distributions at 0 / 1.
        probs: P(1) in [0, 1] (instead of ``logits``).
        validate_args: torch's validation of parameters and log_prob values (None: torch's
            default). discograd's own checks run unless ``discograd.set_validate_args(False)``.

    ``rsample`` and ``sample`` take an optional keyword ``generator`` (a discograd extension).
    ``mean`` has no closed form and raises ``NotImplementedError``, as in torch.

    KL terms of relaxed latents (a relaxed-Bernoulli VAE): compute them in log space, as
    Maddison et al. recommend, with :class:`~discograd.distributions.ExpConcrete` of logits
    :math:`(a, 0)` (a K = 2 Concrete is a Binary Concrete: :math:`y` is the exp of its first
    coordinate), not as ``log_prob(rsample())`` here. Backpropagating through the sample passes
    :math:`\partial \log p / \partial y \sim 1/y` or :math:`1/(1-y)`, which overflows where
    :math:`y` is within float rounding of 0 or 1, and the logits' gradient becomes inf or NaN
    (float16 at :math:`\tau = 0.01`, float32 at :math:`\tau = 100` with logits near 1e4). The
    values of ``log_prob`` stay finite; only that path's gradient is affected.
    """

    # Class attributes overriding torch's properties of the same names, as torch's own do.
    arg_constraints: ClassVar[Dict[str, Constraint]] = {
        "temperature": constraints.positive,
        "logits": constraints.real,
        "probs": constraints.unit_interval,
    }
    support: ClassVar[Constraint] = constraints.unit_interval
    has_rsample = True
    _dtype: torch.dtype  # of the samples, see as_temperature

    def __init__(
        self,
        temperature: TemperatureLike,
        logits: Optional[ParamLike] = None,
        probs: Optional[ParamLike] = None,
        validate_args: Optional[bool] = None,
    ) -> None:
        if (logits is None) == (probs is None):
            raise ValueError("exactly one of logits or probs must be given")
        check_tau(temperature, name="temperature")
        name = "logits" if logits is not None else "probs"
        raw = logits if logits is not None else probs
        assert raw is not None, "exactly one of logits or probs is given"
        param = _as_tensor(raw, name)
        if validate_args_enabled():
            if torch.isnan(param).any():
                raise ValueError(f"{name} contains NaN")
            if probs is not None and ((param < 0).any() or (param > 1).any()):
                raise ValueError("probs must lie in [0, 1]")
        temperature, self._dtype = as_temperature(temperature, param)
        try:
            batch_shape = torch.broadcast_shapes(temperature.shape, param.shape)
        except RuntimeError:
            raise ValueError(
                f"temperature of shape {tuple(temperature.shape)} does not broadcast with "
                f"{name} of shape {tuple(param.shape)}"
            ) from None
        self.temperature = temperature.expand(batch_shape)
        self._param = param.expand(batch_shape)
        # The given parameter goes into the instance __dict__, where lazy_property looks first.
        self.__dict__["logits" if logits is not None else "probs"] = self._param
        super().__init__(batch_shape, validate_args=validate_args)

    def expand(self, batch_shape: _size, _instance=None) -> BinaryConcrete:
        new = cast(BinaryConcrete, self._get_checked_instance(BinaryConcrete, _instance))
        batch_shape = torch.Size(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new._dtype = self._dtype
        if "logits" in self.__dict__:
            new._param = new.__dict__["logits"] = self.logits.expand(batch_shape)
        if "probs" in self.__dict__:
            new._param = new.__dict__["probs"] = self.probs.expand(batch_shape)
        super(BinaryConcrete, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _new(self, *args, **kwargs) -> Tensor:
        return self._param.new(*args, **kwargs)

    @lazy_property
    def logits(self) -> Tensor:
        # Exact (no clamping): probs 0 and 1 give logits -inf and +inf, with gradient 0 there
        # (the samples no longer depend on them), not 0 * inf = NaN.
        p = self.probs
        inside = (p > 0) & (p < 1)
        safe = torch.where(inside, p, torch.full_like(p, 0.5))
        edge = torch.where(p > 0, float("inf"), float("-inf")).to(p.dtype)
        return torch.where(inside, safe.log() - torch.log1p(-safe), edge)

    @lazy_property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def param_shape(self) -> torch.Size:
        return self._param.shape

    def rsample(
        self, sample_shape: _size = _NO_SHAPE, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Reparameterized draws of shape ``sample_shape + batch_shape``, inside (0, 1)."""
        shape = self._extended_shape(sample_shape)
        dtype = self._dtype
        work = compute_dtype(dtype)
        device = self._param.device
        e1 = standard_exponential(shape, generator=generator, dtype=work, device=device)
        e2 = standard_exponential(shape, generator=generator, dtype=work, device=device)
        logistic = e2.log() - e1.log()
        a = self.logits.to(work)
        tau = self.temperature.to(work)
        # A degenerate logit (+-inf) would give tau a NaN gradient (0 * inf): use a stand-in.
        infinite = torch.isinf(a)
        z = torch.where(infinite, a, (torch.where(infinite, 0.0, a) + logistic) / tau)
        return _open_interval(torch.sigmoid(z), dtype).to(dtype)

    def sample(
        self, sample_shape: _size = _NO_SHAPE, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density at ``value`` in [0, 1]; 0 and 1 are read as the nearest interior points."""
        if self._validate_args:
            self._validate_sample(value)
        dtype = torch.promote_types(self._dtype, value.dtype)
        work = compute_dtype(dtype)
        y = _open_interval(value.to(work), value.dtype)
        log_y, log_1my = y.log(), torch.log1p(-y)
        u = self.temperature.to(work) * (log_y - log_1my) - self.logits.to(work)
        log_p = self.temperature.to(work).log() - F.softplus(u) - F.softplus(-u) - log_y - log_1my
        return log_p.to(dtype)
