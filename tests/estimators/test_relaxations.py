"""Biased estimators (st, gumbel-softmax, st-gumbel-softmax, gumbel-rao, reinmax) against closed
forms, quadrature, enumeration and high-precision Monte Carlo references; their temperatures
(tensors, schedules, learned), Bernoulli variables, masks and half precision.

Notation: pi = softmax(theta), J(p) = diag(p) - p p^T (the softmax Jacobian at output p), and a
linear loss f(z) = sum over rows of c . z.
"""

from __future__ import annotations

import math
from typing import Callable, List, Tuple

import pytest
import torch
from scipy import integrate
from scipy.special import expit
from torch import Tensor

from discograd import estimators
from discograd.estimators import GumbelRao, ReinMax
from discograd.estimators._conditional import conditional_gumbel
from discograd.estimators.base import categorical_view, evaluate
from discograd.ops import gumbel_max, gumbel_noise, gumbel_softmax, straight_through
from discograd.schedules import ExponentialDecay, LearnedTemperature
from tests.problems import categorical_problems
from tests.stats import assert_mean_close, exact_grad, grad_draws, mean_is_close

ALL = ["st", "gumbel-softmax", "st-gumbel-softmax", "gumbel-rao", "reinmax"]
HARD = ["st", "st-gumbel-softmax", "gumbel-rao", "reinmax"]
TEMPERED = ["gumbel-softmax", "st-gumbel-softmax", "gumbel-rao", "reinmax"]


# ---------------------------------------------------------------------------------------------
# helpers


def _linear_problem(n: int, k: int, seed: int) -> Tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    c = torch.randn(n, k, generator=g, dtype=torch.float64)
    return logits, c


