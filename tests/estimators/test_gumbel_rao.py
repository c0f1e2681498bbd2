"""Gumbel-Rao's closed form for Bernoulli variables against its two-class categorical route.

For P(b = 1) = sigmoid(a), the relaxed sample given b is sigmoid(s / tau) with s = a + L, L a
logistic truncated to L > -a (b = 1) or L <= -a (b = 0), so its CDF is known exactly:

    P(s <= x | b = 1) = (sigmoid(x - a) - sigmoid(-a)) / sigmoid(a),   x > 0,
    P(s <= x | b = 0) = sigmoid(x - a) / sigmoid(-a),                  x <= 0.

The fast path's draws and the two-class route's ([0, a] through conditional_gumbel) are both
tested against it (one-sample KS) and against each other (two-sample KS); the unconditioned
logistic is rejected by the same tests. Gradients: the fast path's mean against the two-class
route's within 4 combined standard errors, with an unconditioned variant rejected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit, logit
from torch import Tensor

from discograd.estimators import GumbelRao
from discograd.estimators import _conditional as conditional_module
from discograd.estimators._conditional import conditional_gumbel, conditional_logistic
from discograd.estimators.base import evaluate, zero_value
from discograd.ops import straight_through
from tests.problems import bernoulli_problems
from tests.stats import ks_pvalue

TAU = 0.5
ALPHA = 1e-3  # per KS test; the negative controls' p-values are below 1e-30


def _exact_cdf(a: float, b: int):
    """CDF of the relaxed sample r = sigmoid(s / TAU) given b (module docstring)."""

    def cdf(r: np.ndarray) -> np.ndarray:
        x = TAU * logit(np.clip(r, 1e-300, 1 - 1e-16))
        if b == 1:
            return np.clip((expit(x - a) - expit(-a)) / expit(a), 0.0, 1.0)
        return np.clip(expit(x - a) / expit(-a), 0.0, 1.0)

    return cdf


def _two_class_route(a: Tensor, b: Tensor, g: torch.Generator) -> Tensor:
    """s = z_1 - z_0 for z ~ p([0, a] + G | argmax = b): Gumbel-Rao's categorical route."""
    cat = torch.stack([torch.zeros_like(a), a], -1)
    z = conditional_gumbel(cat, torch.nn.functional.one_hot(b.long(), 2).to(a.dtype), g)
    return z[..., 1] - z[..., 0]


CASES = [(-3.0, 0), (-3.0, 1), (0.4, 0), (0.4, 1), (2.5, 0), (2.5, 1)]


@pytest.mark.parametrize("a,b", CASES)
def test_conditional_logistic_has_the_exact_conditional_law_of_the_two_class_route(a, b):
    n = 20000
    g = torch.Generator().manual_seed(100 + int(10 * a) + b)
    at = torch.full((n,), a, dtype=torch.float64)
    bt = torch.full((n,), float(b), dtype=torch.float64)
    fast = conditional_logistic(at, bt, g)
    route = _two_class_route(at, bt, g)
    assert bool(((fast > 0) == (b == 1)).all()) and bool(((route > 0) == (b == 1)).all())
    cdf = _exact_cdf(a, b)
    fast_r, route_r = torch.sigmoid(fast / TAU), torch.sigmoid(route / TAU)
    assert ks_pvalue(fast_r, cdf) > ALPHA
    assert ks_pvalue(route_r, cdf) > ALPHA  # the reference route itself, for the record
    assert stats.ks_2samp(fast_r.numpy(), route_r.numpy()).pvalue > ALPHA

    # Negative control: the unconditioned relaxed sample sigmoid((a + L) / tau).
    u = torch.rand(n, generator=g, dtype=torch.float64)
    free = torch.sigmoid((a + torch.logit(u)) / TAU)
    assert ks_pvalue(free, cdf) < ALPHA
    assert stats.ks_2samp(free.numpy(), route_r.numpy()).pvalue < ALPHA


def test_conditional_logistic_is_finite_and_on_the_right_side_for_extreme_logits():
    g = torch.Generator().manual_seed(7)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        a = torch.tensor([-60.0, -30.0, -12.0, 0.0, 12.0, 30.0, 60.0], dtype=dtype)
        for b in (0.0, 1.0):
            s = conditional_logistic(a, torch.full_like(a, b), g, n=2000)
            assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            assert torch.isfinite(s).all(), (dtype, b)
            assert bool(((s > 0) == (b == 1.0)).all()), (dtype, b)


