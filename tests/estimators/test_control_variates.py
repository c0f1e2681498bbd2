"""ARM, DisARM, REBAR and RELAX: unbiasedness against enumeration (each with a negative control
that the same test rejects), the samples behind the surrogate's value, and the training of the
control variates (what it reaches, its gradient, and the variance it buys)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from discograd import estimators
from discograd.estimators import ARM, REBAR, RELAX, DisARM, Reinforce
from discograd.ops import gumbel_noise
from tests.finite_differences import (
    assert_cv_grad_matches_finite_differences,
    misscaled_cv_training,
)
from tests.problems import bernoulli_problems, categorical_problems, rebar_toy
from tests.stats import assert_mean_close, exact_grad, grad_draws, mean_is_close

BERNOULLI = bernoulli_problems()
CATEGORICAL = categorical_problems()
ALL = CATEGORICAL + BERNOULLI
# Negative controls run where their bias is known to be large: bern-1's single logit is
# positive, where sigma(a) = sigma(|a|) and the dropped REBAR term is small.
CONTROL_PROBLEMS = [p for p in ALL if p.name != "bern-1"]
N_DRAWS = 20000
ETA, TAU = 0.7, 0.3  # non-trivial fixed control-variate parameters


def _draws(est, problem, seed=1):
    g = torch.Generator().manual_seed(seed)
    return grad_draws(
        est, problem.f, problem.logits, N_DRAWS, distribution=problem.distribution, generator=g
    )


def _exact(problem):
    return exact_grad(problem.f, problem.logits, problem.distribution)[1]


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


# --- negative controls: each biased in a way the unbiasedness test must catch -----------------


class IndependentPartnerARM(ARM):
    """b~ from fresh noise instead of the antithetic 1 - u: the estimate halves in expectation."""

    def pair(self, alpha, n, generator):
        noise, b, _ = super().pair(alpha, n, generator)
        _, _, b_anti = super().pair(alpha, n, generator)
        return noise, b, b_anti


class SignedDisARM(DisARM):
    """sigma(a) in place of sigma(|a|): wrong wherever a < 0."""

    def weights(self, logits, noise, b, b_anti):
        return 0.5 * (1 - 2 * b_anti) * (b != b_anti).to(logits.dtype) * torch.sigmoid(logits)


class DroppedTermREBAR(REBAR):
    """z~ not reparameterized, which drops - eta grad f(sigma(z~)): biased by
    eta E[grad f(sigma(z~))]."""

    def perturb(self, theta, n, generator):
        z, hard, z_cond = super().perturb(theta, n, generator)
        return z, hard, z_cond.detach()


class ReusedZRELAX(RELAX):
    """z~ = z instead of a fresh draw from p(z | b): the correction terms cancel and the score
    term keeps c(z) grad log p(b), whose mean is not zero."""

    def perturb(self, theta, n, generator):
        z, hard, _ = super().perturb(theta, n, generator)
        return z, hard, z


# --- unbiasedness -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ARM, DisARM], ids=["arm", "disarm"])
@pytest.mark.parametrize("problem", BERNOULLI, ids=lambda p: p.name)
def test_arm_and_disarm_are_unbiased(cls, problem):
    assert_mean_close(_draws(cls(), problem), _exact(problem))


@pytest.mark.parametrize("cls", [IndependentPartnerARM, SignedDisARM], ids=["arm", "disarm"])
@pytest.mark.parametrize("problem", BERNOULLI[1:], ids=lambda p: p.name)
def test_arm_and_disarm_negative_controls_are_rejected(cls, problem):
    assert not mean_is_close(_draws(cls(), problem), _exact(problem))


def test_shifted_arm_weight_and_unconditional_rebar_are_no_controls():
    """Two tempting 'biased' variants are in fact unbiased, so they cannot serve as controls:
    b and b~ are exchangeable, so (u - 1/2) -> (u - 0.4) adds 0.1 (f(b~) - f(b)), of mean 0; and
    an independent z' in place of z~ makes the score term's extra coefficient independent of b
    (mean 0) while grad f(sigma(z')) still has mean grad E f(sigma(z))."""

    class ShiftedARM(ARM):
        def weights(self, logits, noise, b, b_anti):
            return 0.4 - torch.sigmoid(noise)

    class UnconditionalREBAR(REBAR):
        def perturb(self, theta, n, generator):
            z, hard, _ = super().perturb(theta, n, generator)
            return z, hard, theta + gumbel_noise(z.shape, generator=generator, dtype=z.dtype)

    problem = BERNOULLI[2]
    assert_mean_close(_draws(ShiftedARM(), problem), _exact(problem))
    assert_mean_close(_draws(_rebar(UnconditionalREBAR), problem), _exact(problem))


@pytest.mark.parametrize("problem", ALL, ids=lambda p: p.name)
def test_rebar_is_unbiased_at_fixed_cv_parameters(problem):
    assert_mean_close(_draws(_rebar(), problem), _exact(problem))


@pytest.mark.parametrize("problem", CONTROL_PROBLEMS, ids=lambda p: p.name)
def test_rebar_negative_control_is_rejected(problem):
    assert not mean_is_close(_draws(_rebar(DroppedTermREBAR), problem), _exact(problem))


@pytest.mark.parametrize("problem", ALL, ids=lambda p: p.name)
def test_relax_is_unbiased_at_fixed_cv_parameters(problem):
    assert_mean_close(_draws(_relax(problem), problem), _exact(problem))


@pytest.mark.parametrize("problem", CONTROL_PROBLEMS, ids=lambda p: p.name)
def test_relax_negative_control_is_rejected(problem):
    assert not mean_is_close(_draws(_relax(problem, ReusedZRELAX), problem), _exact(problem))


@pytest.mark.parametrize("problem", [CATEGORICAL[1], BERNOULLI[1]], ids=lambda p: p.name)
def test_relax_variants_are_unbiased(problem):
    """The default elementwise MLP without the REBAR term, and a user net with it."""
    _, exact = exact_grad(problem.f, problem.logits, problem.distribution)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the MLP's initial weights
        bare = RELAX(rebar_term=False, hidden=4).double()
    assert not hasattr(bare, "eta")
    assert_mean_close(_draws(bare, problem), exact)

    class SquareNet(nn.Module):  # (S, n, ...) -> (S, n)
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

        def forward(self, z):
            return self.w * torch.tanh(z).flatten(2).sum(-1) ** 2

    assert_mean_close(_draws(RELAX(net=SquareNet(), eta=ETA).double(), problem), exact)


# --- samples, values, errors ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ARM, DisARM], ids=["arm", "disarm"])
def test_arm_pairs_are_exact_bernoulli_samples_and_value_is_their_mean(cls):
    logits = torch.tensor([-2.0, 0.0, 0.7, 25.0, -25.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5], dtype=torch.float64, requires_grad=True)
    seen = []

    def f(z):
        seen.append(z.detach())
        return torch.sin((z * w).sum(-1))

    s = 4000
    out = cls(n_samples=s)(
        f, logits, distribution="bernoulli", generator=torch.Generator().manual_seed(0)
    )
    z = seen[0]
    assert z.shape == (2 * s, 5) and set(z.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(out, torch.sin((z * w).sum(-1)).mean(), rtol=1e-12)
    p = torch.sigmoid(logits.detach())
    assert_mean_close(z[:s], p)  # b
    assert_mean_close(z[s:], p)  # b~
    # f's parameters get the mean of the 2S pathwise gradients.
    (gw,) = torch.autograd.grad(out, w)
    (expected,) = torch.autograd.grad(torch.sin((z * w).sum(-1)).mean(), w)
    assert torch.allclose(gw, expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_arm_and_disarm_refuse_categorical(name):
    with pytest.raises(ValueError, match="distribution='categorical'"):
        estimators.get(name)(lambda z: z.sum((-1, -2)), torch.zeros(2, 3))


def test_registry_options_and_bad_input():
    assert {"arm", "disarm", "rebar", "relax"} <= set(estimators.available())
    assert estimators.get("relax").mode == "elementwise"
    with pytest.raises(ValueError, match="temperature"):
        estimators.get("rebar", temperature=0.0)
    with pytest.raises(ValueError, match="n_samples"):
        estimators.get("disarm", n_samples=0)
    with pytest.raises(ValueError, match="in_features"):
        RELAX(in_features=0)
    with pytest.raises(ValueError, match="not both"):
        RELAX(net=nn.Linear(3, 1), in_features=3)
    bad = RELAX(net=nn.Linear(3, 1))  # keeps a trailing 1: not (S, *out_shape)
    with pytest.raises(ValueError, match="net returned"):
        bad(lambda z: z.sum((-1, -2)), torch.zeros(2, 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_rebar_and_relax_stay_finite_with_masks_and_low_precision(dtype):
    logits = torch.tensor(
        [[0.3, float("-inf"), 1.0, -0.5], [2.0, 0.1, float("-inf"), -9.0]],
        dtype=dtype,
        requires_grad=True,
    )
    c = torch.arange(8.0).reshape(2, 4).to(dtype)
    seen = []

    def f(z):
        seen.append(z.detach())
        return ((z * c).sum(-1) ** 2).sum(-1)

    g = torch.Generator().manual_seed(0)
    for est in [REBAR(n_samples=8), RELAX(in_features=8, n_samples=8)]:
        seen.clear()
        out = est(f, logits, generator=g)
        out.backward()
        hard = seen[0][:8]
        assert torch.isfinite(out) and torch.isfinite(logits.grad).all()
        assert out.dtype == dtype  # f's dtype, as every estimator's (not the CV's float32)
        assert all(torch.isfinite(p.grad).all() for p in est.parameters())
        assert hard[:, 0, 1].abs().max() == 0 and hard[:, 1, 2].abs().max() == 0  # never masked
        assert torch.allclose(out.double(), f(hard).double().mean(), rtol=1e-2)  # value: f(b)
        logits.grad = None


# --- training the control variate ------------------------------------------------------------


def _f_with_parameter():
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    seen = []

    def f(z):
        seen.append(z.detach())
        return torch.cos((z * w).sum(-1)) + (z * w).sum(-1) ** 2

    return f, w, seen


@pytest.mark.parametrize(
    "make", [lambda: _rebar(), lambda: _relax(BERNOULLI[1])], ids=["rebar", "relax"]
)
def test_variance_training_leaves_logits_and_f_gradients_alone(make):
    logits0 = torch.tensor([[-0.4, 1.2, 0.3], [0.9, -1.5, 0.0]], dtype=torch.float64)
    grads = {}
    for train in (True, False):
        est = make()
        est.train_cv = train
        f, w, seen = _f_with_parameter()
        logits = logits0.clone().requires_grad_(True)
        out = est(f, logits, distribution="bernoulli", generator=torch.Generator().manual_seed(3))
        assert out.shape == (2,)
        out.mean().backward()
        hard = seen[0][: est.n_samples]
        assert torch.allclose(out, f(hard).mean(0), rtol=1e-12)  # value: MC mean of f(b)
        (expected_w,) = torch.autograd.grad(f(hard).mean(0).mean(), w)
        assert torch.allclose(w.grad, expected_w, rtol=1e-12)  # grad f(b) only
        cv_trained = any(p.grad is not None and p.grad.any() for p in est.parameters())
        assert cv_trained == train
        grads[train] = logits.grad
    assert torch.allclose(grads[True], grads[False], rtol=1e-12, atol=0)


def _check_cv_gradient(name, cls=REBAR):
    problem = CATEGORICAL[1]
    assert_cv_grad_matches_finite_differences(
        lambda: _rebar(cls, n_samples=3),
        name,
        lambda est, logits: est(problem.f, logits, generator=torch.Generator().manual_seed(9)),
        problem.logits.unsqueeze(0).expand(4, -1, -1),
    )


@pytest.mark.parametrize("name", ["eta", "log_temperature"])
def test_cv_gradient_is_the_derivative_of_the_squared_estimate(name):
    """phi.grad after surrogate.mean().backward() equals d(sum g^2)/d phi, checked by central
    differences at the same random draws."""
    _check_cv_gradient(name)


@pytest.mark.parametrize("factor", [-1.0, 1.001])
def test_cv_gradient_check_rejects_a_misscaled_training_term(factor):
    with pytest.raises(AssertionError, match="central difference"):
        _check_cv_gradient("eta", misscaled_cv_training(REBAR, factor))


def _variance_with_se(draws):
    """Sample variance of scalar draws and its standard error sqrt((m4 - var^2) / n)."""
    x = draws.double().flatten()
    d = x - x.mean()
    var = d.square().mean()
    return float(var), float(((d**4).mean() - var**2).clamp_min(0).sqrt() / x.numel() ** 0.5)


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_trained_control_variate_beats_reinforce_on_rebar_toy(name):
    """REBAR's toy E[(b - 0.45)^2] at theta = 0: train the CV parameters with Adam, then the
    logits gradient's variance must fall below REINFORCE's by more than 4 standard errors of
    each. REBAR can only mimic the missing baseline (~0.25) with a large eta and temperature,
    so it needs the larger learning rate."""
    problem = rebar_toy()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the MLP's initial weights
        est = (REBAR() if name == "rebar" else RELAX(hidden=16)).double()
    steps, lr = (400, 0.3) if name == "rebar" else (150, 0.05)
    opt = torch.optim.Adam(est.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        logits = problem.logits.expand(32, 1).clone().requires_grad_(True)
        opt.zero_grad()
        est(problem.f, logits, distribution="bernoulli", generator=g).mean().backward()
        opt.step()
    est.train_cv = False
    _, exact = exact_grad(problem.f, problem.logits, "bernoulli")
    cv = _draws(est, problem, seed=2)
    base = _draws(Reinforce(), problem, seed=2)
    assert_mean_close(cv, exact)  # still unbiased after training
    (v_cv, se_cv), (v_base, se_base) = _variance_with_se(cv), _variance_with_se(base)
    assert v_cv + 4 * se_cv < v_base - 4 * se_base, (v_cv, se_cv, v_base, se_base)
    assert v_cv < 0.7 * v_base
