r"""ExpConcrete: the Concrete distribution in log-simplex coordinates (Maddison et al., 2016).

With :math:`G_k \sim \mathrm{Gumbel}(0, 1)` independent and temperature :math:`\tau > 0`,

.. math:: y = \mathrm{log\_softmax}((\theta + G) / \tau),\qquad \mathrm{logsumexp}(y) = 0,

so :math:`x = \exp(y)` is a Concrete (Gumbel-softmax) sample. Over the :math:`n - 1` free
coordinates, with :math:`\pi = \mathrm{softmax}(\theta)`, the density is

.. math:: \log p(y) = \log (n-1)! + (n-1)\log\tau
          + \sum_k (\log\pi_k - \tau y_k) - n\,\mathrm{logsumexp}_i(\log\pi_i - \tau y_i),

the same as ``torch.distributions.relaxed_categorical.ExpRelaxedCategorical``. Working with
:math:`y` keeps log-densities (e.g. in KL terms) accurate at low temperatures, where the
coordinates of :math:`x` underflow.

Masked categories (logit ``-inf``, probability 0) never carry mass: their coordinate is the
most negative finite number of the dtype (``finfo.min``, standing for :math:`\log 0`), and the
density is that of the face spanned by the other :math:`n` categories.

This module also holds the parameter handling that :class:`~discograd.distributions.Concrete`
shares with :class:`ExpConcrete`.

References: C. J. Maddison, A. Mnih, Y. W. Teh, "The Concrete Distribution: A Continuous
Relaxation of Discrete Random Variables", 2016 (ICLR 2017); E. Jang, S. Gu, B. Poole,
"Categorical Reparameterization with Gumbel-Softmax", 2016 (ICLR 2017).
"""

from __future__ import annotations

import math
from typing import ClassVar, Dict, Optional, Tuple, Union, cast

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.constraints import Constraint
from torch.distributions.utils import lazy_property
from torch.types import _size

from discograd._validation import check_logits, check_probs, check_tau
from discograd.ops import compute_dtype, gumbel_noise

__all__ = ["ExpConcrete"]

_NO_SHAPE = torch.Size()  # the default sample_shape, as in torch

TemperatureLike = Union[float, Tensor]


def smallest_positive(dtype: torch.dtype) -> float:
    """The floor for coordinates that underflow: ``finfo.tiny``, except in float16.

    float16's smallest normal number (6.1e-5) is coarser than its rounding near 1 (4.9e-4 / 2
    relative), so flooring K coordinates there would move a sample off the simplex by up to
    K * 6.1e-5; its smallest subnormal, 2^-24, is used instead.
    """
    if dtype == torch.float16:
        return 2.0**-24
    return torch.finfo(dtype).tiny


def as_temperature(temperature: TemperatureLike, param: Tensor) -> Tuple[Tensor, torch.dtype]:
    """The temperature as a tensor, and the dtype of the samples.

    A floating-point tensor is used as given, and its dtype is promoted with ``param``'s, as in
    torch. Anything else (a Python number, an integer tensor) is "weak", as in torch's type
    promotion: samples keep ``param``'s dtype, and the temperature is held in the compute dtype
    (float32 for 16-bit ``param``, see ops), not rounded to ``param``'s dtype, where 1e5 or 1e-8
    would become inf or 0 in float16. A number that is still 0 or inf in the compute dtype (1e-50
    with float32 parameters) raises a ValueError naming ``temperature``.
    """
    if isinstance(temperature, Tensor) and temperature.is_floating_point():
        return temperature, torch.promote_types(param.dtype, temperature.dtype)
    work = compute_dtype(param.dtype)
    if isinstance(temperature, Tensor):  # integers, > 0 by check_tau: never 0 or inf in work
        return temperature.to(work), param.dtype
    value = float(temperature)  # check_tau has accepted it: finite and > 0
    held = torch.tensor(value, dtype=work)
    if not 0.0 < float(held) < math.inf:
        raise ValueError(
            f"temperature {value!r} is {float(held)} in {work}, the dtype it is computed in for "
            f"{param.dtype} parameters; pass it as a float64 tensor (samples are then float64)"
        )
    return held.to(param.device), param.dtype