def _linear(c: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda z: (z * c).sum((-1, -2))


def _jvp(p: Tensor, c: Tensor) -> Tensor:
    """J(p) c = p * (c - p . c), row-wise (J is symmetric, so this is also c^T J(p))."""
    return p * (c - (p * c).sum(-1, keepdim=True))


class _Recorder:
    """Wraps f and keeps the samples it was called with."""

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f = f
        self.seen: List[Tensor] = []

    def __call__(self, z: Tensor) -> Tensor:
        self.seen.append(z.detach().clone())
        return self.f(z)


def _values_and_grads(est, f, logits: Tensor, n: int, distribution: str, generator):
    """n independent (surrogate value, gradient) pairs, replicated along a leading dim."""
    rep = logits.detach().unsqueeze(0).expand((n,) + logits.shape).clone().requires_grad_(True)
    out = est(f, rep, distribution=distribution, generator=generator)
    (grad,) = torch.autograd.grad(out.sum(), rep)
    return out.detach(), grad


def _close_to_reference(draws: Tensor, ref: Tensor, ref_se: Tensor, n_se: float = 4.0) -> bool:
    """mean(draws) within n_se combined standard errors of a Monte Carlo reference."""
    draws = draws.double()
    se = draws.std(0) / draws.shape[0] ** 0.5
    return bool(((draws.mean(0) - ref).abs() <= n_se * (se**2 + ref_se**2).sqrt() + 1e-12).all())


def _total_variance(draws: Tensor) -> Tuple[float, float]:
    """tr Cov(g) and its standard error, from u_j = |g_j - mean|^2."""
    flat = draws.double().reshape(draws.shape[0], -1)
    n = flat.shape[0]
    u = ((flat - flat.mean(0)) ** 2).sum(-1)
    return float(u.mean() * n / (n - 1)), float(u.std() / n**0.5)


def _radius(draws: Tensor) -> float:
    """4 x the root of the summed squared standard errors: a bound on |mean - E| w.h.p."""
    return 4.0 * float((draws.double().var(0).sum() / draws.shape[0]) ** 0.5)


# ---------------------------------------------------------------------------------------------
# closed forms on a linear f


def test_st_gradient_is_exact_for_every_draw_on_linear_f():
    logits, c = _linear_problem(3, 4, seed=0)
    draws = grad_draws(
        estimators.get("st"), _linear(c), logits, 200, generator=torch.Generator().manual_seed(0)
    )
    exact = _jvp(torch.softmax(logits, -1), c)
    assert torch.allclose(exact, exact_grad(_linear(c), logits)[1])
    assert torch.allclose(draws, exact.expand_as(draws), atol=1e-12)
    # Negative control: the same per-draw check fails once f is not linear.
    quad = lambda z: _linear(c)(z) ** 2  # noqa: E731
    draws_q = grad_draws(
        estimators.get("st"), quad, logits, 200, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(draws_q, exact_grad(quad, logits)[1].expand_as(draws_q), atol=1e-3)


def _reinmax_given_d(d: Tensor, logits: Tensor, c: Tensor, tau: float) -> Tensor:
    """ReinMax's gradient for linear f and sample d: 2 J((d + s)/2) c - 1/2 J(pi) c."""
    s = torch.softmax(logits / tau, -1)
    return 2.0 * _jvp((d + s) / 2.0, c) - 0.5 * _jvp(torch.softmax(logits, -1), c)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_reinmax_on_linear_f_matches_its_closed_form(tau):
    """For linear f ReinMax's gradient is a deterministic function of D (checked draw by draw);
    its mean over D ~ pi, by enumeration of D, is (J(s) + 1/2 (s - pi)(s - pi)^T) c with
    s = softmax(theta / tau). This EQUALS the exact gradient J(pi) c at tau = 1 and differs
    from it for tau != 1 (at tau = 3 the draws' mean is rejected against the exact gradient)."""
    logits, c = _linear_problem(2, 3, seed=1)
    f = _Recorder(_linear(c))
    n = 20000
    draws = grad_draws(ReinMax(tau=tau), f, logits, n, generator=torch.Generator().manual_seed(1))
    d = f.seen[-1][0]  # (n, 2, 3) one-hot samples
    assert torch.allclose(draws, _reinmax_given_d(d, logits, c, tau), atol=1e-12)

    pi, s = torch.softmax(logits, -1), torch.softmax(logits / tau, -1)
    eye = torch.eye(3, dtype=torch.float64)
    by_class = _reinmax_given_d(eye[:, None, :], logits, c, tau)  # (3 classes, 2 rows, 3)
    expected = (pi.T.unsqueeze(-1) * by_class).sum(0)
    closed = _jvp(s, c) + 0.5 * (s - pi) * ((s - pi) * c).sum(-1, keepdim=True)
    assert torch.allclose(expected, closed, atol=1e-12)
    assert_mean_close(draws, expected)
    exact = exact_grad(_linear(c), logits)[1]
    if tau == 1.0:
        assert torch.allclose(expected, exact, atol=1e-12)
    else:
        assert not mean_is_close(draws, exact)


def test_reinmax_at_tau_1_is_unbiased_for_quadratic_f():
    """Second-order accuracy (Heun's method is exact for quadratics): at tau = 1 ReinMax's
    expected gradient equals the exact one for every f quadratic in z. Negative controls: ST
    (first order) and ReinMax at tau = 3 are rejected by the same test."""
    logits, c = _linear_problem(2, 3, seed=2)
    w = torch.randn(2, 3, generator=torch.Generator().manual_seed(20), dtype=torch.float64)

    def f(z):
        a, b = (z * c).sum((-1, -2)), (z * w).sum((-1, -2))
        return (a - 0.3) ** 2 + a * b

    exact = exact_grad(f, logits)[1]
    g = torch.Generator().manual_seed(2)
    assert_mean_close(grad_draws(ReinMax(tau=1.0), f, logits, 20000, generator=g), exact)
    st = grad_draws(estimators.get("st"), f, logits, 20000, generator=g)
    assert not mean_is_close(st, exact)
    assert not mean_is_close(grad_draws(ReinMax(tau=3.0), f, logits, 20000, generator=g), exact)


class _GumbelRaoTotalDerivative(GumbelRao):
    """Negative control: differentiates through the conditional noise's dependence on theta as
    well, which changes the expectation by sum_D (d p(D)/d theta) E[. | D]."""

    def estimate(self, f, family, generator):
        logits, decode = categorical_view(family)
        theta = logits.expand((self.n_samples,) + logits.shape)
        d = gumbel_max(theta.detach(), generator=generator, one_hot=True)
        soft = torch.softmax(conditional_gumbel(theta, d, generator, n=self.k) / 0.5, -1)
        return evaluate(f, decode(straight_through(d, soft.mean(0))), family).mean(0)


def test_st_gumbel_softmax_and_gumbel_rao_share_their_expectation_on_linear_f():
    """Both estimate E[d softmax((theta + G)/tau)/d theta] c = E[J(y) c] / tau; the reference is
    a 400k-draw float64 Monte Carlo average of that formula (no autograd), compared with the
    combined standard error. Negative controls: the exact gradient J(pi) c (the relaxation is
    biased), and Gumbel-Rao differentiated through the conditional noise, are both rejected."""
    tau = 0.5
    logits, c = _linear_problem(2, 3, seed=3)
    gen = torch.Generator().manual_seed(3)
    y = torch.softmax(
        (logits + gumbel_noise((400000, 2, 3), generator=gen, dtype=torch.float64)) / tau, -1
    )
    terms = _jvp(y, c) / tau
    ref, ref_se = terms.mean(0), terms.std(0) / terms.shape[0] ** 0.5

    n = 20000
    stgs = grad_draws(
        estimators.get("st-gumbel-softmax", tau=tau), _linear(c), logits, n, generator=gen
    )
    rao = grad_draws(GumbelRao(tau=tau, k=10), _linear(c), logits, n, generator=gen)
    assert _close_to_reference(stgs, ref, ref_se)
    assert _close_to_reference(rao, ref, ref_se)
    rao_se = rao.std(0) / n**0.5
    assert _close_to_reference(stgs, rao.mean(0), rao_se)
    assert not mean_is_close(rao, _jvp(torch.softmax(logits, -1), c))
    wrong = grad_draws(
        _GumbelRaoTotalDerivative(tau=tau, k=10), _linear(c), logits, n, generator=gen
    )
    assert not _close_to_reference(wrong, ref, ref_se)


def _concrete_moments(a: float, tau: float) -> Tuple[float, float]:
    """E[sigmoid((a + L)/tau)] and its derivative in a, L ~ Logistic, by quadrature."""
    pdf = lambda x: expit(x) * expit(-x)  # noqa: E731
    mean = integrate.quad(lambda x: expit((a + x) / tau) * pdf(x), -50, 50, epsabs=1e-13)[0]
    dmean = integrate.quad(lambda x: pdf((a + x) / tau) / tau * pdf(x), -50, 50, epsabs=1e-13)[0]
    return mean, dmean


@pytest.mark.parametrize("distribution", ["categorical", "bernoulli"])
def test_gumbel_softmax_linear_value_and_gradient_match_quadrature(distribution):
    """Two classes (or Bernoulli): y_1 = sigmoid((a + L)/tau) with a = theta_1 - theta_0, so
    E[f(y)] = c . E[y] and its gradient c^T dE[y]/d theta are one-dimensional integrals.
    Negative control: the value of the discrete objective, c . pi, is rejected."""
    tau, n = 0.5, 20000
    g = torch.Generator().manual_seed(4)
    if distribution == "categorical":
        logits, c = _linear_problem(3, 2, seed=4)
        a = logits[:, 1] - logits[:, 0]
        gap = c[:, 1] - c[:, 0]
        f = _linear(c)
    else:
        logits, c = _linear_problem(1, 3, seed=4)
        logits, c = logits[0], c[0]
        a, gap = logits, c
        f = lambda z: (z * c).sum(-1)  # noqa: E731
    moments = torch.tensor([_concrete_moments(float(x), tau) for x in a], dtype=torch.float64)
    mean1, dmean1 = moments[:, 0], moments[:, 1]
    if distribution == "categorical":
        value = (c[:, 0] * (1 - mean1) + c[:, 1] * mean1).sum()
        grad = torch.stack([-gap * dmean1, gap * dmean1], -1)
        discrete = (torch.softmax(logits, -1) * c).sum()
    else:
        value, grad = (c * mean1).sum(), c * dmean1
        discrete = (torch.sigmoid(logits) * c).sum()
    values, grads = _values_and_grads(
        estimators.get("gumbel-softmax", tau=tau), f, logits, n, distribution, g
    )
    assert_mean_close(values.unsqueeze(-1), value.reshape(1))
    assert_mean_close(grads, grad)
    assert not mean_is_close(values.unsqueeze(-1), discrete.reshape(1))


# ---------------------------------------------------------------------------------------------
# bias and variance on a nonlinear problem


def test_gumbel_softmax_bias_shrinks_as_tau_goes_to_zero():
    problem = categorical_problems()[1]  # 2 x 3, f nonlinear and coupling the rows
    exact = exact_grad(problem.f, problem.logits)[1]
    g = torch.Generator().manual_seed(5)
    dist, radius = [], []
    for tau in [0.1, 1.0, 5.0]:
        draws = grad_draws(
            estimators.get("gumbel-softmax", tau=tau), problem.f, problem.logits, 20000, generator=g
        )
        dist.append(float((draws.double().mean(0) - exact).norm()))
        radius.append(_radius(draws))
    assert dist[0] + radius[0] < dist[1] - radius[1], (dist, radius)
    assert dist[1] + radius[1] < dist[2] - radius[2], (dist, radius)


class _GumbelRaoUnconditional(GumbelRao):
    """Negative control: averages the Jacobian over Gumbels drawn independently of D. That
    lowers the variance too, but changes the mean once f is nonlinear."""

    def estimate(self, f, family, generator):
        logits, decode = categorical_view(family)
        theta = logits.expand((self.n_samples,) + logits.shape)
        d = gumbel_max(theta.detach(), generator=generator, one_hot=True)
        soft = gumbel_softmax(
            theta.expand((self.k,) + theta.shape), self.temperature(), generator=generator
        ).mean(0)
        return evaluate(f, decode(straight_through(d, soft)), family).mean(0)


def test_gumbel_rao_lowers_the_variance_of_st_gumbel_softmax():
    """Rao-Blackwellization: same mean as ST-GS (on a nonlinear f too), total variance no larger
    and, with k = 10, clearly lower; with k = 1 it is ST-GS in distribution. Negative control:
    Gumbels drawn independently of D lower the variance as well but are rejected by the mean
    comparison."""
    problem = categorical_problems()[1]
    tau, n = 0.5, 8000
    g = torch.Generator().manual_seed(6)
    stgs = grad_draws(
        estimators.get("st-gumbel-softmax", tau=tau), problem.f, problem.logits, n, generator=g
    )
    rao1 = grad_draws(GumbelRao(tau=tau, k=1), problem.f, problem.logits, n, generator=g)
    rao10 = grad_draws(GumbelRao(tau=tau, k=10), problem.f, problem.logits, n, generator=g)
    v_st, se_st = _total_variance(stgs)
    v1, se1 = _total_variance(rao1)
    v10, se10 = _total_variance(rao10)
    assert v10 + 4 * se10 < v_st - 4 * se_st, (v10, se10, v_st, se_st)
    assert v10 + 4 * se10 < v1 - 4 * se1, (v10, se10, v1, se1)
    assert abs(v1 - v_st) < 4 * (se1**2 + se_st**2) ** 0.5, (v1, se1, v_st, se_st)
    assert _close_to_reference(stgs, rao10.double().mean(0), rao10.double().std(0) / n**0.5)
    wrong = grad_draws(
        _GumbelRaoUnconditional(tau=tau, k=10), problem.f, problem.logits, n, generator=g
    )
    assert not _close_to_reference(stgs, wrong.double().mean(0), wrong.double().std(0) / n**0.5)


# ---------------------------------------------------------------------------------------------
# hard estimators: exact samples forward


@pytest.mark.parametrize("distribution", ["categorical", "bernoulli"])
@pytest.mark.parametrize("name", HARD)
def test_hard_estimators_feed_f_exact_samples_and_report_the_mc_mean(name, distribution):
    g = torch.Generator().manual_seed(7)
    shape = (4, 3) if distribution == "categorical" else (5,)
    logits = torch.randn(shape, generator=g, requires_grad=True)
    w = torch.randn(shape, generator=g)
    f = _Recorder(lambda z: torch.sin((z * w).flatten(1).sum(-1)) + (z**2).flatten(1).sum(-1))
    est = estimators.get(name, n_samples=20000)
    out = est(f, logits, distribution=distribution, generator=g)
    z = f.seen[-1]
    assert z.shape == (20000,) + shape and z.dtype == logits.dtype
    assert bool(((z == 0) | (z == 1)).all())
    if distribution == "categorical":
        assert bool((z.sum(-1) == 1).all())
        probs = torch.softmax(logits.detach(), -1)
    else:
        probs = torch.sigmoid(logits.detach())
    assert torch.equal(out, f.f(z).mean(0))
    (grad,) = torch.autograd.grad(out, logits)
    assert torch.isfinite(grad).all()
    # The samples follow the distribution (and not a tempered one: negative control).
    flat = z.reshape(z.shape[0], -1)
    assert_mean_close(flat, probs.reshape(-1))
    tempered = (
        torch.softmax(logits.detach() / 2, -1)
        if distribution == "categorical"
        else torch.sigmoid(logits.detach() / 2)
    )
    assert not mean_is_close(flat, tempered.reshape(-1))


# ---------------------------------------------------------------------------------------------
# temperatures: tensors, schedules, learned


def _row_separable(z: Tensor) -> Tensor:
    c = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]], dtype=z.dtype)
    return ((z * c).sum(-1) ** 2 + (z * c).sum(-1)).sum(-1)