def _two_class(est: GumbelRao):
    """The estimator through its categorical route, as a function of the Bernoulli logits."""

    def call(f, logits, *, distribution="bernoulli", generator=None):
        cat = torch.stack([torch.zeros_like(logits), logits], -1)
        return est(lambda y: f(y[..., 1]), cat, distribution="categorical", generator=generator)

    return call


class _UnconditionedBernoulli(GumbelRao):
    """Negative control: the Jacobian averaged over logistic noise drawn independently of b."""

    def _bernoulli(self, f, family, generator):
        a = family.logits.expand((self.n_samples,) + family.logits.shape)
        b = family.sample(self.n_samples, generator)
        u = torch.rand((self.k,) + tuple(a.shape), generator=generator, dtype=a.dtype)
        s = (a.detach() + torch.logit(u)) + zero_value(a)
        z = straight_through(b, torch.sigmoid(s / self.temperature()).mean(0))
        return evaluate(f, z, family).mean(0)


def _grads(est, problem, n: int, seed: int) -> Tensor:
    rep = problem.logits.detach().expand((n,) + problem.logits.shape).clone().requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    surrogate = est(problem.f, rep, distribution="bernoulli", generator=g)
    (grad,) = torch.autograd.grad(surrogate.sum(), rep)
    return grad.double()


def _means_agree(x: Tensor, y: Tensor, n_se: float = 4.0) -> bool:
    se = (x.var(0) / x.shape[0] + y.var(0) / y.shape[0]).sqrt()
    return bool(((x.mean(0) - y.mean(0)).abs() <= n_se * se).all())


def test_bernoulli_fast_path_has_the_gradient_of_the_two_class_route():
    """Mean gradients agree within 4 combined SE on a nonlinear f of 3 variables; Jacobians
    averaged over unconditioned noise (lower variance too, but another mean) are rejected."""
    problem = bernoulli_problems()[1]
    n = 20000
    est = GumbelRao(tau=TAU, k=10)
    fast = _grads(est, problem, n, seed=1)
    route = _grads(_two_class(est), problem, n, seed=2)
    assert _means_agree(fast, route), (fast.mean(0), route.mean(0))
    wrong = _grads(_UnconditionedBernoulli(tau=TAU, k=10), problem, n, seed=3)
    assert not _means_agree(wrong, route), (wrong.mean(0), route.mean(0))


def test_bernoulli_fast_path_is_taken_and_keeps_the_estimator_interface(monkeypatch):
    """No two-class tensors: conditional_gumbel is never called; values are f at exact 0/1
    samples; n_samples, a per-variable tensor tau (with its gradient) and half precision work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the Bernoulli path went through conditional_gumbel")

    monkeypatch.setattr(conditional_module, "conditional_gumbel", refuse)
    monkeypatch.setattr("discograd.estimators.gumbel_rao.conditional_gumbel", refuse)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, generator=g).requires_grad_(True)
    tau = torch.full((6,), 0.7, requires_grad=True)
    seen = []

    def f(z: Tensor) -> Tensor:
        seen.append(z.detach())
        return (z * torch.arange(6.0)).sum(-1)

    out = GumbelRao(tau=tau, k=3, n_samples=2)(f, logits, distribution="bernoulli", generator=g)
    assert out.shape == (4,) and seen[0].shape == (2, 4, 6)
    assert bool(((seen[0] == 0) | (seen[0] == 1)).all())
    assert torch.allclose(out, f(seen[0]).mean(0))
    out.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert tau.grad is not None and torch.isfinite(tau.grad).all() and tau.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="tau"):
        GumbelRao(tau=torch.ones(5), k=2)(f, logits, distribution="bernoulli")
    for dtype in (torch.float16, torch.bfloat16):
        half = (10 * torch.randn(4, 6, generator=g)).to(dtype).requires_grad_(True)
        value = GumbelRao(tau=0.5)(lambda z: z.sum(-1), half, distribution="bernoulli")
        value.sum().backward()
        assert value.dtype == dtype and half.grad is not None
        assert torch.isfinite(half.grad.float()).all()
