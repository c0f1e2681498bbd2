"""REBAR and RELAX on Bernoulli variables: the closed-form conditional relaxation (Tucker et
al., 2017) against the exact conditional and the two-class route it replaced, unbiasedness
(each with negative controls the same test rejects), variance against the two-class route,
cost, training of the control variate, and finiteness."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from discograd.estimators import REBAR, RELAX
from tests.finite_differences import (
    assert_cv_grad_matches_finite_differences,
    misscaled_cv_training,
)
from tests.problems import bernoulli_problems, rebar_toy
from tests.stats import assert_mean_close, exact_grad, grad_draws, ks_pvalue, mean_is_close

PROBLEMS = bernoulli_problems() + [rebar_toy()]
# Dropping the reparameterization of z~ is biased by E[grad c(z~)], large only where a logit
# moves E[c | b] a lot; on bern-1 and the toy at theta = 1/2 it is within the noise.
DETACH_PROBLEMS = [p for p in PROBLEMS if p.name in ("bern-3", "bern-10")]
COUPLINGS = ["tied", "independent"]
N_DRAWS = 20000
ETA, TAU = 0.7, 0.3  # non-trivial fixed control-variate parameters
P_MIN = 1e-3  # KS: accept above, reject below


# --- the routes under test and the negative controls -------------------------------------------


class TwoClassREBAR(REBAR):
    """The route before the closed form: a subclass that replaces the K-class draw gets the
    two-class view [0, a] for Bernoulli variables too (the unchanged code path)."""

    def perturb(self, theta, n, generator):
        return super().perturb(theta, n, generator)


class TwoClassRELAX(RELAX):
    def perturb(self, theta, n, generator):
        return super().perturb(theta, n, generator)


def _unconditioned(cls):
    """z~ = z, not conditioned on b: grad c(z) - grad c(z~) cancels and c(z) grad log p(b)
    stays in the estimate, with a non-zero mean."""

    class Unconditioned(cls):
        def perturb_bernoulli(self, a, n, generator):
            z, b, _ = super().perturb_bernoulli(a, n, generator)
            return z, b, z

    return Unconditioned


def _detached(cls):
    """z~ with the right value but not reparameterized: drops - grad c(z~)."""

    class Detached(cls):
        def perturb_bernoulli(self, a, n, generator):
            z, b, z_cond = super().perturb_bernoulli(a, n, generator)
            return z, b, z_cond.detach()

    return Detached


def _rebar(cls=REBAR, **opts):
    return cls(eta=ETA, temperature=TAU, **opts).double()


def _relax(problem, cls=RELAX, **opts):
    """RELAX with a flat MLP at fixed random weights (grad_draws puts replicas first)."""
    est = cls(in_features=problem.logits.numel(), hidden=8, eta=ETA, temperature=TAU, **opts)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in est.net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return est.double()


def _make(name, problem, cls=None, **opts):
    if name == "rebar":
        return _rebar(cls or REBAR, **opts)
    return _relax(problem, cls or RELAX, **opts)


def _draws(est, problem, logits=None, seed=1, n=N_DRAWS):
    logits = problem.logits if logits is None else logits
    return grad_draws(
        est,
        problem.f,
        logits,
        n,
        distribution="bernoulli",
        generator=torch.Generator().manual_seed(seed),
    )


def _exact(problem, logits=None):
    logits = problem.logits if logits is None else logits
    return exact_grad(problem.f, logits, "bernoulli")[1]


# --- the conditional relaxation ----------------------------------------------------------------


def _conditional_cdf(x, a, b):
    """CDF of s = a + L given b = 1[s > 0], L logistic (float64)."""
    p1 = torch.sigmoid(a)
    return torch.where(
        b > 0.5, (torch.sigmoid(x - a) - (1 - p1)) / p1, torch.sigmoid(x - a) / (1 - p1)
    )


A = torch.tensor([-2.0, 0.4, 1.5], dtype=torch.float64)


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_conditional_relaxation_matches_exact_conditional_and_two_class_route(coupling):
    """The probability integral transform of z~ under the exact CDF of a + L given b is uniform
    (one KS test pooling three logits and both outcomes), and equal in law to that of the
    two-class route's z~_1 - z~_0. Negative control: the exact CDF at logits a + 0.25."""
    n = 20000
    g = torch.Generator().manual_seed(0)
    z, b, z_cond = REBAR(coupling=coupling).perturb_bernoulli(A, n, g)
    assert z.shape == b.shape == z_cond.shape == (n, 3)
    assert torch.equal(b, (z > 0).double())
    assert torch.equal(b, (z_cond > 0).double())  # z~ lies on b's side of the threshold
    if coupling == "tied":
        assert torch.equal(z_cond, z)  # the tie: same value, another derivative
    pit = _conditional_cdf(z_cond, A, b)
    assert ks_pvalue(pit, stats.uniform.cdf) > P_MIN
    assert ks_pvalue(_conditional_cdf(z_cond, A + 0.25, b), stats.uniform.cdf) < P_MIN

    theta = torch.stack([torch.zeros_like(A), A], -1)
    _, hard, old = TwoClassREBAR().perturb(theta, n, torch.Generator().manual_seed(1))
    b_old, s_old = hard[..., 1], old[..., 1] - old[..., 0]
    pit_old = _conditional_cdf(s_old, A, b_old)
    assert ks_pvalue(pit_old, stats.uniform.cdf) > P_MIN
    assert stats.ks_2samp(pit.flatten().numpy(), pit_old.flatten().numpy()).pvalue > P_MIN
    # b itself: P(b = 1) = sigmoid(a) in both routes
    assert_mean_close(b, torch.sigmoid(A))
    assert_mean_close(b_old, torch.sigmoid(A))


