"""The estimator interface: registry, errors, surrogate semantics, and the core estimators
(exact, reinforce with baselines, reparam) against enumeration and closed forms."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from discograd import estimators
from discograd.estimators import Exact, Reinforce
from tests.problems import bernoulli_problems, categorical_problems
from tests.stats import assert_mean_close, exact_grad, grad_draws, mean_is_close

ALL_PROBLEMS = categorical_problems() + bernoulli_problems()


def test_registry_lists_core_estimators_and_builds_them():
    names = estimators.available()
    for name in ["exact", "reinforce", "st", "gumbel-softmax", "st-gumbel-softmax", "reparam"]:
        assert name in names
        est = estimators.get(name)
        assert isinstance(est, estimators.Estimator) and isinstance(est, nn.Module)
        assert est.name == name
    assert names == sorted(names)


def test_every_registered_estimator_documents_itself():
    for name in estimators.available():
        cls = type(estimators.get(name))
        module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
        assert len(module_doc) > 100, f"{name}: module docstring should give the formula"
        assert isinstance(cls.unbiased, bool) and isinstance(cls.compilable, bool)
        assert cls.distributions, name


def _documented_evaluations(text: str, s: int, k: int, n: int) -> int:
    """The leading expression of an ``evaluations`` string ("3S (...)", "S + 1", "K^N (...)")
    at S = s, K = k classes, N = n rows."""
    head = text.split(" (")[0]
    if head == "K^N":
        return k**n
    terms = head.split(" + ")
    return sum(int(t[:-1] or 1) * s if t.endswith("S") else int(t) for t in terms)


def test_the_documented_cost_is_the_counted_cost():
    # Samples f is evaluated at per call, counted, against each class's `evaluations` (its
    # first form: categorical rows, default options), at S = 3 where n_samples exists.
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for name in estimators.available():
        cls = type(estimators.get(name))
        if "categorical" not in cls.distributions:
            continue
        takes_s = "n_samples" in inspect.signature(cls.__init__).parameters
        est = estimators.get(name, n_samples=3) if takes_s else estimators.get(name)
        counted: list = []

        def f(z, counted=counted):
            counted.append(z.shape[0])
            return (z * torch.arange(3.0)).sum((-1, -2))

        est(f, logits, generator=torch.Generator().manual_seed(1)).mean().backward()
        want = _documented_evaluations(cls.evaluations, 3 if takes_s else 1, 3, 2)
        if name == "exact":
            want += 1  # the probe at the mode, documented in the parenthesis
        assert sum(counted) == want, (name, cls.evaluations, counted)


def test_get_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        estimators.get("nope")
    with pytest.raises(ValueError, match="no option 'tauu'"):
        estimators.get("gumbel-softmax", tauu=1.0)
    with pytest.raises(ValueError, match="no option 'self'"):  # was a TypeError from Python
        estimators.get("gumbel-softmax", self=1.0)
    with pytest.raises(ValueError, match="tau"):
        estimators.get("gumbel-softmax", tau=0.0)
    with pytest.raises(ValueError, match="n_samples"):
        estimators.get("reinforce", n_samples=0)
    with pytest.raises(ValueError, match="baseline"):
        estimators.get("reinforce", baseline="median")
    assert estimators.get("ST_Gumbel_Softmax").name == "st-gumbel-softmax"


def test_unsupported_distribution_and_bad_f_are_clear_errors():
    logits = torch.zeros(3, 4)
    normal = torch.distributions.Normal(torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="does not support distribution='distribution'"):
        estimators.get("st")(lambda z: z.sum(-1), normal)
    with pytest.raises(ValueError, match="does not support distribution='categorical'"):
        estimators.get("reparam")(lambda z: z.sum(-1), logits)
    with pytest.raises(ValueError, match="distribution must be"):
        estimators.get("reinforce")(lambda z: z.sum(-1), logits, distribution="poisson")
    # f dropping the sample dimension, or returning a non-prefix shape
    with pytest.raises(ValueError, match="returned shape"):
        estimators.get("reinforce")(lambda z: z.sum((0, -1)), logits)
    with pytest.raises(ValueError, match="returned shape"):
        estimators.get("reinforce")(lambda z: z.sum(-2), logits)
    with pytest.raises(TypeError, match="f must be callable"):
        estimators.get("reinforce")(3.0, logits)
    with pytest.raises(ValueError, match="NaN"):
        estimators.get("reinforce")(lambda z: z.sum(-1), torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="masked"):
        estimators.get("st")(lambda z: z.sum(-1), torch.full((2, 3), float("-inf")))


def test_exact_matches_hand_computation():
    logits = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    value = Exact()(lambda z: (z * c).sum((-1, -2)) ** 2, logits)
    p = torch.softmax(logits, -1)[0]
    manual = (p * c**2).sum()
    assert torch.allclose(value, manual)
    (g,) = torch.autograd.grad(value, logits)
    (g_manual,) = torch.autograd.grad(manual, logits)
    assert torch.allclose(g, g_manual)


def test_exact_keeps_batch_dims_and_refuses_large_spaces():
    logits = torch.randn(5, 3, 4, dtype=torch.float64)  # 5 independent examples of 3 x 4
    f = lambda z: (z[..., 0] * z[..., 1:].sum(-1)).sum(-1)  # noqa: E731  (S, 5)
    batched = Exact()(f, logits)
    assert batched.shape == (5,)
    for i in range(5):
        assert torch.allclose(batched[i], Exact(batch_dims=0)(lambda z: f(z), logits[i]))
    with pytest.raises(ValueError, match="max_configurations"):
        Exact(max_configurations=10)(lambda z: z.sum((-1, -2)), torch.zeros(3, 4))
    # The probe for the batch dims: f once at the most likely configuration, no random draw
    # (torch.compile traces it; a private generator was a graph break).
    seen, state = [], torch.get_rng_state()
    Exact()(lambda z: seen.append(z) or f(z), logits)
    assert torch.equal(seen[0], torch.nn.functional.one_hot(logits.argmax(-1), 4)[None].double())
    assert torch.equal(state, torch.get_rng_state())
    bern = torch.tensor([[-1.0, 2.0], [0.5, -0.2]])
    seen.clear()
    Exact()(lambda z: seen.append(z) or z.sum(-1), bern, distribution="bernoulli")
    assert torch.equal(seen[0], (bern > 0).float()[None])


def test_masked_categories_are_never_sampled_and_gradients_stay_finite():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    seen = []

    def f(z):
        seen.append(z.detach())
        return (z * torch.arange(4.0)).sum((-1, -2))

    for name in ["reinforce", "st", "st-gumbel-softmax", "gumbel-softmax", "exact"]:
        opts = {"n_samples": 500} if name in ("reinforce", "st") else {}
        out = estimators.get(name, **opts)(f, logits, generator=g)
        (grad,) = torch.autograd.grad(out.sum(), logits)
        assert torch.isfinite(grad).all(), name
        if name == "exact":  # enumerates the masked configurations too, with probability 0
            seen.pop()
            p = torch.softmax(logits.detach(), -1)
            assert torch.allclose(out, (p * torch.arange(4.0)).sum())
    draws = torch.cat([s.reshape(-1, 4) for s in seen])
    assert draws[:, 1].max() < 1e-6 and draws[:, 3].max() < 1e-6


def _draws_and_exact(est, problem):
    """40,000 gradient draws of ``est`` on ``problem`` (seed 11), and the exact gradient: the
    unbiasedness test and its negative control go through the same measurement."""
    _, exact = exact_grad(problem.f, problem.logits, problem.distribution)
    g = torch.Generator().manual_seed(11)
    draws = grad_draws(
        est, problem.f, problem.logits, 40000, distribution=problem.distribution, generator=g
    )
    return draws, exact


@pytest.mark.parametrize("problem", ALL_PROBLEMS, ids=lambda p: p.name)
def test_reinforce_is_unbiased(problem):
    assert_mean_close(*_draws_and_exact(Reinforce(), problem))


class _SampleDependentBaseline(Reinforce):
    """Negative control: the baseline is f at the sample itself times 1/2, which biases the
    gradient by -1/2 E[f grad log q]."""

    def estimate(self, f, family, generator):
        from discograd.estimators.base import evaluate, score_surrogate, sum_rows

        z = family.sample(self.n_samples, generator)
        fz = evaluate(f, z, family)
        log_q = sum_rows(family.log_prob(z), fz.dim() - 1)
        return score_surrogate(fz, log_q, 0.5 * fz.detach()).mean(0)


@pytest.mark.parametrize("problem", ALL_PROBLEMS[1:4], ids=lambda p: p.name)
def test_reinforce_negative_control_is_rejected(problem):
    assert not mean_is_close(*_draws_and_exact(_SampleDependentBaseline(), problem))


def test_ema_baseline_is_unbiased_and_lowers_variance():
    problem = categorical_problems()[1]
    _, exact = exact_grad(problem.f, problem.logits)
    est = Reinforce(baseline="ema")
    g = torch.Generator().manual_seed(3)
    grad_draws(est, problem.f, problem.logits, 2000, generator=g)  # warm the moving average
    assert bool(est.baseline.initialized)
    with_b = grad_draws(est.eval(), problem.f, problem.logits, 40000, generator=g)
    without = grad_draws(Reinforce(), problem.f, problem.logits, 40000, generator=g)
    assert_mean_close(with_b, exact)
    assert with_b.var(0).sum() < 0.8 * without.var(0).sum()


def test_network_baseline_is_trained_through_the_surrogate():
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    est = Reinforce(baseline=net)
    logits = torch.randn(64, 4)
    target = torch.arange(4.0) * 3 + 5  # f has a large offset a baseline should learn
    f = lambda z: (z * target).sum(-1)  # noqa: E731
    opt = torch.optim.Adam(est.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        out = est(f, logits, generator=g)
        out.mean().backward()
        opt.step()
        with torch.no_grad():
            b = net(logits).squeeze(-1)
            losses.append(float(((out.detach() - b) ** 2).mean()))
    assert net.weight.grad is not None
    # The best any baseline can do is the conditional variance of f given the logits.
    p = torch.softmax(logits, -1)
    floor = float(((p * target**2).sum(-1) - (p * target).sum(-1) ** 2).mean())
    final = sum(losses[-50:]) / 50
    assert final < 1.3 * floor < 0.2 * sum(losses[:10]) / 10


def test_surrogate_value_is_the_monte_carlo_mean_and_f_params_get_their_gradient():
    logits = torch.randn(3, 5, dtype=torch.float64)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    recorded = []

    def f(z):
        recorded.append(z.detach())
        return scale * (z * torch.arange(5.0, dtype=torch.float64)).sum((-1, -2))

    g = torch.Generator().manual_seed(0)
    for name, opts in [
        ("reinforce", {"n_samples": 7}),
        ("st", {"n_samples": 3}),
        ("gumbel-softmax", {"n_samples": 4}),
    ]:
        recorded.clear()
        out = estimators.get(name, **opts)(f, logits, generator=g)
        z = recorded[-1]
        expected = (2.0 * (z * torch.arange(5.0, dtype=torch.float64)).sum((-1, -2))).mean()
        assert torch.allclose(out, expected), name
        (gs,) = torch.autograd.grad(out, scale)
        assert torch.allclose(gs, expected / 2.0), name


def test_generator_makes_estimates_reproducible_and_leaves_global_rng_alone():
    logits = torch.randn(4, 6, requires_grad=True)
    f = lambda z: (z * torch.arange(6.0)).sum(-1) ** 2  # noqa: E731
    normal = torch.distributions.Normal(torch.zeros(3), 1.0)
    for name in ["reinforce", "st", "gumbel-softmax", "st-gumbel-softmax"]:
        a = estimators.get(name)(f, logits, generator=torch.Generator().manual_seed(5))
        b = estimators.get(name)(f, logits, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b), name
    state = torch.get_rng_state()
    reparam = estimators.get("reparam")
    a = reparam(lambda z: z**2, normal, generator=torch.Generator().manual_seed(1))
    b = reparam(lambda z: z**2, normal, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", ["reinforce", "reparam"])
def test_seeds_gaussian_example_gradient(name):
    """min over theta E[z^2], z ~ N(a theta + b, 1): d/dtheta = 2 a (a theta + b) for both."""
    a, b, theta0 = 1.5, -0.5, 0.8
    n = 200000
    theta = torch.full((n,), theta0, dtype=torch.float64, requires_grad=True)
    dist = torch.distributions.Normal(a * theta + b, 1.0)
    est = estimators.get(name)
    out = est(lambda z: z**2, dist, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad(out.sum(), theta)
    assert_mean_close(grad.unsqueeze(-1), torch.tensor([2 * a * (a * theta0 + b)]))
    # the variance gap the seeds point at: the pathwise estimator is far less noisy here
    if name == "reparam":
        assert grad.var() < 20.0


def test_st_and_relaxations_handle_bernoulli_with_batch():
    logits = torch.randn(6, 5, requires_grad=True)
    f = lambda z: ((z - 0.3) ** 2).sum(-1)  # noqa: E731  per-example loss (S, 6)
    for name in ["st", "gumbel-softmax", "st-gumbel-softmax", "reinforce", "exact"]:
        out = estimators.get(name)(f, logits, distribution="bernoulli")
        assert out.shape == (6,), name
        (grad,) = torch.autograd.grad(out.sum(), logits)
        assert torch.isfinite(grad).all()
