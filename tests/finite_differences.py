r"""Finite-difference check of a control variate's training gradient (REBAR, RELAX).

An estimator with a learned control variate :math:`c_\phi` trains it to minimise the variance
of its gradient estimate :math:`\hat g` by adding a zero-valued term to the surrogate whose
gradient in :math:`\phi` is :math:`\partial_\phi \sum \hat g^2` (the squared estimate over the
logits' entries; its mean is the variance plus a term free of :math:`\phi`). The check: with
the random draws held fixed (same generator seed), the :math:`\phi` gradient that
``surrogate.mean().backward()`` leaves equals the central difference

.. math:: \frac{\sum \hat g(\phi + h)^2 - \sum \hat g(\phi - h)^2}{2h},

whose truncation error is :math:`O(h^2)` and rounding error :math:`O(\epsilon / h)` (float64).
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor, nn

Estimate = Callable[[nn.Module, Tensor], Tensor]


def squared_estimate_and_cv_grad(
    make: Callable[[], nn.Module], name: str, estimate: Estimate, logits: Tensor, h: float = 1e-5
) -> Tuple[Tensor, Tensor]:
    r"""The gradient of parameter ``name`` left by the surrogate's backward, and its central
    difference of :math:`\sum \hat g^2`.

    ``make()`` builds the estimator (float64, the same every call); ``estimate(est, logits)``
    returns its surrogate at fixed draws (a fixed generator seed); ``logits`` is copied into a
    fresh leaf for each call.
    """

    def run(shift: float, train: bool) -> Tuple[nn.Module, Tensor, Tensor]:
        est = make()
        with torch.no_grad():
            getattr(est, name).add_(shift)
        est.train_cv = train  # off for the differences: the estimate alone, no training term
        leaf = logits.detach().clone().requires_grad_(True)
        return est, leaf, estimate(est, leaf)

    est, _, out = run(0.0, True)
    out.mean().backward()
    sq = []
    for shift in (h, -h):
        _, leaf, out = run(shift, False)
        (g,) = torch.autograd.grad(out.sum(), leaf)
        sq.append(g.square().sum())
    fd = (sq[0] - sq[1]) / (2 * h)
    grad = getattr(est, name).grad
    if grad is None:
        raise AssertionError(f"{name} got no gradient from surrogate.mean().backward()")
    return grad, fd


def assert_cv_grad_matches_finite_differences(
    make: Callable[[], nn.Module],
    name: str,
    estimate: Estimate,
    logits: Tensor,
    *,
    h: float = 1e-5,
    rtol: float = 1e-5,
    min_slope: float = 1e-3,
) -> None:
    r"""The control variate's gradient in ``name`` is :math:`\partial \sum \hat g^2` (see the
    module doc): ``torch.allclose(grad, fd, rtol)`` (default atol), at a point where the slope
    ``|fd| > min_slope`` so that the comparison is not between two near-zero numbers."""
    grad, fd = squared_estimate_and_cv_grad(make, name, estimate, logits, h)
    if not abs(fd) > min_slope:
        raise AssertionError(f"{name}: central difference {fd.item():.3g} is not > {min_slope}")
    if not torch.allclose(grad, fd, rtol=rtol):
        raise AssertionError(
            f"{name}: gradient {grad.tolist()} != central difference {fd.item():.10g} (rtol {rtol})"
        )


def misscaled_cv_training(cls: type, factor: float) -> type:
    """Negative control: ``cls`` (REBAR, RELAX) training its control variate on ``factor``
    times the right gradient; the check must reject it."""

    class Misscaled(cls):  # type: ignore[valid-type, misc]
        @staticmethod
        def _variance_term(g: Tensor, params: list) -> Tensor:
            return factor * cls._variance_term(g, params)

    Misscaled.__name__ = f"Misscaled{cls.__name__}"
    return Misscaled