def test_tied_conditional_is_the_papers_formula_with_v_from_u():
    """Tucker et al.'s z~ = a + logit(v'), v' = v (1 - theta) (b = 0) or (1 - theta) + v theta
    (b = 1), with v the position of z's uniform u in b's interval held fixed (the authors'
    code): its value is z and its derivative in a is what perturb_bernoulli's z~ carries."""
    n = 400
    a = torch.linspace(-4.0, 4.0, 17, dtype=torch.float64).expand(n, -1).clone()
    leaf = a.clone().requires_grad_(True)
    z, b, z_cond = REBAR().perturb_bernoulli(leaf, 1, torch.Generator().manual_seed(2))
    z, b, z_cond = z[0], b[0], z_cond[0]
    (slope,) = torch.autograd.grad(z_cond.sum(), leaf)
    (dz,) = torch.autograd.grad(z.sum(), leaf)
    assert torch.equal(dz, torch.ones_like(dz))

    u = torch.sigmoid(z.detach() - a)  # z = a + logit(u)
    theta = torch.sigmoid(a)
    v = torch.where(b > 0.5, (u - (1 - theta)) / theta, u / (1 - theta))
    assert ((v >= 0) & (v <= 1)).all()
    paper = a.clone().requires_grad_(True)
    th = torch.sigmoid(paper)
    v_prime = torch.where(b > 0.5, (1 - th) + v * th, v * (1 - th))
    z_tilde = paper + torch.log(v_prime) - torch.log1p(-v_prime)
    (expected,) = torch.autograd.grad(z_tilde.sum(), paper)
    assert torch.allclose(z_tilde.detach(), z_cond.detach(), rtol=1e-9, atol=1e-9)
    assert torch.allclose(slope, expected, rtol=1e-6, atol=1e-9)
    assert (slope >= 0).all() and (slope <= torch.where(b > 0.5, theta, 1 - theta)).all()


# --- unbiasedness -------------------------------------------------------------------------------


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("name", ["rebar", "relax"])
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_closed_form_is_unbiased(problem, name, coupling):
    assert_mean_close(_draws(_make(name, problem, coupling=coupling), problem), _exact(problem))


@pytest.mark.parametrize("name", ["rebar", "relax"])
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_unconditioned_relaxation_is_rejected(problem, name):
    cls = _unconditioned(REBAR if name == "rebar" else RELAX)
    assert not mean_is_close(_draws(_make(name, problem, cls), problem), _exact(problem))


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("name", ["rebar", "relax"])
@pytest.mark.parametrize("problem", DETACH_PROBLEMS, ids=lambda p: p.name)
def test_unreparameterized_relaxation_is_rejected(problem, name, coupling):
    cls = _detached(REBAR if name == "rebar" else RELAX)
    est = _make(name, problem, cls, coupling=coupling)
    assert not mean_is_close(_draws(est, problem), _exact(problem))


# --- variance against the two-class route -----------------------------------------------------


def _variance_with_se(draws):
    """Summed per-component variance of (n, ...) draws and its standard error."""
    x = draws.double().reshape(draws.shape[0], -1)
    d = x - x.mean(0)
    var = d.square().mean(0)
    se = ((d**4).mean(0) - var**2).clamp_min(0).sqrt() / x.shape[0] ** 0.5
    return float(var.sum()), float(se.square().sum().sqrt())


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_independent_coupling_has_the_two_class_variance(name):
    """coupling='independent' draws z~ with fresh noise, as the two-class route: the same
    estimator in law, so on REBAR's toy the variances agree within 4 combined SE."""
    problem = rebar_toy()
    new = _variance_with_se(_draws(_make(name, problem, coupling="independent"), problem, seed=3))
    old_cls = TwoClassREBAR if name == "rebar" else TwoClassRELAX
    old = _variance_with_se(_draws(_make(name, problem, old_cls), problem, seed=4))
    assert abs(new[0] - old[0]) < 4 * (new[1] ** 2 + old[1] ** 2) ** 0.5, (new, old)


