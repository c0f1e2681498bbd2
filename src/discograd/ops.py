r"""Functional samplers: Gumbel noise, Gumbel-max, Gumbel-softmax, Gumbel top-k.

The Gumbel-max trick (see the seeds): if :math:`G_i \sim \mathrm{Gumbel}(0, 1)` are independent,

.. math:: \arg\max_i (\theta_i + G_i) \sim \mathrm{Categorical}(\mathrm{softmax}(\theta)),

and replacing the arg max by a tempered softmax gives the Gumbel-softmax (Concrete) relaxation

.. math:: y = \mathrm{softmax}((\theta + G) / \tau).

Gumbel noise is drawn by inverting the CDF :math:`F(x) = \exp(-\exp(-x))`:
:math:`G = -\log E` with :math:`E = -\log U \sim \mathrm{Exp}(1)`. The uniform :math:`U` is taken
at the midpoint of the generator's grid cell, so it is never 0 or 1, and :math:`E` is computed
as ``-log1p(-(1 - U))`` when :math:`U > 1/2`, so that small exponentials (large Gumbels) keep
full precision. The noise is therefore finite for every draw, in every dtype, without clamping
away probability mass. Half-precision inputs are computed in float32 and cast back.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from discograd import kernels as _kernels
from discograd._validation import (
    TauLike,
    check_logits,
    check_positive_int,
    check_tau,
    checks_contents,
    plain_values,
    tau_batch_shape,
)

__all__ = [
    "gumbel_noise",
    "gumbel_max",
    "gumbel_softmax",
    "gumbel_topk",
    "relaxed_topk",
    "straight_through",
]

ShapeLike = Union[int, Sequence[int], torch.Size]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype samplers compute in: float64 stays, everything else works in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def standard_exponential(
    shape: ShapeLike,
    *,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[torch.device, str]] = None,
) -> Tensor:
    """Exp(1) draws that are strictly positive and finite (float32 or float64 only)."""
    # The same shape as a sequence: torch.rand's typed overloads take ints as varargs or one
    # sequence, not a value that may be either.
    size = (shape,) if isinstance(shape, int) else shape
    # generator= only when given: torch.compile cannot trace torch.rand(generator=None) under
    # dynamic shapes.
    if generator is None:
        r = torch.rand(size, dtype=dtype, device=device)
    else:
        r = torch.rand(size, generator=generator, dtype=dtype, device=device)
    # torch.rand yields multiples of 2^-p (p = 24 for float32, 53 for float64); adding half a
    # cell gives the cell midpoint u, which is exact in either branch below.
    half_cell = 2.0 ** -(54 if dtype == torch.float64 else 25)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    low = r < 0.5
    e_low = -torch.log(r + half_cell)
    e_high = -torch.log1p(-((1.0 - r) - half_cell))
    return torch.where(low, e_low, e_high)


def gumbel_noise(
    shape_or_tensor: Union[ShapeLike, Tensor],
    *,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[Union[torch.device, str]] = None,
) -> Tensor:
    r"""Standard Gumbel noise :math:`G = -\log(-\log U)`, finite for every draw.

    Args:
        shape_or_tensor: a shape, or a tensor whose shape (and, unless given, dtype and device)
            the noise takes, like ``torch.rand_like``.
        generator: a ``torch.Generator`` for reproducible draws.
        dtype: float16, bfloat16, float32 or float64 (default float32, or the tensor's dtype).
        device: where to draw (default CPU, or the tensor's device).

    Returns:
        A tensor of Gumbel(0, 1) draws. Values lie in about [-2.9, 17.4] in float32 and
        [-3.6, 37.4] in float64; the probability outside these ranges is below 2^-24 and
        2^-53, the resolution of the underlying uniform generator.

    Raises:
        TypeError: a shape that is not ints. ValueError: a negative size, or a dtype that is
            not floating point.
    """
    if not isinstance(shape_or_tensor, Tensor):
        shape_or_tensor = _shape(shape_or_tensor)
    fast = _kernels.gumbel_noise(shape_or_tensor, generator, dtype, device)
    if fast is not None:  # fused kernel for this device and dtype (discograd.kernels)
        return fast
    if isinstance(shape_or_tensor, Tensor):
        shape = shape_or_tensor.shape
        dtype = shape_or_tensor.dtype if dtype is None else dtype
        device = shape_or_tensor.device if device is None else device
    else:
        shape = shape_or_tensor
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    work = compute_dtype(dtype)
    e = standard_exponential(shape, generator=generator, dtype=work, device=device)
    return (-torch.log(e)).to(dtype)


def _shape(shape: ShapeLike) -> Tuple[int, ...]:
    """A shape as a tuple of ints >= 0, with a TypeError or ValueError naming the argument (as
    torch.rand, no float sizes)."""
    try:
        dims = (operator.index(shape),) if not isinstance(shape, Iterable) else tuple(shape)
        dims = tuple(operator.index(d) for d in dims)
    except TypeError:
        raise TypeError(
            f"shape_or_tensor must be a tensor or a shape of ints, got {shape!r}"
        ) from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape_or_tensor has a negative size: {dims}")
    return dims


def _perturbed(
    logits: Tensor, dim: int, generator: Optional[torch.Generator], checked: bool = False
) -> Tensor:
    """logits - c + Gumbel noise, in the compute dtype (float32 for half inputs), with c the
    row's largest finite logit (detached; 0 for a row without one).

    Arg max and softmax do not depend on c, but the noise does: added to a logit of 1e6 in
    float32 it would be rounded to multiples of 1/16, and the samples would no longer be
    exact (a biased arg max for large logits, as in torch's op). ``checked``: the caller has
    run :func:`check_logits` already."""
    if not checked:
        check_logits(logits, dim=dim)
    work = logits.to(compute_dtype(logits.dtype))
    work = work - _row_shift(work, dim)
    return work + gumbel_noise(work, generator=generator)


def _row_shift(t: Tensor, dim: int) -> Tensor:
    """Each row's largest entry along ``dim`` (kept as a size-1 dim, detached: a constant the
    samples do not depend on), or 0 where that is not finite (a masked row, +inf, NaN)."""
    top = t.detach().amax(dim, keepdim=True)
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def _one_hot(index: Tensor, like: Tensor, dim: int) -> Tensor:
    """One-hot of ``index`` (arg max along ``dim``, kept as a size-1 dim), shaped like ``like``."""
    return torch.zeros_like(like).scatter(dim, index, 1.0)  # out of place: vmap has a rule


class _StraightThrough(torch.autograd.Function):
    # The forward value is `hard` itself, bit for bit, for any `hard` (k-hot, scaled, ...), with
    # no arithmetic on the sample and no temporaries, unlike `hard - soft.detach() + soft`.
    # forward/setup_context kept apart, a jvp and a generated vmap rule: torch.func transforms
    # (grad, vmap, jvp) and forward-mode AD accept it.
    generate_vmap_rule = True

    @staticmethod
    def forward(hard: Tensor, soft: Tensor) -> Tensor:
        return hard.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        return None

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, grad

    @staticmethod
    def jvp(ctx, hard_tangent, soft_tangent):
        return soft_tangent


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Return ``hard`` in the forward pass and pass the gradient to ``soft`` unchanged."""
    if hard.shape != soft.shape:
        raise ValueError(f"hard {tuple(hard.shape)} and soft {tuple(soft.shape)} differ in shape")
    return _StraightThrough.apply(hard.to(soft.dtype), soft)


def gumbel_max(
    logits: Tensor,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
    one_hot: bool = False,
) -> Tensor:
    r"""Exact categorical samples by the Gumbel-max trick: :math:`\arg\max_i(\theta_i + G_i)`.

    Args:
        logits: unnormalized log-probabilities, categories along ``dim``; ``-inf`` masks a
            category (it is never drawn).
        dim: the category dimension.
        generator: a ``torch.Generator`` for reproducible draws.
        one_hot: return one-hot vectors (dtype of ``logits``) instead of indices.

    Returns:
        int64 indices with ``dim`` removed, or one-hot samples shaped like ``logits``.

    Raises:
        ValueError: ``logits`` with NaN or +inf entries, a row with every category masked
            (-inf), or no categories (checks of the values are skipped under
            ``set_validate_args(False)`` and in code traced by torch.compile);
            ``dim`` out of range (IndexError).
    """
    fast = _kernels.gumbel_max(logits, dim, generator, one_hot)
    if fast is not None:  # fused kernel for this device and dtype (discograd.kernels)
        return fast
    scores = _perturbed(logits, dim, generator)
    index = scores.argmax(dim, keepdim=True)
    if one_hot:
        return _one_hot(index, logits, dim)
    return index.squeeze(dim)


def _tau_for(tau: TauLike, logits: Tensor, dim: int) -> Union[float, Tensor]:
    """Broadcast a tensor temperature over the batch shape (``logits`` without ``dim``).

    A temperature whose reciprocal overflows the compute dtype (below about 3e-39 in float32)
    is refused, as the fused kernels refuse it: the softmax would be NaN.
    """
    check_tau(tau)
    work = compute_dtype(logits.dtype)
    smallest = 1.0 / torch.finfo(work).max
    too_small = ValueError(
        f"tau is too small for {work} computation: 1 / tau overflows (tau must be >= "
        f"{smallest:.3g})"
    )
    if not isinstance(tau, Tensor):
        if float(tau) < smallest:
            raise too_small
        return float(tau)
    if checks_contents() and bool((plain_values(tau)[0] < smallest).any()):
        raise too_small
    dim = dim % logits.dim()
    batch_shape = tau_batch_shape(tau, logits, dim)
    # Convert before broadcasting: in half precision the expanded tau's gradient would be summed
    # in half precision and overflow.
    return tau.to(work).expand(batch_shape).unsqueeze(dim)


def _tempered(scores: Tensor, tau: Union[float, Tensor], dim: int) -> Tensor:
    """(scores - max) / tau along ``dim`` (the max detached), keeping masked (-inf) scores at
    -inf.

    Shifted first so that the largest term is 0 whatever tau: a finite score of 1e33 over a tau
    of 1e-6 would overflow to inf, and the softmax be NaN. A tensor tau multiplies by
    exp(-log tau), not divides: the divisor's gradient in torch is (s / tau) / tau, which
    overflows for a small tau and turns the zero gradient of a saturated entry into 0 * inf =
    NaN; through exp and log the zero stays zero. Masked entries get a finite stand-in for the
    same reason.
    """
    shifted = scores - _row_shift(scores, dim)
    if not isinstance(tau, Tensor):
        return shifted / tau
    masked = torch.isneginf(scores)
    rate = torch.exp(-torch.log(tau))
    return torch.where(masked, scores, torch.where(masked, 0.0, shifted) * rate)


def gumbel_softmax(
    logits: Tensor,
    tau: TauLike = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Gumbel-softmax sample :math:`y = \mathrm{softmax}((\theta + G)/\tau)` along ``dim``.

    A drop-in for ``torch.nn.functional.gumbel_softmax`` (same arguments; ``eps`` is accepted
    and unused, as in torch) plus ``generator=``. With ``hard=True`` the forward value is the
    exact one-hot of :math:`\arg\max_i(\theta_i + G_i)`, a sample of
    Categorical(softmax(logits)), and the gradient is that of the soft sample
    (straight-through Gumbel-softmax, Jang et al. 2016).

    Args:
        logits: (..., K, ...) unnormalized log-probabilities; ``-inf`` masks a category.
        tau: temperature > 0, a float or a tensor broadcastable to the batch shape (the shape
            of ``logits`` without ``dim``); gradients flow into a tensor ``tau``.
        hard: return exact one-hot samples with the soft sample's gradient.
        dim: the category dimension.
        generator: a ``torch.Generator`` for reproducible draws.

    Returns:
        A tensor shaped like ``logits``, in its dtype (contiguous, as torch's op).

    Raises:
        ValueError: ``logits`` with NaN or +inf entries, a row with every category masked
            (-inf), or no categories (checks of the values are skipped under
            ``set_validate_args(False)`` and in code traced by torch.compile);
            ``dim`` out of range (IndexError).
        ValueError: ``tau`` <= 0, NaN or inf, too small for the compute dtype (1 / tau
            overflows), or a tensor that does not broadcast to the batch shape; TypeError:
            ``tau`` neither a number nor a tensor.
    """
    del eps
    fast = _kernels.gumbel_softmax(logits, tau, hard, dim, generator)
    if fast is not None:  # fused kernel for this device and dtype (discograd.kernels)
        return fast
    check_logits(logits, dim=dim)  # before tau: its broadcast needs a dim to leave out
    tau_ = _tau_for(tau, logits, dim)
    scores = _perturbed(logits, dim, generator, checked=True)
    soft = torch.softmax(_tempered(scores, tau_, dim), dim)
    if hard:
        hard_sample = _one_hot(scores.argmax(dim, keepdim=True), soft, dim)
        soft = straight_through(hard_sample, soft)
    return soft.to(logits.dtype)


def _check_k(logits: Tensor, k: int, dim: int) -> None:
    check_positive_int(k, name="k")
    if k > logits.shape[dim]:
        raise ValueError(f"k={k} is larger than the number of categories {logits.shape[dim]}")
    if not checks_contents():  # a look at the values, as in check_logits
        return
    values, along = plain_values(logits, dim)
    if (torch.isfinite(values).sum(along) < k).any():
        raise ValueError(f"k={k} is larger than the number of unmasked categories in some row")


def gumbel_topk(
    logits: Tensor,
    k: int,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Sample k distinct categories without replacement (Gumbel top-k; Kool et al. 2019).

    The indices of the k largest :math:`\theta_i + G_i` are distributed as k successive draws
    without replacement from softmax(logits), in the order drawn.

    Returns:
        int64 indices with ``dim`` of size k, like ``torch.topk(...).indices``.

    Raises:
        ValueError: ``logits`` with NaN or +inf entries, a row with every category masked
            (-inf), or no categories (checks of the values are skipped under
            ``set_validate_args(False)`` and in code traced by torch.compile);
            ``dim`` out of range (IndexError).
        ValueError: ``k`` < 1, above the number of categories, or above the unmasked ones
            in some row.
    """
    check_logits(logits, dim=dim)
    _check_k(logits, k, dim)
    return _perturbed(logits, dim, generator, checked=True).topk(k, dim=dim).indices


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    x = x.clamp(max=-1e-20)  # a stand-in where x = 0; the callers replace those entries
    near = x > -0.6931471805599453
    # Each branch sees a safe stand-in where it is not used: log1p(-exp(x)) is -inf for x near
    # 0 in float32, and its zero gradient would otherwise become 0 / 0 = NaN.
    a = torch.log(-torch.expm1(torch.where(near, x, -1.0)))
    b = torch.log1p(-torch.exp(torch.where(near, -1.0, x)))
    return torch.where(near, a, b)


def _log1m_softmax(log_p: Tensor, dim: int) -> Tensor:
    """log(1 - p) for p = exp(log_p), a softmax along ``dim``, accurate where p is near 1.

    From log p, 1 - p is lost to rounding once p rounds to 1 (a lead of 17 nats in float32):
    the row's largest entry takes the logsumexp of the others' log p instead, which are small
    and exact. The others have p <= 1/2, where :func:`_log1mexp` is accurate.
    """
    top = log_p.detach().argmax(dim, keepdim=True)
    is_top = torch.zeros_like(log_p, dtype=torch.bool).scatter(dim, top, True)
    others = torch.logsumexp(log_p.masked_fill(is_top, float("-inf")), dim, keepdim=True)
    return torch.where(is_top, others, _log1mexp(torch.where(is_top, -1.0, log_p)))


def relaxed_topk(
    logits: Tensor,
    k: int,
    tau: TauLike = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Relaxed k-hot sample of k categories without replacement (Xie & Ermon, 2019).

    With :math:`a^{(1)} = \theta + G`, for :math:`j = 1..k`:
    :math:`p^{(j)} = \mathrm{softmax}(a^{(j)}/\tau)`,
    :math:`a^{(j+1)} = a^{(j)} + \log(1 - p^{(j)})`, and the sample is :math:`\sum_j p^{(j)}`,
    a point with nonnegative entries summing to k. An entry can exceed 1 (a category that got
    mass at one step can win a later one: Xie & Ermon's update does not confine the sample to
    the k-hot polytope). As :math:`\tau \to 0` it tends to the k-hot vector of
    :func:`gumbel_topk` drawn with the same noise. ``hard=True`` returns that exact
    k-hot vector with the relaxed sample's gradient.

    Raises:
        ValueError: as :func:`gumbel_topk` for ``logits`` and ``k``, and as
            :func:`gumbel_softmax` for ``tau``.
    """
    check_logits(logits, dim=dim)
    _check_k(logits, k, dim)
    tau_ = _tau_for(tau, logits, dim)
    scores = _perturbed(logits, dim, generator, checked=True)
    a = scores
    khot = torch.zeros_like(scores)
    for step in range(k):
        log_p = torch.log_softmax(_tempered(a, tau_, dim), dim)
        khot = khot + log_p.exp()
        if step + 1 < k:  # the last step's update is never read
            a = a + _log1m_softmax(log_p, dim)
    if hard:
        exact = torch.zeros_like(khot).scatter(dim, scores.topk(k, dim=dim).indices, 1.0)
        khot = straight_through(exact, khot)
    return khot.to(logits.dtype)


def one_hot_like(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``F.one_hot`` in a floating dtype."""
    return F.one_hot(index, num_classes).to(dtype)