def concrete_params(
    temperature: TemperatureLike,
    logits: Optional[Tensor],
    probs: Optional[Tensor],
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], torch.Size, torch.dtype]:
    """Check and broadcast (temperature, logits or probs) of a Concrete-type distribution.

    Returns the temperature (batch_shape), normalized logits or probs (batch_shape + (K,)),
    batch_shape (the broadcast of ``temperature``'s shape and ``logits.shape[:-1]``) and the
    dtype of the samples (:func:`as_temperature`).
    """
    if (logits is None) == (probs is None):
        raise ValueError("exactly one of logits or probs must be given")
    check_tau(temperature, name="temperature")
    if logits is not None:
        check_logits(logits, name="logits", dim=-1)
        # Normalized like torch's Categorical, so that logits.exp() are the probabilities.
        logits = logits - logits.logsumexp(-1, keepdim=True)
        param = logits
    else:
        if not isinstance(probs, Tensor) or not probs.is_floating_point():
            raise ValueError("probs must be a floating-point torch.Tensor")
        if probs.dim() == 0:
            raise ValueError("probs must have at least one dimension (the categories)")
        check_probs(probs, name="probs", dim=-1)
        probs = probs / probs.sum(-1, keepdim=True)
        param = probs
    temperature, dtype = as_temperature(temperature, param)
    try:
        batch_shape = torch.broadcast_shapes(temperature.shape, param.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"temperature of shape {tuple(temperature.shape)} does not broadcast with the batch "
            f"shape {tuple(param.shape[:-1])} of {'logits' if probs is None else 'probs'}"
        ) from None
    full = batch_shape + param.shape[-1:]
    temperature = temperature.expand(batch_shape)
    if logits is not None:
        return temperature, logits.expand(full), None, batch_shape, dtype
    return temperature, None, param.expand(full), batch_shape, dtype


def tempered_scores(logits: Tensor, noise: Tensor, tau: Tensor) -> Tensor:
    """(logits + noise) / tau, with masked (-inf) logits kept at -inf.

    The masked entries are computed from a finite stand-in: dividing -inf by tau would give a
    NaN gradient for tau (0 * inf) even though the entry's gradient is zero.
    """
    masked = torch.isneginf(logits)
    safe = torch.where(masked, torch.zeros_like(logits), logits)
    return torch.where(masked, logits, (safe + noise) / tau)


def log_concrete_sample(
    logits: Tensor,
    tau: Tensor,
    shape: torch.Size,
    generator: Optional[torch.Generator],
) -> Tensor:
    """log_softmax((logits + G) / tau) of shape ``shape``, in the compute dtype (see ops).

    Its exp is on the simplex to float32 rounding (``|sum - 1|`` below 1e-6) up to K = 32000 at
    least, at every temperature.
    """
    work = compute_dtype(torch.promote_types(logits.dtype, tau.dtype))
    noise = gumbel_noise(shape, generator=generator, dtype=work, device=logits.device)
    scores = tempered_scores(logits.to(work), noise, tau.to(work).unsqueeze(-1))
    # Not torch.log_softmax: on CPU in float32 its result is off logsumexp = 0 by up to 1e-5 at
    # K = 32000 (its exp then fails torch's 1e-6 simplex check); logsumexp sums more accurately.
    # Not scores - scores.logsumexp either: at low temperature the scores are large and the
    # rounding of their logsumexp (1e-5 at |scores| ~ 100) moves the near-one-hot point off
    # the simplex. Shifted by the (constant, so detached) row maximum, the largest entry is 0
    # and the logsumexp is near 0, rounded finely. A masked (-inf) score stays -inf; a row with
    # one unmasked entry gives 0 there (check_logits rejects fully masked rows).
    shifted = scores - scores.detach().amax(-1, keepdim=True)
    return shifted - shifted.logsumexp(-1, keepdim=True)


def log_concrete_density(logits: Tensor, tau: Tensor, log_x: Tensor) -> Tensor:
    """ExpConcrete log-density at ``log_x`` (broadcastable to logits), summed over unmasked k."""
    logits, log_x = torch.broadcast_tensors(logits, log_x)
    tau = tau.unsqueeze(-1)
    masked = torch.isneginf(logits)
    zero = torch.zeros((), dtype=log_x.dtype, device=log_x.device)
    score = torch.where(masked, zero, logits) - tau * torch.where(masked, zero, log_x)
    n = (~masked).sum(-1, keepdim=True).to(score.dtype)
    lse = torch.where(masked, float("-inf"), score).logsumexp(-1, keepdim=True)
    log_scale = torch.lgamma(n) + (n - 1) * tau.log()
    total = torch.where(masked, zero, score).sum(-1, keepdim=True)
    return (log_scale + total - n * lse).squeeze(-1)


