"""Bad input fails at the call that received it, with a ValueError naming the argument.

Corrupted logits are generated with hypothesis (a NaN, a +inf or a fully masked row at a random
place, in every dtype) and fed to every op, distribution and estimator; the remaining checks
cover temperatures, k, probabilities, f's output shape, sample counts and estimator options.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from discograd import estimators, schedules
from discograd.distributions import BinaryConcrete, Concrete, ExpConcrete
from discograd.ops import (
    gumbel_max,
    gumbel_noise,
    gumbel_softmax,
    gumbel_topk,
    relaxed_topk,
    straight_through,
)

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NAMES = estimators.available()

PROPS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def names(arg: str) -> str:
    """A regex matching ``arg`` as a whole word in the error message."""
    return rf"(?<![\w]){re.escape(arg)}(?![\w])"


# ------------------------------------------------------------------ corrupted logits


@st.composite
def corrupted(draw, min_dims: int = 1):
    """(logits, what): random logits with one defect in a random place, in a random dtype."""
    ndim = draw(st.integers(min_dims, 3))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * draw(st.sampled_from([1.0, 1e4]))
    what = draw(st.sampled_from(["nan", "+inf", "dead row"]))
    if ndim == 0:
        what = draw(st.sampled_from(["nan", "+inf"]))
    flat = x.reshape(-1)
    if what == "dead row":
        row = draw(st.integers(0, flat.numel() // shape[-1] - 1))
        x = x.reshape(-1, shape[-1])
        x[row] = -math.inf
    else:
        flat[draw(st.integers(0, flat.numel() - 1))] = math.nan if what == "nan" else math.inf
    return x.reshape(shape).to(draw(st.sampled_from(DTYPES))), what


OPS = {
    "gumbel_max": lambda x: gumbel_max(x),
    "gumbel_max(one_hot)": lambda x: gumbel_max(x, one_hot=True),
    "gumbel_softmax": lambda x: gumbel_softmax(x, 0.5),
    "gumbel_softmax(hard)": lambda x: gumbel_softmax(x, 0.5, hard=True),
    "gumbel_topk": lambda x: gumbel_topk(x, 1),
    "relaxed_topk": lambda x: relaxed_topk(x, 1),
    "Concrete": lambda x: Concrete(0.5, logits=x),
    "ExpConcrete": lambda x: ExpConcrete(0.5, logits=x),
}


@PROPS
@given(case=corrupted(), op=st.sampled_from(sorted(OPS)))
def test_ops_and_distributions_reject_corrupted_logits(case, op):
    logits, _ = case
    with pytest.raises(ValueError, match=names("logits")):
        OPS[op](logits)


@PROPS
@given(case=corrupted(min_dims=0))
def test_binary_concrete_rejects_nan_logits_and_accepts_infinite_ones(case):
    logits, what = case
    if what == "nan":
        with pytest.raises(ValueError, match=names("logits")):
            BinaryConcrete(0.5, logits=logits)
    else:  # +-inf are the documented point masses at 1 / 0
        y = BinaryConcrete(0.5, logits=logits).sample()
        assert torch.isfinite(y).all()


def _f(z: Tensor) -> Tensor:
    return z.reshape(z.shape[0], -1).sum(-1)


@pytest.mark.parametrize("name", NAMES)
def test_estimators_reject_corrupted_logits(name):
    supported = [d for d in type(estimators.get(name)).distributions if d != "distribution"]

    @PROPS
    @given(case=corrupted(), kind=st.sampled_from(supported or ["categorical"]))
    def check(case, kind):
        logits, _ = case  # a Bernoulli "dead row" is a -inf logit: rejected as well
        if not supported:  # reparam: the Concrete it would be given rejects the logits
            with pytest.raises(ValueError, match=names("logits")):
                estimators.get(name)(_f, Concrete(0.5, logits=logits))
            return
        with pytest.raises(ValueError, match=names("logits")):
            estimators.get(name)(_f, logits.requires_grad_(True), distribution=kind)

    check()


def test_bernoulli_estimators_reject_infinite_logits():
    logits = torch.tensor([0.0, -math.inf])
    for name in NAMES:
        if "bernoulli" in type(estimators.get(name)).distributions:
            with pytest.raises(ValueError, match=names("logits")):
                estimators.get(name)(_f, logits, distribution="bernoulli")


def test_unknown_distribution_is_named():
    for name in NAMES:
        with pytest.raises(ValueError, match=names("distribution")):
            estimators.get(name)(_f, torch.zeros(2, 3), distribution="poisson")


# ------------------------------------------------------------------------- temperatures

BAD_TAUS = [
    0.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
    torch.tensor(0.0),
    torch.tensor([1.0, -2.0]),
    torch.tensor([1.0, math.nan]),
    torch.tensor([math.inf, 1.0]),
]


@pytest.mark.parametrize("tau", BAD_TAUS, ids=repr)
def test_bad_temperatures_are_rejected_everywhere(tau):
    logits = torch.zeros(2, 3)
    calls = {
        "tau": [
            lambda: gumbel_softmax(logits, tau),
            lambda: gumbel_softmax(logits, tau, hard=True),
            lambda: relaxed_topk(logits, 2, tau),
            lambda: schedules.Constant(tau),
        ]
        + [
            (lambda n=n: estimators.get(n, tau=tau))
            for n in ("gumbel-softmax", "st-gumbel-softmax", "reinmax", "gumbel-rao")
        ],
        "temperature": [
            lambda: Concrete(tau, logits=logits),
            lambda: ExpConcrete(tau, logits=logits),
            lambda: BinaryConcrete(tau, logits=logits),
        ],
    }
    for arg, fns in calls.items():
        for fn in fns:
            with pytest.raises(ValueError, match=names(arg)):
                fn()
    if not isinstance(tau, Tensor):  # REBAR / RELAX take their initial temperature as a float
        for n in ("rebar", "relax"):
            with pytest.raises(ValueError, match=names("temperature")):
                estimators.get(n, temperature=tau)
        for kwargs, arg in (({"tau0": tau}, "tau0"), ({"tau_min": tau}, "tau_min")):
            with pytest.raises(ValueError, match=names(arg)):
                schedules.ExponentialDecay(**kwargs)
        with pytest.raises(ValueError, match=names("init")):
            schedules.LearnedTemperature(init=tau)


def test_temperature_of_the_wrong_shape_is_named():
    logits = torch.zeros(2, 3)
    for fn in (gumbel_softmax, lambda x, t: relaxed_topk(x, 2, t)):
        with pytest.raises(ValueError, match=names("tau")):
            fn(logits, torch.ones(3))
    for cls in (Concrete, ExpConcrete, BinaryConcrete):
        with pytest.raises(ValueError, match=names("temperature")):
            cls(torch.ones(5), logits=logits)


def test_bad_estimator_scalars_are_named():
    for opt, value in (("eta", math.nan), ("eta", math.inf)):
        for n in ("rebar", "relax"):
            with pytest.raises(ValueError, match=names(opt)):
                estimators.get(n, **{opt: value})
    with pytest.raises(ValueError, match=names("center")):
        estimators.get("darn", center=math.nan)
    with pytest.raises(ValueError, match=names("alpha")):
        estimators.get("nvil", alpha=math.nan)
    with pytest.raises(ValueError, match=names("k")):
        estimators.get("gumbel-rao", k=0)
    with pytest.raises(ValueError, match=names("max_configurations")):
        estimators.get("exact", max_configurations=0)


# ----------------------------------------------------------------------------------- k


def test_k_out_of_range_is_named():
    logits = torch.tensor([[0.0, 1.0, -math.inf, 2.0]])
    for fn in (gumbel_topk, relaxed_topk):
        for k in (0, -1, 5, 4):  # 4 categories, only 3 of them unmasked
            with pytest.raises(ValueError, match=names("k")):
                fn(logits, k)
        for k in (1.5, True):
            with pytest.raises(TypeError, match=names("k")):
                fn(logits, k)


# ------------------------------------------------------------------------------- probs


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete])
@pytest.mark.parametrize(
    "probs",
    [[0.2, 0.2], [0.7, 0.7], [1.5, -0.5], [0.5, math.nan], [0.0, 0.0]],
    ids=["sums-0.4", "sums-1.4", "outside-0-1", "nan", "all-zero"],
)
def test_probs_must_be_a_probability_vector(cls, probs):
    with pytest.raises(ValueError, match=names("probs")):
        cls(0.5, probs=torch.tensor(probs))


@pytest.mark.parametrize("probs", [-0.1, 1.1, math.nan])
def test_binary_probs_must_lie_in_the_unit_interval(probs):
    with pytest.raises(ValueError, match=names("probs")):
        BinaryConcrete(0.5, probs=torch.tensor([0.5, probs]))


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete, BinaryConcrete])
def test_exactly_one_of_logits_and_probs(cls):
    x = torch.tensor([0.5, 0.5])
    for kwargs in ({}, {"logits": x, "probs": x}):
        with pytest.raises(ValueError, match=r"logits or probs"):
            cls(0.5, **kwargs)


# ------------------------------------------------------------------ estimators: f and options


def _wrong_outputs(z: Tensor):
    s = z.shape[0]
    return {
        "no sample dim": z.sum(),
        "sample dim too long": torch.zeros(s + 1, dtype=z.dtype),
        "not a prefix": torch.zeros((s, 7), dtype=z.dtype),
        "integer losses": torch.zeros(s, dtype=torch.long),
    }


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", ["no sample dim", "sample dim too long", "not a prefix"])
def test_f_with_the_wrong_output_shape_is_named(name, which):
    supported = type(estimators.get(name)).distributions
    for kind in supported:
        logits = torch.randn(2, 3, requires_grad=True)
        inp = Concrete(0.5, logits=logits) if kind == "distribution" else logits

        def f(z: Tensor) -> Tensor:
            out = _wrong_outputs(z)[which]
            return out + 0 * z.sum() if out.is_floating_point() else out

        with pytest.raises(ValueError, match=names("f")):
            estimators.get(name)(f, inp, distribution=kind)


@pytest.mark.parametrize("name", NAMES)
def test_f_returning_non_float_or_non_tensor(name):
    kind = type(estimators.get(name)).distributions[0]
    logits = torch.randn(2, 3, requires_grad=True)
    inp = Concrete(0.5, logits=logits) if kind == "distribution" else logits
    with pytest.raises(ValueError, match=names("f")):
        estimators.get(name)(lambda z: _wrong_outputs(z)["integer losses"], inp, distribution=kind)
    with pytest.raises(TypeError, match=names("f")):
        estimators.get(name)(lambda z: [0.0], inp, distribution=kind)
    with pytest.raises(TypeError, match=names("f")):
        estimators.get(name)("not callable", inp, distribution=kind)


def _takes(name: str, option: str) -> bool:
    import inspect

    return option in inspect.signature(type(estimators.get(name)).__init__).parameters


@pytest.mark.parametrize("name", [n for n in NAMES if _takes(n, "n_samples")])
def test_n_samples_below_one_is_named(name):
    for bad in (0, -3):
        with pytest.raises(ValueError, match=names("n_samples")):
            estimators.get(name, n_samples=bad)
    with pytest.raises(TypeError, match=names("n_samples")):
        estimators.get(name, n_samples=2.0)


def test_every_sampling_estimator_takes_n_samples_and_rloo_needs_two():
    assert [n for n in NAMES if not _takes(n, "n_samples")] == ["exact"]
    with pytest.raises(ValueError, match=names("n_samples")):
        estimators.get("rloo", n_samples=1)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_options_are_named(name):
    with pytest.raises(ValueError, match=names("bogus_option")):
        estimators.get(name, bogus_option=1)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimators.get(name + "-typo")


# ------------------------------------------------------------------------------ small ops


def test_gumbel_noise_needs_a_floating_dtype():
    with pytest.raises(ValueError, match=names("dtype")):
        gumbel_noise((2, 3), dtype=torch.int64)


def test_straight_through_needs_equal_shapes():
    with pytest.raises(ValueError, match="shape"):
        straight_through(torch.zeros(2, 3), torch.zeros(3, 2))


# ---------------------------------------------------------- the screened checks themselves
# check_logits, check_probs and check_tau clear valid input with one reduction and one sync,
# and fall back to detailed passes otherwise. Their verdicts (and messages) must be those of the
# detailed passes alone, written out below as the reference, on any input: overflowing sums,
# masks, NaN next to infinities, empty dims, every dtype.


def _verdict(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    return None


def _reference_check_logits(logits: Tensor, *, name: str = "logits", dim=-1) -> None:
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if dim is not None and logits.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the categories)")
    if torch.isnan(logits).any():
        raise ValueError(f"{name} contains NaN")
    if torch.isposinf(logits).any():
        raise ValueError(f"{name} contains +inf; use -inf to mask a category, not +inf")
    if dim is not None:
        if logits.shape[dim] == 0:
            raise ValueError(f"{name} has no categories along dim={dim}")
        if torch.isneginf(logits).all(dim=dim).any():
            raise ValueError(f"{name}: all categories are masked (-inf) in at least one row")


def _reference_check_probs(probs: Tensor, *, name: str = "probs", dim=-1, atol=1e-4) -> None:
    if torch.isnan(probs).any():
        raise ValueError(f"{name} contains NaN")
    if (probs < 0).any() or (probs > 1).any():
        raise ValueError(f"{name} must lie in [0, 1]")
    total = probs.sum(dim)
    if not torch.allclose(total, torch.ones_like(total), atol=atol):
        raise ValueError(f"{name} must sum to 1 along dim={dim}")


def _reference_check_tau(tau: Tensor, *, name: str = "tau") -> None:
    if torch.isnan(tau).any():
        raise ValueError(f"{name} contains NaN")
    if (tau <= 0).any():
        raise ValueError(f"{name} must be > 0, got a value <= 0")
    if torch.isinf(tau).any():
        raise ValueError(f"{name} must be finite")


SCREEN = settings(PROPS, max_examples=300)


@st.composite
def _shape_and_dim(draw, min_size: int = 0):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(min_size, 4), min_size=ndim, max_size=ndim)))
    dim = draw(st.sampled_from([None, -1, *range(ndim)]))
    return shape, dim


def _sprinkle(draw, shape, dtype, palette):
    """A tensor of ``shape`` whose entries are N(0, 1) or, each with a drawn probability, one of
    ``palette``; sometimes a whole row along the last dim is set to one palette value."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    p = draw(st.sampled_from([0.0, 0.05, 0.3, 0.9]))
    if x.numel() and p:
        pick = torch.randint(len(palette), shape, generator=g)
        mask = torch.rand(shape, generator=g) < p
        x = torch.where(mask, torch.tensor(palette, dtype=torch.float64)[pick], x)
    if x.numel() and draw(st.booleans()):
        x.reshape(-1, shape[-1])[draw(st.integers(0, x.numel() // shape[-1] - 1))] = draw(
            st.sampled_from(palette)
        )
    return x.to(dtype)


@SCREEN
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_check_logits_agrees_with_the_detailed_passes(data, dtype):
    from discograd._validation import check_logits
    from discograd.kernels import _validate_logits

    shape, dim = data.draw(_shape_and_dim())
    # Huge finite values overflow the screening sum (float32 for the half types, float64 for
    # float64) to +-inf without any bad entry.
    big = 1.7e308 if dtype == torch.float64 else 3e38
    palette = [math.nan, math.inf, -math.inf, big, -big, -math.inf, -big]
    x = _sprinkle(data.draw, shape, dtype, palette)
    expected = _verdict(_reference_check_logits, x, dim=dim)
    assert _verdict(check_logits, x, dim=dim) == expected
    if dim is not None:  # the kernels' entry point is the same check
        assert _verdict(_validate_logits, x, dim) == expected


def test_check_logits_on_the_screen_edges():
    from discograd._validation import check_logits

    big = 3e38  # two of them overflow a float32 sum: +inf or -inf with no bad entry
    for dtype in (torch.float32, torch.bfloat16):
        check_logits(torch.tensor([[big, big], [0.0, 1.0]], dtype=dtype))
        check_logits(torch.tensor([[-big, -big], [0.0, 1.0]], dtype=dtype))
        check_logits(torch.tensor([[-big, -big], [-math.inf, 1.0]], dtype=dtype))
        check_logits(torch.tensor([[-math.inf, -math.inf]], dtype=dtype), dim=None)
        for row, message in (
            ([-big, -big, -math.inf], None),
            ([-math.inf] * 3, "all categories are masked"),
            ([math.inf, 0.0, -math.inf], r"contains \+inf"),  # +inf - inf: a NaN sum
            ([math.inf, math.nan, -math.inf], "contains NaN"),  # NaN is reported first
            ([big, big, math.inf], r"contains \+inf"),
        ):
            x = torch.tensor([[0.0, 1.0, 2.0], row], dtype=dtype)
            if message is None:
                check_logits(x)
            else:
                with pytest.raises(ValueError, match=message):
                    check_logits(x)
    with pytest.raises(ValueError, match="no categories along dim=-1"):
        check_logits(torch.zeros(3, 0))
    check_logits(torch.zeros(0, 3))  # no rows: nothing to reject
    with pytest.raises(IndexError):  # a dim the tensor lacks, whatever its contents
        check_logits(torch.zeros(2, 3), dim=2)


def test_valid_logits_take_one_reduction(monkeypatch):
    """Valid logits, masked or not, never reach the detailed passes (each a full pass and a
    device sync); invalid ones do (the negative control: the patch is in effect)."""
    from discograd._validation import check_logits

    def detailed(*args, **kwargs):
        raise AssertionError("detailed pass")

    masked = torch.randn(256, 8, 8)
    masked[..., :7] = -math.inf
    for name in ("isnan", "isposinf", "isneginf", "isinf"):
        monkeypatch.setattr(torch, name, detailed)
    for x in (torch.randn(256, 8, 8), masked, torch.randn(3, 4).to(torch.bfloat16)):
        check_logits(x)
        check_logits(x, dim=None)
    check_logits(torch.randn(256, 8, 8), dim=0)
    masked[0, 0] = -math.inf
    with pytest.raises(AssertionError, match="detailed pass"):
        check_logits(masked)


@SCREEN
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_check_probs_agrees_with_the_detailed_passes(data, dtype):
    from discograd._validation import check_probs

    shape, dim = data.draw(_shape_and_dim())
    dim = -1 if dim is None else dim
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    probs = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim)
    kind = data.draw(st.sampled_from(["valid", "near the tolerance", "sprinkled"]))
    if kind == "near the tolerance" and probs.numel():
        # Shift one entry by about atol + rtol (1.1e-4): on either side of allclose's edge.
        eps = data.draw(st.sampled_from([0.9e-4, 1.05e-4, 1.1e-4, 1.15e-4, 3e-4]))
        probs.reshape(-1)[0] += data.draw(st.sampled_from([eps, -eps]))
    elif kind == "sprinkled":
        probs = _sprinkle(data.draw, shape, torch.float64, [math.nan, math.inf, -0.1, 1.5, 0.0])
    probs = probs.to(dtype)
    expected = _verdict(_reference_check_probs, probs, dim=dim)
    assert _verdict(check_probs, probs, dim=dim) == expected


@SCREEN
@given(
    values=st.lists(
        st.sampled_from([0.5, 2.0, 1e-30, 0.0, -1.0, math.nan, math.inf, -math.inf]), max_size=4
    ),
    dtype=st.sampled_from((*DTYPES, torch.int64)),
)
def test_check_tau_agrees_with_the_detailed_passes(values, dtype):
    from discograd._validation import check_tau

    tau = torch.tensor(values, dtype=torch.float64)
    if dtype == torch.int64:
        tau = tau[torch.isfinite(tau)]
    tau = tau.to(dtype)
    assert _verdict(check_tau, tau) == _verdict(_reference_check_tau, tau)