def _grad(est, f, logits: Tensor, seed: int, distribution: str = "categorical") -> Tensor:
    leaf = logits.detach().clone().requires_grad_(True)
    out = est(f, leaf, distribution=distribution, generator=torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    return grad


@pytest.mark.parametrize("name", TEMPERED)
def test_tau_as_a_per_row_tensor_matches_float_temperatures(name):
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    tau = torch.tensor([0.5, 2.0], dtype=torch.float64)
    per_row = _grad(estimators.get(name, tau=tau, n_samples=3), _row_separable, logits, 8)
    low = _grad(estimators.get(name, tau=0.5, n_samples=3), _row_separable, logits, 8)
    high = _grad(estimators.get(name, tau=2.0, n_samples=3), _row_separable, logits, 8)
    assert torch.allclose(per_row[0], low[0], atol=1e-12)
    assert torch.allclose(per_row[1], high[1], atol=1e-12)
    assert not torch.allclose(low, high)  # the temperature matters to the gradient
    with pytest.raises(ValueError, match="tau"):
        estimators.get(name, tau=torch.ones(5))(_row_separable, logits)


@pytest.mark.parametrize("name", TEMPERED)
def test_schedule_is_read_at_the_current_step_and_survives_state_dict(name):
    schedule = ExponentialDecay(tau0=2.0, rate=0.5, tau_min=0.3, every=2)
    est = estimators.get(name, tau=schedule)
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert est.temperature() == 2.0
    est.step()
    assert int(est.num_steps) == 1 and est.temperature() == 2.0
    est.step()
    tau2 = 2.0 * math.exp(-1.0)
    assert est.temperature() == pytest.approx(tau2)
    assert torch.allclose(
        _grad(est, _row_separable, logits, 9),
        _grad(estimators.get(name, tau=tau2), _row_separable, logits, 9),
    )
    for _ in range(20):
        est.step()
    assert est.temperature() == 0.3
    resumed = estimators.get(name, tau=ExponentialDecay(tau0=2.0, rate=0.5, tau_min=0.3, every=2))
    resumed.load_state_dict(est.state_dict())
    assert int(resumed.num_steps) == 22 and resumed.temperature() == 0.3


@pytest.mark.parametrize("name", TEMPERED)
def test_learned_temperature_is_a_parameter_and_gets_its_gradient(name):
    learned = LearnedTemperature(init=1.5, tau_min=0.1)
    est = estimators.get(name, tau=learned)
    assert any(p is learned.log_excess for p in est.parameters())
    assert "schedule.log_excess" in est.state_dict()
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(10), requires_grad=True)
    surrogate = est(_row_separable, logits, generator=torch.Generator().manual_seed(10))
    surrogate.mean().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    if name == "reinmax":
        # tau only moves the point pi_1 = (D + softmax(theta/tau))/2, behind the paper's stop-grad.
        assert learned.log_excess.grad is None
    else:
        grad = learned.log_excess.grad
        assert grad is not None and torch.isfinite(grad) and float(grad) != 0.0
    if name == "gumbel-softmax":
        # f sees y(tau), so with the noise fixed by the seed the gradient is a plain derivative.
        def value_at(s: float) -> float:
            with torch.no_grad():
                learned.log_excess.fill_(s)
                out = est(_row_separable, logits, generator=torch.Generator().manual_seed(10))
            return float(out.mean())

        s0, h = float(learned.log_excess.detach()), 1e-3
        fd = (value_at(s0 + h) - value_at(s0 - h)) / (2 * h)
        assert float(grad) == pytest.approx(fd, rel=1e-3, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Bernoulli, masks, half precision, options


@pytest.mark.parametrize("name", ALL)
def test_bernoulli_versions_give_finite_gradients_with_batch(name):
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(12), requires_grad=True)
    f = lambda z: ((z - 0.3) ** 2).sum(-1)  # noqa: E731  per-example loss (S, 6)
    out = estimators.get(name, n_samples=2)(
        f, logits, distribution="bernoulli", generator=torch.Generator().manual_seed(12)
    )
    assert out.shape == (6,)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_masked_categories_are_never_drawn_and_gradients_stay_finite(name):
    logits = torch.tensor(
        [[0.0, float("-inf"), 1.0, float("-inf")], [2.0, -1.0, 0.5, 0.0]], requires_grad=True
    )
    f = _Recorder(lambda z: (z * torch.arange(4.0)).sum(-1).pow(2).sum(-1))
    est = estimators.get(name, n_samples=500)
    out = est(f, logits, generator=torch.Generator().manual_seed(13))
    (grad,) = torch.autograd.grad(out, logits)
    assert torch.isfinite(out) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert f.seen[-1][:, 0, [1, 3]].max() < 1e-6
    if name in TEMPERED:  # a tensor temperature's gradient must not see -inf / tau either
        learned = LearnedTemperature(init=0.7)
        est = estimators.get(name, tau=learned, n_samples=500)
        est(f, logits, generator=torch.Generator().manual_seed(13)).backward()
        assert torch.isfinite(logits.grad).all()
        tau_grad = learned.log_excess.grad
        assert (tau_grad is None) if name == "reinmax" else bool(torch.isfinite(tau_grad))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("distribution", ["categorical", "bernoulli"])