class ExpConcrete(Distribution):
    r"""Log of a Concrete / Gumbel-softmax sample: a point :math:`y` with logsumexp(y) = 0.

    Args:
        temperature: :math:`\tau > 0`, a float or a tensor broadcastable with
            ``logits.shape[:-1]``; the broadcast is the batch shape.
            A number (not a tensor) leaves the samples in the parameters' dtype, as a Python
            scalar does in torch's type promotion, and is held in the compute dtype (float32
            for 16-bit parameters), so 1e-8 or 1e5 with float16 logits is neither 0 nor inf;
            a floating-point tensor's dtype is promoted with the parameters', as in torch.
        logits: (..., K) unnormalized log-probabilities; ``-inf`` masks a category.
        probs: (..., K) probabilities (instead of ``logits``); zeros mask categories.
        validate_args: torch's validation of parameters and log_prob values (None: torch's
            default). discograd's own checks of NaN / range run unless
            ``discograd.set_validate_args(False)``.

    ``rsample`` and ``sample`` take an optional keyword ``generator`` (a discograd extension).
    ``mean`` has no closed form and raises ``NotImplementedError``, as in torch.
    """

    # Class attributes overriding torch's properties of the same names, as torch's own do.
    arg_constraints: ClassVar[Dict[str, Constraint]] = {
        "temperature": constraints.positive,
        "logits": constraints.real_vector,
        "probs": constraints.simplex,
    }
    # The true support is the manifold logsumexp(y) = 0.
    support: ClassVar[Constraint] = constraints.real_vector
    has_rsample = True
    _dtype: torch.dtype  # of the samples, see as_temperature

    def __init__(
        self,
        temperature: TemperatureLike,
        logits: Optional[Tensor] = None,
        probs: Optional[Tensor] = None,
        validate_args: Optional[bool] = None,
    ) -> None:
        params = concrete_params(temperature, logits, probs)
        self.temperature, logits, probs, batch_shape, self._dtype = params
        # The given parameter goes into the instance __dict__, where lazy_property looks first.
        if logits is not None:
            self.__dict__["logits"] = logits
            self._param = logits
        else:
            assert probs is not None, "concrete_params returns logits or probs"
            self.__dict__["probs"] = probs
            self._param = probs
        super().__init__(batch_shape, self._param.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: _size, _instance=None) -> ExpConcrete:
        new = cast(ExpConcrete, self._get_checked_instance(ExpConcrete, _instance))
        batch_shape = torch.Size(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new._dtype = self._dtype
        full = batch_shape + self.event_shape
        if "logits" in self.__dict__:
            new._param = new.__dict__["logits"] = self.logits.expand(full)
        if "probs" in self.__dict__:
            new._param = new.__dict__["probs"] = self.probs.expand(full)
        super(ExpConcrete, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _new(self, *args, **kwargs) -> Tensor:
        return self._param.new(*args, **kwargs)

    @lazy_property
    def logits(self) -> Tensor:
        # A zero probability gives logit -inf with gradient 0: log's 1/p there would turn the
        # masked category's zero gradient into 0 * inf = NaN for every parameter behind probs.
        live = self.probs > 0
        safe = torch.where(live, self.probs, torch.ones_like(self.probs))
        return torch.where(live, safe.log(), float("-inf"))

    @lazy_property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits, -1)

    @property
    def param_shape(self) -> torch.Size:
        return self._param.shape

    def rsample(
        self, sample_shape: _size = _NO_SHAPE, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Reparameterized draws, shape ``sample_shape + batch_shape + (K,)``.

        Coordinates below ``finfo.min`` of the dtype (masked categories, or float16 overflow at
        very low temperature) are set to ``finfo.min``, so every draw is finite.
        """
        y = self._log_sample(sample_shape, generator)
        return y.clamp_min(torch.finfo(self._dtype).min).to(self._dtype)

    def _log_sample(self, sample_shape: _size, generator: Optional[torch.Generator]) -> Tensor:
        """The draw in the compute dtype (float32 for half precision), masked entries -inf."""
        shape = self._extended_shape(sample_shape)
        return log_concrete_sample(self.logits, self.temperature, shape, generator)

    def sample(
        self, sample_shape: _size = _NO_SHAPE, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density at log-simplex points ``value`` (..., K); masked coordinates are ignored."""
        if self._validate_args:
            self._validate_sample(value)
        work = compute_dtype(torch.promote_types(self._dtype, value.dtype))
        out = log_concrete_density(self.logits.to(work), self.temperature.to(work), value.to(work))
        return out.to(torch.promote_types(self._dtype, value.dtype))