@pytest.mark.parametrize("a", [0.0, 2.0])
def test_tied_coupling_variance_on_rebar_toy_is_as_documented(a):
    """The tie is not a uniform gain (module docstring of _control_variate): on REBAR's toy with
    eta = 1, lambda = 0.5, REBAR's variance is lower than the two-class route's at
    theta = sigmoid(2) and higher at theta = 1/2, each by more than 4 combined SE."""
    problem = rebar_toy()
    logits = torch.full_like(problem.logits, a)
    tied = _variance_with_se(_draws(REBAR(train_cv=False).double(), problem, logits, seed=3))
    old = _variance_with_se(_draws(TwoClassREBAR(train_cv=False).double(), problem, logits, 4))
    margin = 4 * (tied[1] ** 2 + old[1] ** 2) ** 0.5
    if a == 0.0:
        assert tied[0] > old[0] + margin, (tied, old)
    else:
        assert tied[0] < old[0] - margin, (tied, old)


# --- cost, value, training, finiteness ---------------------------------------------------------


@pytest.mark.parametrize(
    "make, rows",
    [
        (lambda: REBAR(n_samples=5), 10),
        (lambda: REBAR(n_samples=5, coupling="independent"), 15),
        (lambda: TwoClassREBAR(n_samples=5), 15),
        (lambda: RELAX(n_samples=5), 10),
        (lambda: RELAX(n_samples=5, rebar_term=False), 5),
    ],
    ids=["rebar-tied", "rebar-independent", "rebar-two-class", "relax-tied", "relax-bare"],
)
def test_cost_in_evaluations_and_value(make, rows):
    """f is called once, on 2S rows with the tie (b and sigma(z / lambda)), 3S without it,
    each of the Bernoulli shape (no two-class dim); the value is the mean of f(b)."""
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    seen = []

    def f(z):
        seen.append(z.detach())
        return ((z - 0.3) ** 2).sum(-1)

    est = make().double()
    out = est(f, logits, distribution="bernoulli", generator=torch.Generator().manual_seed(0))
    assert len(seen) == 1 and seen[0].shape == (rows, 4, 6)
    hard = seen[0][: est.n_samples]
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(out, f(hard).mean(0), rtol=1e-12)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def _check_cv_gradient(name, cls=REBAR):
    problem = bernoulli_problems()[1]
    assert_cv_grad_matches_finite_differences(
        lambda: _rebar(cls, n_samples=3),
        name,
        lambda est, logits: est(problem.f, logits, distribution="bernoulli",
                                generator=torch.Generator().manual_seed(9)),
        problem.logits.unsqueeze(0).expand(4, -1),
    )  # fmt: skip


@pytest.mark.parametrize("name", ["eta", "log_temperature"])
def test_cv_gradient_is_the_derivative_of_the_squared_estimate(name):
    """With the tie, c is evaluated once; phi.grad after surrogate.mean().backward() must still
    be d(sum g^2)/d phi, checked by central differences at the same random draws."""
    _check_cv_gradient(name)


@pytest.mark.parametrize("factor", [-1.0, 1.001])
def test_cv_gradient_check_rejects_a_misscaled_training_term(factor):
    with pytest.raises(AssertionError, match="central difference"):
        _check_cv_gradient("log_temperature", misscaled_cv_training(REBAR, factor))


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_for_extreme_logits_and_low_precision(dtype, coupling):
    logits = torch.tensor([[-30.0, -3.0, 0.0], [0.5, 4.0, 30.0]], dtype=dtype, requires_grad=True)
    c = torch.arange(6.0).reshape(2, 3).to(dtype)
    g = torch.Generator().manual_seed(0)
    for est in [
        REBAR(n_samples=8, coupling=coupling),
        RELAX(in_features=3, n_samples=8, coupling=coupling),
    ]:
        out = est(
            lambda z: ((z * c).sum(-1) - 1.0) ** 2, logits, distribution="bernoulli", generator=g
        )
        out.sum().backward()
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert torch.isfinite(logits.grad).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in est.parameters())
        logits.grad = None


def test_relax_net_sees_the_perturbed_logit_and_bad_coupling_is_named():
    """A user net gets a + L, (S, *logits.shape), on both routes (the two-class route passes
    z_1 - z_0)."""
    shapes = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, z):
            shapes.append(tuple(z.shape))
            return self.w * torch.tanh(z).sum(-1)

    logits = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    f = lambda z: ((z - 0.5) ** 2).sum(-1)  # noqa: E731
    for cls in (RELAX, TwoClassRELAX):
        shapes.clear()
        cls(net=Recorder(), n_samples=4).double()(f, logits, distribution="bernoulli")
        assert shapes and set(shapes) == {(4, 2, 3)}, (cls.__name__, shapes)
    for cls in (REBAR, RELAX):
        with pytest.raises(ValueError, match="coupling"):
            cls(coupling="shared")