@pytest.mark.parametrize("name", ALL)
def test_half_precision_logits_give_finite_outputs(name, distribution, dtype):
    base = torch.tensor([[-30.0, 0.0, 4.0, 30.0], [1.0, -2.0, 0.5, 0.0], [8.0, 8.0, -8.0, 2.0]])
    logits = base.to(dtype).requires_grad_(True)
    f = _Recorder(lambda z: ((z - 0.25) ** 2).sum((-1, -2)))
    opts = {} if name == "st" else {"tau": 0.3}
    est = estimators.get(name, n_samples=64, **opts)
    out = est(f, logits, distribution=distribution, generator=torch.Generator().manual_seed(14))
    (grad,) = torch.autograd.grad(out, logits)
    z = f.seen[-1]
    assert z.dtype == dtype and grad.dtype == dtype
    assert torch.isfinite(out) and torch.isfinite(z).all() and torch.isfinite(grad).all()
    if name in HARD:
        assert bool(((z == 0) | (z == 1)).all())


def test_options_metadata_and_bad_arguments():
    est = estimators.get("gumbel-rao", tau=0.7, k=3, n_samples=2)
    assert isinstance(est, GumbelRao) and est.k == 3 and est.n_samples == 2
    assert isinstance(estimators.get("reinmax", tau=2.0), ReinMax)
    for name in ["gumbel-rao", "reinmax"]:
        cls = type(estimators.get(name))
        assert cls.unbiased is False and cls.evaluations == "S"
        assert cls.distributions == ("categorical", "bernoulli")
        with pytest.raises(ValueError, match="tau"):
            estimators.get(name, tau=0.0)
        with pytest.raises(ValueError, match="n_samples"):
            estimators.get(name, n_samples=0)
        with pytest.raises(ValueError, match="does not support distribution='distribution'"):
            estimators.get(name)(lambda z: z, torch.distributions.Normal(torch.zeros(2), 1.0))
    with pytest.raises(ValueError, match="k must be"):
        GumbelRao(k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        GumbelRao(k=2.5)
