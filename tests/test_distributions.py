"""Relaxed distributions: Concrete, ExpConcrete, BinaryConcrete (Maddison et al., 2016).

Densities are checked against quadrature (they integrate to 1), against the seeds' formula
written out naively, and against torch's classes where those are accurate; samplers against
torch's samplers (two-sample z-tests, with negative controls) and against the exact CDF (KS).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.distributions import RelaxedBernoulli, RelaxedOneHotCategorical
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from discograd.distributions import BinaryConcrete, Concrete, ExpConcrete
from tests.stats import assert_mean_close, chi_square_pvalue, ks_pvalue

F64 = torch.float64
ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def two_sample_z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|mean(a) - mean(b)| / SE of the difference, per component; a, b: (n, ...)."""
    a, b = a.double(), b.double()
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)).abs() / se.clamp_min(1e-300)


# ---------------------------------------------------------------- the seeds' formulas, naively


def naive_concrete_log_pdf(x: np.ndarray, logits: np.ndarray, tau: float) -> float:
    """log of (n-1)! tau^(n-1) prod_k [pi_k x_k^(-tau-1) / sum_i pi_i x_i^(-tau)]."""
    pi = np.exp(logits - logits.max())
    pi = pi / pi.sum()
    n = len(x)
    denom = np.sum(pi * x ** (-tau))
    density = math.factorial(n - 1) * tau ** (n - 1) * np.prod(pi * x ** (-tau - 1) / denom)
    return float(np.log(density))


def naive_binary_log_pdf(y: float, logit: float, tau: float) -> float:
    """Maddison et al.: tau a y^(-tau-1) (1-y)^(-tau-1) / (a y^(-tau) + (1-y)^(-tau))^2."""
    a = math.exp(logit)
    num = tau * a * y ** (-tau - 1) * (1 - y) ** (-tau - 1)
    return math.log(num / (a * y**-tau + (1 - y) ** -tau) ** 2)


# ---------------------------------------------------------------- densities


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_concrete_density_integrates_to_one_on_the_1_simplex(tau):
    # K = 2: x = (x1, 1 - x1); the density is w.r.t. Lebesgue measure on the free coordinate x1.
    d = Concrete(tau, logits=torch.tensor([0.7, -0.4], dtype=F64))

    def pdf(x1: float) -> float:
        return float(d.log_prob(torch.tensor([x1, 1.0 - x1], dtype=F64)).exp())

    total, err = integrate.quad(pdf, 0.0, 1.0, limit=200)
    assert abs(total - 1.0) < 1e-6 + 2 * err, (total, err)


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_binary_concrete_density_integrates_to_one(tau):
    d = BinaryConcrete(tau, logits=torch.tensor(0.7, dtype=F64))

    def pdf(y: float) -> float:
        return float(d.log_prob(torch.tensor(y, dtype=F64)).exp())

    total, err = integrate.quad(pdf, 0.0, 1.0, limit=200)
    assert abs(total - 1.0) < 1e-6 + 2 * err, (total, err)


def test_density_quadrature_rejects_a_wrong_normalizer():
    """Negative control: the quadrature detects a dropped (n-1)! tau^(n-1) factor."""
    tau = 0.3
    d = Concrete(tau, logits=torch.tensor([0.7, -0.4], dtype=F64))

    def wrong(x1: float) -> float:
        lp = d.log_prob(torch.tensor([x1, 1.0 - x1], dtype=F64)) - math.log(tau)
        return float(lp.exp())

    total, _ = integrate.quad(wrong, 0.0, 1.0, limit=200)
    assert abs(total - 1.0) > 0.1


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.5])
def test_concrete_log_prob_matches_the_formula_and_torch(tau):
    logits = torch.tensor([[0.3, -1.2, 0.8, 0.0], [2.0, 0.1, -0.5, -2.0]], dtype=F64)
    d = Concrete(tau, logits=logits)
    x = d.sample((50,), generator=gen(0))
    ours = d.log_prob(x)
    naive = torch.tensor(
        [
            [naive_concrete_log_pdf(x[s, b].numpy(), logits[b].numpy(), tau) for b in range(2)]
            for s in range(50)
        ],
        dtype=F64,
    )
    theirs = RelaxedOneHotCategorical(torch.tensor(tau, dtype=F64), logits=logits).log_prob(x)
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # probs parameterization gives the same density
    torch.testing.assert_close(Concrete(tau, probs=logits.softmax(-1)).log_prob(x), ours)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.5])
def test_exp_concrete_log_prob_matches_torch_and_concrete(tau):
    logits = torch.tensor([[0.3, -1.2, 0.8, 0.0], [2.0, 0.1, -0.5, -2.0]], dtype=F64)
    e = ExpConcrete(tau, logits=logits)
    y = e.rsample((50,), generator=gen(1))
    theirs = ExpRelaxedCategorical(torch.tensor(tau, dtype=F64), logits=logits).log_prob(y)
    torch.testing.assert_close(e.log_prob(y), theirs, atol=1e-5, rtol=0)
    # change of variables x = exp(y): p_X(x) = p_Y(log x) / prod_k x_k
    c = Concrete(tau, logits=logits)
    torch.testing.assert_close(c.log_prob(y.exp()), e.log_prob(y) - y.sum(-1))
    # the same generator state gives the same point in both coordinates
    torch.testing.assert_close(c.rsample((50,), generator=gen(1)), y.exp())


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.5])
def test_binary_concrete_log_prob_matches_the_formula_and_torch(tau):
    logits = torch.tensor([-1.5, 0.0, 0.9], dtype=F64)
    d = BinaryConcrete(tau, logits=logits)
    y = d.sample((40,), generator=gen(2))
    naive = torch.tensor(
        [
            [naive_binary_log_pdf(float(y[s, b]), float(logits[b]), tau) for b in range(3)]
            for s in range(40)
        ],
        dtype=F64,
    )
    theirs = RelaxedBernoulli(torch.tensor(tau, dtype=F64), logits=logits).log_prob(y)
    torch.testing.assert_close(d.log_prob(y), naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(d.log_prob(y), theirs, atol=1e-5, rtol=0)
    # K = 2 Concrete with logits (a, 0) is the Binary Concrete with logit a
    pair = Concrete(tau, logits=torch.stack([logits, torch.zeros_like(logits)], -1))
    torch.testing.assert_close(pair.log_prob(torch.stack([y, 1 - y], -1)), d.log_prob(y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_concrete_log_prob_is_finite_and_accurate_at_low_temperature(dtype):
    """At tau = 0.01 coordinates underflow; torch's RelaxedOneHotCategorical gives NaN/-inf."""
    logits = torch.tensor([[0.3, -1.2, 0.8, 0.0, 1.1]], dtype=dtype).repeat(4, 1)
    tau = 0.01
    d = Concrete(tau, logits=logits)
    x = d.rsample((500,), generator=gen(3))
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all()
    assert (x > 0).all()
    # float32 evaluation agrees with float64 evaluation at the same (floored) point
    lp64 = Concrete(tau, logits=logits.double()).log_prob(x.double())
    torch.testing.assert_close(lp.double(), lp64, rtol=1e-4, atol=1e-3)
    # the reason for this class: torch's log_prob on torch's own samples is not finite
    torch.manual_seed(3)
    tau_t = torch.tensor(tau, dtype=dtype)
    ref = RelaxedOneHotCategorical(tau_t, logits=logits, validate_args=False)
    theirs = ref.log_prob(ref.rsample((500,)))
    assert not torch.isfinite(theirs).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_and_binary_concrete_log_prob_finite_at_low_temperature(dtype):
    logits = torch.tensor([0.3, -1.2, 0.8, 0.0, 1.1], dtype=dtype)
    e = ExpConcrete(0.01, logits=logits)
    assert torch.isfinite(e.log_prob(e.rsample((500,), generator=gen(4)))).all()
    b = BinaryConcrete(0.01, logits=logits)
    y = b.rsample((500,), generator=gen(5))
    assert ((y > 0) & (y < 1)).all()
    assert torch.isfinite(b.log_prob(y)).all()
    # at the boundaries and at large logits, where torch's RelaxedBernoulli overflows to -inf
    big = BinaryConcrete(0.5, logits=torch.tensor([100.0, -100.0], dtype=dtype))
    edge = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=dtype)
    assert torch.isfinite(big.log_prob(edge)).all()
    assert torch.isfinite(big.log_prob(big.sample((100,), generator=gen(6)))).all()


def test_torch_relaxed_bernoulli_overflows_where_binary_concrete_does_not():
    logits = torch.tensor([100.0])
    y = torch.tensor([0.3])
    assert torch.isfinite(BinaryConcrete(0.5, logits=logits).log_prob(y)).all()
    theirs = RelaxedBernoulli(torch.tensor(0.5), logits=logits).log_prob(y)
    if torch.isfinite(theirs).all():  # torch fixed it: nothing to show
        return
    assert torch.isneginf(theirs).any()


# ---------------------------------------------------------------- gradients


def test_rsample_is_differentiable_in_logits_and_temperature():
    logits = torch.randn(3, 4, dtype=F64, generator=gen(7)).requires_grad_(True)
    tau = torch.tensor([0.5, 1.0, 2.0], dtype=F64, requires_grad=True)

    def concrete(l, t):
        return Concrete(t, logits=l).rsample((2,), generator=gen(0))

    def exp_concrete(l, t):
        return ExpConcrete(t, logits=l).rsample((2,), generator=gen(0))

    def binary(l, t):
        return BinaryConcrete(t.unsqueeze(-1), logits=l).rsample((2,), generator=gen(0))

    for fn in (concrete, exp_concrete, binary):
        assert torch.autograd.gradcheck(fn, (logits, tau))


def test_log_prob_is_differentiable_in_logits_and_temperature():
    logits = torch.randn(3, 4, dtype=F64, generator=gen(8)).requires_grad_(True)
    tau = torch.tensor([0.5, 1.0, 2.0], dtype=F64, requires_grad=True)
    x = Concrete(tau.detach(), logits=logits.detach()).sample(generator=gen(9))
    y = BinaryConcrete(tau.detach().unsqueeze(-1), logits=logits.detach()).sample(generator=gen(9))
    assert torch.autograd.gradcheck(lambda l, t: Concrete(t, logits=l).log_prob(x), (logits, tau))
    assert torch.autograd.gradcheck(
        lambda l, t: ExpConcrete(t, logits=l).log_prob(x.log()), (logits, tau)
    )
    assert torch.autograd.gradcheck(
        lambda l, t: BinaryConcrete(t.unsqueeze(-1), logits=l).log_prob(y), (logits, tau)
    )


def test_gradients_are_finite_with_masks_and_tensor_temperature():
    inf = float("inf")
    logits = torch.tensor([[0.0, -inf, 1.0], [2.0, 0.5, -inf]], requires_grad=True)
    tau = torch.tensor([0.3, 0.05], requires_grad=True)
    for cls in (Concrete, ExpConcrete):
        x = cls(tau, logits=logits).rsample((64,), generator=gen(10))
        lp = cls(tau, logits=logits).log_prob(x.detach())
        gl, gt = torch.autograd.grad((x * torch.arange(3.0)).sum() + lp.sum(), (logits, tau))
        assert torch.isfinite(gl).all() and torch.isfinite(gt).all()
        assert torch.isfinite(lp).all()


# ---------------------------------------------------------------- limits and moments


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_temperature_limits(dtype):
    logits = torch.tensor([0.3, -1.2, 0.8, 0.0], dtype=dtype)
    cold = Concrete(1e-3, logits=logits).sample((2000,), generator=gen(11))
    assert cold.max(-1).values.mean() > 0.999
    hot = Concrete(1e4, logits=logits).sample((2000,), generator=gen(12))
    assert (hot - 0.25).abs().max() < 2e-3
    b_cold = BinaryConcrete(1e-3, logits=logits).sample((2000,), generator=gen(13))
    assert torch.minimum(b_cold, 1 - b_cold).mean() < 1e-3
    # rounding the cold samples gives Bernoulli(sigmoid(logit)) draws
    assert_mean_close((b_cold > 0.5).to(F64), torch.sigmoid(logits.double()))
    b_hot = BinaryConcrete(1e4, logits=logits).sample((2000,), generator=gen(14))
    assert (b_hot - 0.5).abs().max() < 2e-3


def test_cold_concrete_argmax_is_categorical():
    logits = torch.tensor([0.3, -1.2, 0.8, 0.0], dtype=F64)
    x = Concrete(0.01, logits=logits).sample((20000,), generator=gen(15))
    counts = np.bincount(x.argmax(-1).numpy(), minlength=4)
    assert chi_square_pvalue(counts, logits.softmax(-1).numpy()) > 1e-3


def test_concrete_moments_match_torch():
    """Means and second moments of Concrete and RelaxedOneHotCategorical samples agree (4 SE)."""
    logits = torch.tensor([0.3, -1.2, 0.8, 0.0], dtype=F64)
    n = 100_000
    ours = Concrete(0.5, logits=logits).sample((n,), generator=gen(16))
    torch.manual_seed(16)
    theirs = RelaxedOneHotCategorical(torch.tensor(0.5, dtype=F64), logits=logits).sample((n,))
    for a, b in ((ours, theirs), (ours**2, theirs**2)):
        assert two_sample_z(a, b).max() < 4
    # negative control: torch's samples at another temperature are told apart
    wrong = RelaxedOneHotCategorical(torch.tensor(0.7, dtype=F64), logits=logits).sample((n,))
    assert two_sample_z(ours, wrong).max() > 4


def test_binary_concrete_moments_match_torch_and_its_cdf():
    logit, tau, n = 0.6, 0.4, 100_000
    dist = BinaryConcrete(tau, logits=torch.tensor(logit, dtype=F64))
    ours = dist.sample((n,), generator=gen(17))
    torch.manual_seed(17)
    ref = RelaxedBernoulli(torch.tensor(tau, dtype=F64), logits=torch.tensor(logit, dtype=F64))
    theirs = ref.sample((n,))
    for a, b in ((ours, theirs), (ours**2, theirs**2)):
        assert two_sample_z(a, b).max() < 4
    # negative control: another temperature is told apart (by the second moment at least)
    wrong = RelaxedBernoulli(torch.tensor(0.5, dtype=F64), logits=torch.tensor(logit, dtype=F64))
    w = wrong.sample((n,))
    assert max(two_sample_z(ours, w).max(), two_sample_z(ours**2, w**2).max()) > 4

    def cdf(t: float):
        # P(Y <= y) = P(L <= tau logit(y) - a), L standard logistic
        def f(y):
            y = np.clip(y, 1e-300, 1 - 1e-16)
            return 1 / (1 + np.exp(-(t * (np.log(y) - np.log1p(-y)) - logit)))

        return f

    assert ks_pvalue(ours[:20000], cdf(tau)) > 1e-3
    assert ks_pvalue(ours[:20000], cdf(tau * 1.1)) < 1e-6  # negative control


# ---------------------------------------------------------------- shapes and API


def test_shapes_expand_and_support():
    logits = torch.randn(3, 4)
    tau = torch.tensor([[0.5], [2.0]])  # broadcasts with the batch shape (3,)
    d = Concrete(tau, logits=logits)
    assert d.batch_shape == (2, 3) and d.event_shape == (4,)
    x = d.rsample((5,))
    assert x.shape == (5, 2, 3, 4)
    assert d.log_prob(x).shape == (5, 2, 3)
    assert d.support.check(x).all()
    assert d.sample().shape == (2, 3, 4) and not d.sample().requires_grad
    big = d.expand((7, 2, 3))
    assert isinstance(big, Concrete) and big.batch_shape == (7, 2, 3)
    assert big.rsample((2,)).shape == (2, 7, 2, 3, 4)
    torch.testing.assert_close(big.log_prob(x[0]), d.log_prob(x[0]).expand(7, 2, 3))

    e = ExpConcrete(0.5, logits=logits)
    assert e.batch_shape == (3,) and e.event_shape == (4,)
    y = e.rsample((2, 5))
    assert y.shape == (2, 5, 3, 4)
    torch.testing.assert_close(y.logsumexp(-1), torch.zeros(2, 5, 3), atol=1e-5, rtol=0)
    assert e.expand((5, 3)).log_prob(y).shape == (2, 5, 3)
    assert e.support.check(y).all()

    b = BinaryConcrete(tau, probs=torch.full((3,), 0.3))
    assert b.batch_shape == (2, 3) and b.event_shape == ()
    z = b.rsample((4,))
    assert z.shape == (4, 2, 3) and b.support.check(z).all()
    assert b.expand((5, 2, 3)).sample().shape == (5, 2, 3)
    assert BinaryConcrete(1.0, logits=0.5).batch_shape == ()
    torch.testing.assert_close(b.logits, torch.full((2, 3), math.log(0.3 / 0.7)))

    for dist in (d, e, b):
        with pytest.raises(NotImplementedError):
            _ = dist.mean
        assert dist.has_rsample


def test_parameters_and_generator():
    logits = torch.tensor([0.2, -0.3, 1.0])
    d = Concrete(1.0, logits=logits)
    torch.testing.assert_close(d.probs, logits.softmax(-1))
    torch.testing.assert_close(Concrete(1.0, probs=d.probs).logits, d.logits)
    assert torch.equal(d.rsample((3,), generator=gen(5)), d.rsample((3,), generator=gen(5)))
    assert not torch.equal(d.rsample((3,), generator=gen(5)), d.rsample((3,), generator=gen(6)))
    b = BinaryConcrete(1.0, logits=logits)
    assert torch.equal(b.sample((3,), generator=gen(5)), b.sample((3,), generator=gen(5)))
    assert "temperature" in repr(d) and "logits" in repr(b)


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete, BinaryConcrete])
def test_bad_input_raises_value_error_naming_the_argument(cls):
    logits = torch.tensor([0.1, 0.2, 0.3])
    for bad_tau in (0.0, -1.0, float("nan"), torch.tensor([1.0, 0.0, 1.0])):
        with pytest.raises(ValueError, match="temperature"):
            cls(bad_tau, logits=logits)
    with pytest.raises(ValueError, match="temperature"):
        cls(torch.ones(2), logits=logits.expand(3, 3))  # does not broadcast with the batch
    with pytest.raises(ValueError, match="logits"):
        cls(1.0, logits=torch.tensor([0.1, float("nan"), 0.3]))
    with pytest.raises(ValueError, match="probs"):
        cls(1.0, probs=torch.tensor([0.2, -0.1, 0.9]))
    with pytest.raises(ValueError, match="logits or probs"):
        cls(1.0)
    with pytest.raises(ValueError, match="logits or probs"):
        cls(1.0, logits=logits, probs=logits.softmax(-1))
    if cls is not BinaryConcrete:
        with pytest.raises(ValueError, match="probs"):
            cls(1.0, probs=torch.tensor([0.2, 0.3, 0.3]))  # does not sum to 1
    else:
        with pytest.raises(ValueError, match="probs"):
            cls(1.0, probs=torch.tensor([0.2, 1.3]))


# ---------------------------------------------------------------- every dtype


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("tau", [1e-3, 1.0, 100.0])
def test_rsample_is_finite_in_every_dtype(dtype, tau):
    logits = torch.tensor([[-30.0, 0.0, 30.0, 1.0], [0.5, float("-inf"), 0.0, float("-inf")]])
    logits = logits.to(dtype)
    x = Concrete(tau, logits=logits).rsample((2000,), generator=gen(18))
    assert x.dtype == dtype and torch.isfinite(x).all() and (x > 0).all()
    atol = {torch.float16: 4e-3, torch.bfloat16: 3e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(x.float().sum(-1), torch.ones(2000, 2), atol=atol, rtol=0)
    y = ExpConcrete(tau, logits=logits).rsample((2000,), generator=gen(18))
    assert y.dtype == dtype and torch.isfinite(y).all()
    finite = logits[0]
    z = BinaryConcrete(tau, logits=finite).rsample((2000,), generator=gen(18))
    assert z.dtype == dtype and torch.isfinite(z).all() and ((z > 0) & (z < 1)).all()
    if dtype in (torch.float32, torch.float64):
        dist = Concrete(tau, logits=logits)
        assert torch.isfinite(dist.log_prob(x)).all()
        assert torch.isfinite(BinaryConcrete(tau, logits=finite).log_prob(z)).all()


# ---------------------------------------------------------------- large K, extreme temperatures


@pytest.mark.parametrize("tau", [0.01, 0.7, 1.0])
def test_large_k_samples_are_on_the_simplex_to_torch_tolerance(tau):
    """At K = 32000 in float32 the draws are as close to the simplex as torch's (|sum - 1| ~
    4e-7), so log_prob of its own sample passes torch's validation (1e-6). With
    torch.log_softmax the error reached 1e-5 (every seed failed at tau = 0.7); with
    scores - logsumexp(scores) it reached 1e-4 at tau = 0.01."""
    logits = torch.randn(16, 32000, generator=gen(5))
    d = Concrete(torch.tensor(tau), logits=logits, validate_args=True)
    e = ExpConcrete(tau, logits=logits)
    for seed in range(4):
        x = d.rsample(generator=gen(seed))
        assert (x.double().sum(-1) - 1).abs().max() < 1e-6
        d.log_prob(x)  # raises ValueError off the simplex
        y = e.rsample(generator=gen(seed))
        assert y.double().logsumexp(-1).abs().max() < 1e-6


def test_large_k_logits_are_accepted_under_validation():
    """Only the given parameter is validated: softmax(logits) at K = 32000 is off torch's 1e-6
    simplex tolerance by float32 rounding (torch's RelaxedOneHotCategorical then raises)."""
    logits = 3 * torch.randn(16, 32000, generator=gen(5))
    assert (logits.softmax(-1).double().sum(-1) - 1).abs().max() > 1e-6  # the premise
    d = Concrete(torch.tensor(0.7), logits=logits, validate_args=True)
    d.log_prob(d.rsample(generator=gen(0)))
    assert d._validate_args and d.expand((2, 16))._validate_args
    with pytest.raises(ValueError, match="Simplex"):  # validation still on for log_prob
        d.log_prob(torch.full((16, 32000), 1.0))


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete, BinaryConcrete])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tau", [1e-8, 1e5])
def test_number_temperature_is_not_rounded_to_half_precision(cls, dtype, tau):
    """1e-8 and 1e5 are 0 and inf in float16: a number is held in float32 instead, and the
    samples stay in the logits' dtype (a Python scalar is weak in torch's type promotion)."""
    logits = torch.randn(3, 4, generator=gen(19)).to(dtype)
    if cls is BinaryConcrete:
        logits = logits[:, 0]
    d = cls(tau, logits=logits)  # torch's validation of temperature > 0 on
    assert d.temperature.dtype == torch.float32
    assert float(d.temperature.flatten()[0]) == pytest.approx(tau, rel=1e-6)
    s = d.rsample((50,), generator=gen(20))
    assert s.dtype == dtype and torch.isfinite(s).all()
    assert d.expand((2,) + d.batch_shape).sample().dtype == dtype
    unchecked = cls(tau, logits=logits, validate_args=False)  # half samples: off by rounding
    assert torch.isfinite(unchecked.log_prob(s)).all()
    k = 4 if cls is not BinaryConcrete else 2
    if cls is Concrete:
        point = s.float()
    elif cls is ExpConcrete:
        point = s.float().exp()
    else:
        point = torch.stack([s.float(), 1 - s.float()], -1)
    if tau > 1:  # hot: at the centre, up to the rounding of the dtype
        torch.testing.assert_close(point, torch.full_like(point, 1 / k), atol=1e-2, rtol=0)
    else:  # cold: one-hot
        ones = torch.ones(point.shape[:-1])
        torch.testing.assert_close(point.max(-1).values, ones, atol=1e-2, rtol=0)


def test_temperature_dtype_follows_torch_promotion_and_unrepresentable_numbers_raise():
    half = torch.randn(3, 4, generator=gen(21)).half()
    # a floating-point tensor temperature joins the promotion, as in torch
    assert Concrete(torch.tensor(0.5), logits=half).rsample().dtype == torch.float32
    assert Concrete(torch.tensor(0.5).half(), logits=half).rsample().dtype == torch.float16
    assert BinaryConcrete(torch.tensor(0.5), logits=half[:, 0]).rsample().dtype == torch.float32
    # an integer tensor is weak, like a number: 100000 would be inf in float16
    d = ExpConcrete(torch.tensor(100000), logits=half)
    assert d.rsample().dtype == torch.float16 and (d.temperature == 100000.0).all()
    # a number that is 0 or inf even in the compute dtype is refused, not rounded
    for cls in (Concrete, ExpConcrete, BinaryConcrete):
        for tau in (1e-50, 1e39):
            with pytest.raises(ValueError, match="temperature"):
                cls(tau, logits=torch.zeros(3))
        # a float64 tensor (or float64 logits) carries it
        assert torch.isfinite(
            cls(torch.tensor(1e-50, dtype=F64), logits=torch.zeros(3)).sample()
        ).all()
        assert torch.isfinite(cls(1e39, logits=torch.zeros(3, dtype=F64)).sample()).all()
