"""Property tests: every public op, distribution and estimator on random shapes, dims, dtypes,
logits in [-1e4, 1e4] with -inf masks, and temperatures in [1e-3, 1e3].

Each property is a statement that must hold for EVERY input of the strategy (no statistics):
samples are finite and in their support, one-hots are exact, gradients are finite. Hypothesis
runs derandomized without an example database, so CI sees the same examples every run.
"""

from __future__ import annotations

import math
import os
from typing import Callable, List, Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from discograd import estimators
from discograd.distributions import BinaryConcrete, Concrete, ExpConcrete
from discograd.ops import (
    gumbel_max,
    gumbel_noise,
    gumbel_softmax,
    gumbel_topk,
    relaxed_topk,
    straight_through,
)

HALF = (torch.float16, torch.bfloat16)
FULL = (torch.float32, torch.float64)
DTYPES = HALF + FULL


# CI runs each property on a fixed, derandomized set of examples; a deeper local search:
# DISCOGRAD_PROPERTY_SCALE=20 DISCOGRAD_PROPERTY_RANDOM=1 pytest tests/test_properties.py
SCALE = int(os.environ.get("DISCOGRAD_PROPERTY_SCALE", "1"))
RANDOM = os.environ.get("DISCOGRAD_PROPERTY_RANDOM", "") not in ("", "0")


def props(n: int) -> settings:
    """Deterministic, database-free hypothesis settings with ``n`` examples."""
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------------------- strategies

# Extremes and ties are where numerics break, so they are drawn on purpose next to the range.
FINITE = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
    st.sampled_from([-1e4, 1e4, 0.0, -1.0, 1.0]),
)
LOGIT = st.one_of(FINITE, FINITE, st.just(-math.inf))
TAU = st.one_of(st.floats(1e-3, 1e3), st.sampled_from([1e-3, 1e3, 1.0]))
SEED = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unmask_dead_rows(x: Tensor, dim: int) -> Tensor:
    """Give every fully masked row along ``dim`` a finite first category (logit 0)."""
    x = x.movedim(dim, -1).clone()
    dead = torch.isneginf(x).all(-1)
    x[..., 0] = torch.where(dead, torch.zeros_like(x[..., 0]), x[..., 0])
    return x.movedim(-1, dim)


@st.composite
def shapes(draw, min_dims: int = 1, max_dims: int = 3, max_size: int = 4) -> Tuple[int, ...]:
    n = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.lists(st.integers(1, max_size), min_size=n, max_size=n)))


@st.composite
def tensors(draw, shape: Tuple[int, ...], elements=LOGIT, dtype=torch.float64) -> Tensor:
    n = math.prod(shape)
    values = draw(st.lists(elements, min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)


@st.composite
def logits_cases(draw, dtypes=DTYPES, any_dim: bool = True, masks: bool = True, max_dims=3):
    """(logits, dim): 1-3 dims, at least one unmasked category in every row along dim."""
    shape = draw(shapes(max_dims=max_dims))
    dim = draw(st.integers(-len(shape), len(shape) - 1)) if any_dim else -1
    x = draw(tensors(shape, LOGIT if masks else FINITE))
    x = unmask_dead_rows(x, dim)
    return x.to(draw(st.sampled_from(dtypes))), dim


def batch_shape(logits: Tensor, dim: int) -> Tuple[int, ...]:
    d = dim % logits.dim()
    return tuple(logits.shape[:d] + logits.shape[d + 1 :])


@st.composite
def taus(draw, batch: Tuple[int, ...], dtype: torch.dtype):
    """A float, a 0-dim tensor or a tensor of the batch shape; tensors require grad."""
    kind = draw(st.sampled_from(["float", "scalar", "batch"]))
    if kind == "float":
        return draw(TAU)
    shape = () if kind == "scalar" else batch
    t = draw(tensors(shape, TAU, dtype=torch.float64))
    return t.to(dtype).requires_grad_(True)


def tol(dtype: torch.dtype, terms: int) -> float:
    """Rounding allowance for a sum of ``terms`` values in [0, 1] rounded to ``dtype``."""
    return max(terms, 2) * torch.finfo(dtype).eps


def weights_like(x: Tensor, seed: int) -> Tensor:
    """Fixed random cotangent for backward passes (float32, so half inputs see real work)."""
    return torch.randn(x.shape, generator=gen(seed + 1), dtype=torch.float32)


def assert_finite(x: Optional[Tensor], what: str) -> None:
    assert x is not None, f"{what} is None"
    bad = ~torch.isfinite(x)
    assert not bad.any(), f"{what} has {int(bad.sum())} non-finite entries: {x}"


def weighted(y: Tensor, seed: int) -> Tensor:
    return (y.float() * weights_like(y, seed)).sum()


def backward(y: Tensor, seed: int) -> None:
    weighted(y, seed).backward()


def check_tau_grad(loss: Callable[[Tensor, Tensor], Tensor], logits: Tensor, tau, grad) -> None:
    """d/dtau is finite; in half precision it may overflow (to +-inf, or NaN where a broadcast
    tau sums overflowed partials of both signs), but only where the exact gradient is beyond
    the dtype's range, which its float32 twin (same noise: half inputs draw in float32) shows.
    ``loss(logits, tau)`` recomputes the scalar that was differentiated."""
    if not isinstance(tau, Tensor):
        return
    assert grad is not None
    if logits.dtype in FULL:
        assert_finite(grad, "d/dtau")
        return
    twin = tau.detach().float().requires_grad_(True)
    loss(logits.detach().float(), twin).backward()
    overflow = ~torch.isfinite(grad)
    limit = torch.finfo(logits.dtype).max / 4
    assert (twin.grad.abs()[overflow] > limit).all(), (
        f"d/dtau overflowed where float32 gives {twin.grad[overflow]}"
    )


# ------------------------------------------------------------------------------------- ops


@props(60)
@given(shape=shapes(max_dims=3, max_size=6), dtype=st.sampled_from(DTYPES), seed=SEED)
def test_gumbel_noise_is_finite(shape, dtype, seed):
    g = gumbel_noise(shape, generator=gen(seed), dtype=dtype)
    assert g.shape == shape and g.dtype == dtype
    assert_finite(g, "gumbel_noise")
    like = gumbel_noise(torch.empty(shape, dtype=dtype), generator=gen(seed))
    assert like.shape == shape and like.dtype == dtype
    assert_finite(like, "gumbel_noise(tensor)")


@props(80)
@given(case=logits_cases(), seed=SEED)
def test_gumbel_max_draws_unmasked_in_range_and_exact_one_hots(case, seed):
    logits, dim = case
    index = gumbel_max(logits, dim, generator=gen(seed))
    assert index.dtype == torch.int64 and index.shape == batch_shape(logits, dim)
    k = logits.shape[dim]
    assert ((index >= 0) & (index < k)).all()
    picked = logits.gather(dim, index.unsqueeze(dim))
    assert not torch.isneginf(picked).any(), "a masked category was drawn"

    one_hot = gumbel_max(logits, dim, generator=gen(seed), one_hot=True)
    assert one_hot.dtype == logits.dtype and one_hot.shape == logits.shape
    assert ((one_hot == 0) | (one_hot == 1)).all()
    assert (one_hot.sum(dim) == 1).all(), "one-hot rows must sum to exactly 1"
    assert torch.equal(one_hot.argmax(dim), index), "same generator state, same draw"


@props(100)
@given(case=logits_cases(), hard=st.booleans(), seed=SEED, data=st.data())
def test_gumbel_softmax_is_a_finite_point_of_the_simplex_with_finite_gradients(
    case, hard, seed, data
):
    logits, dim = case
    tau = data.draw(taus(batch_shape(logits, dim), logits.dtype), label="tau")

    def sample(x: Tensor, t) -> Tensor:
        return gumbel_softmax(x, t, hard=hard, dim=dim, generator=gen(seed))

    leaf = logits.clone().requires_grad_(True)
    y = sample(leaf, tau)
    assert y.shape == logits.shape and y.dtype == logits.dtype
    assert_finite(y, "gumbel_softmax")
    assert ((y >= 0) & (y <= 1)).all()
    assert torch.isneginf(logits).le(y == 0).all(), "masked categories must get exactly 0"
    total = y.double().sum(dim)
    if hard:
        assert ((y == 0) | (y == 1)).all() and (total == 1).all(), "hard must be exactly one-hot"
    else:
        err = (total - 1).abs().max().item()
        assert err <= tol(logits.dtype, logits.shape[dim]), f"sum off by {err}"
    backward(y, seed)
    assert_finite(leaf.grad, "d/dlogits")
    check_tau_grad(lambda x, t: weighted(sample(x, t), seed), logits, tau, getattr(tau, "grad", 0))


@st.composite
def topk_cases(draw, dtypes=DTYPES):
    logits, dim = draw(logits_cases(dtypes))
    unmasked = int(torch.isfinite(logits).sum(dim).min())
    return logits, dim, draw(st.integers(1, unmasked))


@props(60)
@given(case=topk_cases(), seed=SEED)
def test_gumbel_topk_draws_distinct_unmasked_categories(case, seed):
    logits, dim, k = case
    idx = gumbel_topk(logits, k, dim, generator=gen(seed))
    assert idx.dtype == torch.int64 and idx.shape[dim] == k
    assert ((idx >= 0) & (idx < logits.shape[dim])).all()
    assert not torch.isneginf(logits.gather(dim, idx)).any(), "a masked category was drawn"
    rows = idx.movedim(dim, -1).reshape(-1, k)
    for row in rows:
        assert len(set(row.tolist())) == k, f"repeated category in {row.tolist()}"


@props(80)
@given(case=topk_cases(), hard=st.booleans(), seed=SEED, data=st.data())
def test_relaxed_topk_is_finite_sums_to_k_and_has_finite_gradients(case, hard, seed, data):
    logits, dim, k = case
    tau = data.draw(taus(batch_shape(logits, dim), logits.dtype), label="tau")

    def sample(x: Tensor, t) -> Tensor:
        return relaxed_topk(x, k, t, hard=hard, dim=dim, generator=gen(seed))

    leaf = logits.clone().requires_grad_(True)
    y = sample(leaf, tau)
    assert y.shape == logits.shape and y.dtype == logits.dtype
    assert_finite(y, "relaxed_topk")
    assert (y >= 0).all()
    total = y.double().sum(dim)
    if hard:
        assert ((y == 0) | (y == 1)).all() and (total == k).all(), "hard must be exactly k-hot"
        assert not (torch.isneginf(logits) & (y == 1)).any(), "hard picked a masked category"
    else:
        err = (total - k).abs().max().item()
        assert err <= k * tol(logits.dtype, logits.shape[dim]), f"sum off k by {err}"
    backward(y, seed)
    assert_finite(leaf.grad, "d/dlogits")
    check_tau_grad(lambda x, t: weighted(sample(x, t), seed), logits, tau, getattr(tau, "grad", 0))


@props(40)
@given(shape=shapes(), dtype=st.sampled_from(DTYPES), seed=SEED)
def test_straight_through_is_hard_forward_identity_backward(shape, dtype, seed):
    g = gen(seed)
    hard = (torch.rand(shape, generator=g) < 0.5).to(dtype)
    soft = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    out = straight_through(hard, soft)
    assert out.dtype == dtype and torch.equal(out, hard)
    w = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    (out * w).sum().backward()
    assert torch.equal(soft.grad, w)


# --------------------------------------------------------------------------- distributions


@st.composite
def concrete_cases(draw, dtypes=DTYPES):
    logits, _ = draw(logits_cases(dtypes, any_dim=False))
    tau = draw(taus(tuple(logits.shape[:-1]), logits.dtype))
    sample_shape = draw(st.sampled_from([(), (2,)]))
    return logits, tau, sample_shape


def check_gradients(
    loss: Callable[[Tensor, object], Tensor], logits: Tensor, tau, of_logits: bool = True
) -> None:
    """Backpropagate ``loss(logits, tau)`` from fresh leaves; the gradients must be finite
    (d/dtau as in :func:`check_tau_grad`)."""
    leaf = logits.detach().clone().requires_grad_(of_logits)
    t = tau.detach().clone().requires_grad_(True) if isinstance(tau, Tensor) else tau
    out = loss(leaf, t)
    if not out.requires_grad:
        return
    out.backward()
    if of_logits:
        assert_finite(leaf.grad, "d/dlogits")
    check_tau_grad(loss, logits, t, getattr(t, "grad", 0))


@props(80)
@given(case=concrete_cases(), use_probs=st.booleans(), seed=SEED)
def test_concrete_samples_lie_on_the_simplex_with_finite_density_and_gradients(
    case, use_probs, seed
):
    logits, tau, sample_shape = case
    dtype = logits.dtype
    validate = dtype in FULL  # half-precision samples are off torch's 1e-6 simplex (documented)

    def dist(x: Tensor, t) -> Concrete:
        if use_probs:  # probs may underflow to 0 in half precision: a masked category
            probs = torch.softmax(x.detach().float(), -1).to(x.dtype)
            return Concrete(t, probs=probs, validate_args=validate)
        return Concrete(t, logits=x, validate_args=validate)

    d = dist(logits, tau)
    x = d.sample(sample_shape, generator=gen(seed))
    assert x.dtype == dtype
    assert x.shape == torch.Size(sample_shape) + d.batch_shape + logits.shape[-1:]
    assert_finite(x, "Concrete.rsample")
    assert ((x >= 0) & (x <= 1)).all()
    err = (x.double().sum(-1) - 1).abs().max().item()
    assert err <= tol(dtype, logits.shape[-1]), f"off the simplex by {err}"
    if validate:
        assert d.support.check(x).all()
    assert_finite(d.log_prob(x), "Concrete.log_prob(own sample)")

    def pathwise(x: Tensor, t) -> Tensor:
        return weighted(dist(x, t).rsample(sample_shape, generator=gen(seed)), seed)

    def density(x: Tensor, t) -> Tensor:  # through the sample and the parameters: a KL term
        d = dist(x, t)
        y = d.rsample(sample_shape, generator=gen(seed))
        # In half precision d log p / d x_k ~ 1 / x_k overflows for x_k < 2^-16 in the sample
        # tensor itself (inf - inf = NaN downstream): pathwise densities need ExpConcrete there,
        # and only the parameters' gradient at a fixed point is checked.
        return d.log_prob(y if validate else y.detach()).float().sum()

    # Gradients through probs (d log p / dp = 1/p) may overflow for tiny p: that path is
    # checked with zero probabilities in test_zero_probabilities_have_finite_gradients.
    check_gradients(pathwise, logits, tau, of_logits=not use_probs)
    check_gradients(density, logits, tau, of_logits=not use_probs)


@props(60)
@given(case=concrete_cases(), seed=SEED)
def test_exp_concrete_samples_are_log_simplex_points_with_finite_density_and_gradients(case, seed):
    logits, tau, sample_shape = case
    dtype = logits.dtype
    validate = dtype in FULL
    d = ExpConcrete(tau, logits=logits, validate_args=validate)
    y = d.sample(sample_shape, generator=gen(seed))
    assert y.dtype == dtype
    assert_finite(y, "ExpConcrete.rsample")
    assert (y <= 0).all(), "log-probabilities of a simplex point are <= 0"
    err = y.double().logsumexp(-1).abs().max().item()
    assert err <= tol(dtype, logits.shape[-1]), f"logsumexp off 0 by {err}"
    assert_finite(d.log_prob(y), "ExpConcrete.log_prob(own sample)")

    def density(x: Tensor, t) -> Tensor:
        d = ExpConcrete(t, logits=x, validate_args=validate)
        y = d.rsample(sample_shape, generator=gen(seed))
        return d.log_prob(y).float().sum() + weighted(y, seed)

    check_gradients(density, logits, tau)


@st.composite
def binary_cases(draw, dtypes=DTYPES):
    shape = draw(shapes(min_dims=0, max_dims=3))
    dtype = draw(st.sampled_from(dtypes))
    logits = draw(tensors(shape, FINITE)).to(dtype)
    tau = draw(taus(shape, dtype))
    return logits, tau, draw(st.sampled_from([(), (3,)]))


@props(80)
@given(case=binary_cases(), use_probs=st.booleans(), seed=SEED)
def test_binary_concrete_samples_lie_inside_the_unit_interval(case, use_probs, seed):
    logits, tau, sample_shape = case
    dtype = logits.dtype
    validate = dtype in FULL

    def dist(x: Tensor, t) -> BinaryConcrete:
        if use_probs:  # sigmoid of a large logit rounds to 0 or 1: a point mass
            return BinaryConcrete(t, probs=torch.sigmoid(x.detach()), validate_args=validate)
        return BinaryConcrete(t, logits=x, validate_args=validate)

    d = dist(logits, tau)
    y = d.sample(sample_shape, generator=gen(seed))
    assert y.dtype == dtype and y.shape == torch.Size(sample_shape) + d.batch_shape
    assert_finite(y, "BinaryConcrete.rsample")
    assert ((y > 0) & (y < 1)).all(), "samples must lie strictly inside (0, 1)"
    probs = d.probs
    if not use_probs or ((probs > 0) & (probs < 1)).all():
        assert_finite(d.log_prob(y), "BinaryConcrete.log_prob(own sample)")

    def pathwise(x: Tensor, t) -> Tensor:
        return weighted(dist(x, t).rsample(sample_shape, generator=gen(seed)), seed)

    def density(x: Tensor, t) -> Tensor:
        return dist(x, t).log_prob(y.detach()).float().sum()

    check_gradients(pathwise, logits, tau, of_logits=not use_probs)
    if not use_probs:
        check_gradients(density, logits, tau)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_probabilities_have_finite_gradients(dtype):
    """probs of exactly 0 (or 1) are masked (point masses), with gradient 0, not 0 * inf."""
    validate = dtype in FULL
    probs = torch.tensor([[0.0, 0.25, 0.75], [0.5, 0.0, 0.5]], dtype=dtype, requires_grad=True)
    for cls in (Concrete, ExpConcrete):
        d = cls(0.5, probs=probs, validate_args=validate)
        x = d.rsample((3,), generator=gen(0))
        assert_finite(x, f"{cls.__name__}.rsample")
        (weighted(x, 0) + d.log_prob(x.detach()).float().sum()).backward()
        assert_finite(probs.grad, f"{cls.__name__}: d/dprobs")
        probs.grad = None
    p = torch.tensor([0.0, 0.3, 1.0], dtype=dtype, requires_grad=True)
    y = BinaryConcrete(0.5, probs=p, validate_args=validate).rsample((3,), generator=gen(0))
    assert_finite(y, "BinaryConcrete.rsample")
    weighted(y, 0).backward()
    assert_finite(p.grad, "BinaryConcrete: d/dprobs")


@props(30)
@given(case=binary_cases(), seed=SEED)
def test_binary_concrete_degenerate_logits_sample_finite_points(case, seed):
    logits, tau, sample_shape = case
    # -inf / +inf logits are documented as the point masses at 0 / 1.
    flip = torch.rand(logits.shape, generator=gen(seed)) < 0.5
    inf = torch.where(flip, -math.inf, math.inf).to(logits.dtype)
    logits = torch.where(torch.rand(logits.shape, generator=gen(seed + 2)) < 0.5, inf, logits)

    def pathwise(x: Tensor, t) -> Tensor:
        y = BinaryConcrete(t, logits=x).rsample(sample_shape, generator=gen(seed))
        assert_finite(y, "BinaryConcrete.rsample at infinite logits")
        assert ((y > 0) & (y < 1)).all()
        return weighted(y, seed)

    check_gradients(pathwise, logits, tau)


# ------------------------------------------------------------------------------ estimators

NAMES = estimators.available()
# The relaxations and straight-through must work in half precision; the others are checked
# too, and those that fail are listed (strictly) so a fix or a regression is noticed.
HALF_FAILS: dict = {}


def _loss_fn(c: Tensor, t: float, out_ndim: int, kind: str) -> Callable[[Tensor], Tensor]:
    """A smooth nonlinear loss: per-row values, summed over the rows beyond out_ndim."""

    def f(z: Tensor) -> Tensor:
        w = c.to(z.dtype)
        v = z * w if kind == "bernoulli" else (z * w).sum(-1)
        loss = (v - t) ** 2 + torch.sin(v)
        dims = tuple(range(1 + out_ndim, loss.dim()))
        return loss.sum(dims) if dims else loss

    return f


@st.composite
def estimator_problems(draw, name: str, dtypes):
    """(logits leaf, the estimator's input, f, distribution, out_shape) of a small problem."""
    cls = type(estimators.get(name))
    kind = draw(st.sampled_from(cls.distributions))
    dtype = draw(st.sampled_from(dtypes))
    if kind == "bernoulli":
        shape = draw(shapes(min_dims=0, max_dims=2, max_size=3))
        logits = draw(tensors(shape, FINITE))
        rows = shape
    else:
        rows = draw(shapes(min_dims=0, max_dims=2, max_size=2))
        k = draw(st.integers(1 if kind == "categorical" else 2, 4))
        logits = unmask_dead_rows(draw(tensors(rows + (k,), LOGIT)), -1)
    out_ndim = draw(st.integers(0, len(rows)))
    seed = draw(SEED)
    g = gen(seed)
    c = torch.randn(logits.shape, generator=g, dtype=torch.float64)
    t = float(torch.rand((), generator=g))
    leaf = logits.to(dtype).requires_grad_(True)
    if kind == "distribution":
        # Concrete: relaxed one-hots, rsample for reparam, log_prob for the score estimators.
        inp = Concrete(0.5, logits=leaf, validate_args=dtype in FULL)
        kind_f = "categorical"
    else:
        inp, kind_f = leaf, kind
    f = _loss_fn(c, t, out_ndim, kind_f)
    return leaf, inp, f, kind, tuple(rows[:out_ndim]), seed


def _run_estimator(name: str, problem) -> Tuple[Tensor, Tensor]:
    leaf, inp, f, kind, out_shape, seed = problem
    est = estimators.get(name)
    surrogate = est(f, inp, distribution=kind, generator=gen(seed))
    assert tuple(surrogate.shape) == out_shape
    surrogate.float().mean().backward()
    return surrogate, leaf.grad


@pytest.mark.parametrize("name", NAMES)
def test_estimators_give_finite_surrogates_and_gradients(name):
    @props(12)
    @given(problem=estimator_problems(name, FULL))
    def check(problem):
        surrogate, grad = _run_estimator(name, problem)
        assert_finite(surrogate, f"{name}: surrogate")
        assert_finite(grad, f"{name}: d/dlogits")

    check()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=HALF_FAILS[n]))
        if n in HALF_FAILS
        else n
        for n in NAMES
    ],
)
def test_estimators_in_half_precision(name):
    @props(8)
    @given(problem=estimator_problems(name, HALF))
    def check(problem):
        surrogate, grad = _run_estimator(name, problem)
        assert_finite(surrogate, f"{name}: surrogate")
        assert_finite(grad, f"{name}: d/dlogits")

    check()


def test_half_precision_covers_the_relaxations_and_straight_through():
    must = {"gumbel-softmax", "st-gumbel-softmax", "st", "reinmax", "gumbel-rao"}
    assert must <= set(NAMES)
    assert not must & set(HALF_FAILS), "relaxations and ST must work in half precision"


def test_strategies_reach_masks_extremes_and_every_dtype():
    """The strategies reach the hard cases: masks, extremes and every dtype appear."""
    seen: List[Tuple[torch.dtype, bool, bool]] = []

    @props(60)
    @given(case=logits_cases())
    def collect(case):
        logits, _ = case
        seen.append(
            (logits.dtype, bool(torch.isneginf(logits).any()), bool(logits.abs().ge(1e4).any()))
        )

    collect()
    assert {d for d, _, _ in seen} == set(DTYPES)
    assert any(m for _, m, _ in seen) and any(e for _, _, e in seen)


def test_the_density_check_rejects_torchs_concrete_at_low_temperature():
    """Negative control: the finiteness check fails on torch's RelaxedOneHotCategorical, whose
    log-density at tau = 0.01 takes log 0 of underflowed coordinates (inf - inf)."""
    logits = torch.randn(64, 5, generator=gen(0))
    torch_d = torch.distributions.RelaxedOneHotCategorical(
        torch.tensor(0.01),
        logits=logits,
        validate_args=False,  # its own samples fail its check
    )
    with torch.random.fork_rng():  # torch's sampler has no generator=
        torch.manual_seed(0)
        x = torch_d.sample()
    with pytest.raises(AssertionError):
        assert_finite(torch_d.log_prob(x), "torch log_prob")
    d = Concrete(0.01, logits=logits)
    assert_finite(d.log_prob(d.sample(generator=gen(1))), "Concrete.log_prob")
