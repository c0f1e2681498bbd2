"""Statistical helpers shared by the tests: z-tests of means, chi-square, KS, gradient draws.

Tolerances come from standard errors, never from hand-tuned constants: a mean of n draws is
accepted when every component is within ``n_se`` standard errors of the exact value.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from scipy import stats
from torch import Tensor


def z_scores(draws: Tensor, exact: Tensor, floor: float = 1e-12) -> Tensor:
    """|mean - exact| / standard error, per component; draws: (n, ...)."""
    draws = draws.double()
    n = draws.shape[0]
    se = draws.std(0, unbiased=True) / n**0.5
    return (draws.mean(0) - exact.double()).abs() / se.clamp_min(floor)


def assert_mean_close(draws: Tensor, exact: Tensor, n_se: float = 4.0, atol: float = 1e-9) -> None:
    """Every component of the mean of ``draws`` is within n_se standard errors of ``exact``.

    ``atol`` admits components whose draws are (numerically) constant and equal to the exact
    value, where the standard error is zero.
    """
    draws = draws.double()
    n = draws.shape[0]
    err = (draws.mean(0) - exact.double()).abs()
    se = draws.std(0, unbiased=True) / n**0.5
    bad = err > n_se * se + atol
    assert not bad.any(), (
        f"mean differs from exact by more than {n_se} SE at {int(bad.sum())} components; "
        f"max z = {float((err / se.clamp_min(1e-300)).max()):.2f}\n"
        f"mean={draws.mean(0)}\nexact={exact}\nse={se}"
    )


def mean_is_close(draws: Tensor, exact: Tensor, n_se: float = 4.0, atol: float = 1e-9) -> bool:
    """The same criterion as :func:`assert_mean_close`, as a bool (for negative controls)."""
    draws = draws.double()
    n = draws.shape[0]
    err = (draws.mean(0) - exact.double()).abs()
    se = draws.std(0, unbiased=True) / n**0.5
    return not bool((err > n_se * se + atol).any())


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Chi-square goodness of fit; cells with small expected counts are pooled into one."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    obs = list(counts[big])
    exp = list(expected[big])
    if (~big).any():
        obs.append(counts[~big].sum())
        exp.append(expected[~big].sum())
    obs_a, exp_a = np.array(obs), np.array(exp)
    exp_a = exp_a * obs_a.sum() / exp_a.sum()
    return float(stats.chisquare(obs_a, exp_a).pvalue)


def ks_pvalue(samples: Tensor, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    return float(stats.kstest(samples.double().flatten().numpy(), cdf).pvalue)


def grad_draws(
    est: Callable,
    f: Callable[[Tensor], Tensor],
    logits: Tensor,
    n: int,
    *,
    distribution: str = "categorical",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """n independent gradient estimates of d E[f] / d logits, as an (n, *logits.shape) tensor.

    Vectorized: the problem is replicated n times along a new leading batch dimension, so f must
    broadcast over leading dimensions and return one loss per replica (shape (S, n)).
    """
    rep = logits.detach().unsqueeze(0).expand((n,) + logits.shape).clone().requires_grad_(True)
    surrogate = est(f, rep, distribution=distribution, generator=generator)
    assert surrogate.shape == (n,), f"surrogate shape {tuple(surrogate.shape)}, expected ({n},)"
    (grad,) = torch.autograd.grad(surrogate.sum(), rep)
    return grad


def exact_grad(f: Callable[[Tensor], Tensor], logits: Tensor, distribution: str = "categorical"):
    """(value, gradient) of E[f] by enumeration."""
    from discograd.estimators import Exact

    leaf = logits.detach().clone().requires_grad_(True)
    value = Exact(batch_dims=0)(f, leaf, distribution=distribution)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad
