"""discograd.diagnostics and discograd.problems: definitions checked on closed-form cases.

The statistical checks use 4 standard errors; every "unbiased" check has a negative control
(straight-through, a sample-dependent baseline, a halved sample count) that the same check
rejects.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from discograd import diagnostics as D
from discograd import problems as P
from discograd.estimators import get
from discograd.estimators._family import make_family
from discograd.estimators.base import (
    Estimator,
    evaluate,
    score_surrogate,
    sum_rows,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rebar_reinforce_moments(t: float, n_samples: int = 1):
    """Mean and variance of REINFORCE's gradient in the logit on REBAR's toy at p = 1/2.

    g = f(b) (b - 1/2): (1 - t)^2 / 2 or -t^2 / 2 with probability 1/2 each.
    """
    a, b = 0.5 * (1 - t) ** 2, -0.5 * t**2
    return (a + b) / 2, (a - b) ** 2 / 4 / n_samples


def _variance_range(var: float, n: int):
    """Where the sample variance of n draws of a two-point, equally likely gradient falls
    whenever their mean is within 4 standard errors of the truth.

    (g - mean)^2 = var for every draw, so s^2 = n / (n - 1) (var - (gbar - mean)^2) exactly.
    """
    return n / (n - 1) * (var - 16 * var / n), n / (n - 1) * var


class SampleDependentBaseline(Estimator):
    """REINFORCE with the baseline f(z) / 2, which depends on the sample: half the gradient."""

    unbiased = False

    def estimate(self, f, family, generator):
        z = family.sample(1, generator)
        fz = evaluate(f, z, family)
        log_q = sum_rows(family.log_prob(z), fz.dim() - 1)
        return score_surrogate(fz, log_q, fz.detach() / 2).mean(0)


# --- closed-form cases ------------------------------------------------------------------------


@pytest.mark.parametrize("vectorize", [False, True])
def test_reinforce_on_rebar_toy_matches_closed_form(vectorize):
    t, n = 0.45, 1000
    prob = P.rebar_toy(t)
    s = D.gradient_stats(
        "reinforce",
        prob.f,
        prob.logits,
        n=n,
        distribution="bernoulli",
        generator=_gen(1),
        vectorize=vectorize,
    )
    mean, var = _rebar_reinforce_moments(t)
    # The exact gradient comes from enumeration and equals sigma'(0) (1 - 2t).
    assert torch.allclose(s.exact, torch.tensor([(1 - 2 * t) / 4], dtype=torch.float64))
    assert abs(mean - (1 - 2 * t) / 4) < 1e-15
    assert s.bias <= 4 * float(s.mean_se.max())
    assert s.bias_pvalue > 1e-3
    lo, hi = _variance_range(var, n)
    assert lo <= s.variance <= hi * (1 + 1e-12)
    assert s.unbiased_claim is True and s.vectorized is vectorize
    assert s.evaluations_per_call == 1


def test_variance_check_rejects_a_different_estimator():
    # Negative control of the variance check above: two samples halve the variance.
    t, n = 0.45, 1000
    prob = P.rebar_toy(t)
    est = get("reinforce", n_samples=2)
    s = D.gradient_stats(est, prob.f, prob.logits, n=n, distribution="bernoulli", generator=_gen(1))
    _, var1 = _rebar_reinforce_moments(t)
    _, var2 = _rebar_reinforce_moments(t, n_samples=2)
    lo, hi = _variance_range(var1, n)
    assert not lo <= s.variance <= hi * (1 + 1e-12)
    assert s.variance == pytest.approx(var2, rel=0.15)
    assert s.evaluations_per_call == 2


def test_exact_has_zero_variance_and_zero_bias():
    prob = P.categorical_toy()
    s = D.gradient_stats("exact", prob.f, prob.logits, n=5, generator=_gen())
    assert s.variance == 0.0
    assert s.bias < 1e-12 * float(s.exact.norm())
    assert s.bias_pvalue == 1.0
    assert s.cosine == pytest.approx(1.0, abs=1e-12)
    assert s.snr == math.inf
    # All K^N = 100 configurations, plus at most a one-sample probe of f's output shape.
    assert s.evaluations_per_call in (100, 101)


def test_reinforce_is_unbiased_and_the_same_check_rejects_biased_variants():
    # Vectorized (one call on n replicas): these estimators treat the rows independently.
    prob = P.categorical_toy()
    kw = dict(n=20000, vectorize=True)
    ok = D.gradient_stats("reinforce", prob.f, prob.logits, generator=_gen(2), **kw)
    assert ok.bias_pvalue > 1e-3
    assert bool(((ok.mean - ok.exact).abs() <= 4 * ok.mean_se + 1e-12).all())
    # Straight-through on a nonlinear f: biased.
    st = D.gradient_stats("st", prob.f, prob.logits, generator=_gen(2), **kw)
    assert st.bias_pvalue < 1e-6
    assert st.bias > 4 * st.bias_se
    assert st.unbiased_claim is False
    # A baseline that depends on the sample halves the gradient: relative bias 1/2.
    half = D.gradient_stats(SampleDependentBaseline(), prob.f, prob.logits, generator=_gen(2), **kw)
    assert half.bias_pvalue < 1e-6
    assert abs(half.relative_bias - 0.5) <= 4 * half.relative_bias_se
    assert half.cosine > 0.9


def test_statistics_match_an_independent_computation_from_the_draws():
    prob = P.categorical_toy()
    n = 200
    s = D.gradient_stats("gumbel-softmax", prob.f, prob.logits, n=n, generator=_gen(3))
    est, g, draws = get("gumbel-softmax"), _gen(3), []
    for _ in range(n):
        leaf = prob.logits.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(est(prob.f, leaf, generator=g).sum(), leaf)
        draws.append(grad.double())
    draws = torch.stack(draws)
    mean, var = draws.mean(0), draws.var(0)
    e = s.exact
    assert torch.allclose(s.mean, mean, rtol=1e-12, atol=1e-14)
    assert s.variance == pytest.approx(float(var.sum()), rel=1e-10)
    assert torch.allclose(s.component_variance, var, rtol=1e-10, atol=1e-15)
    assert torch.allclose(s.mean_se, var.sqrt() / n**0.5, rtol=1e-10, atol=1e-15)
    assert s.bias == pytest.approx(float((mean - e).norm()), rel=1e-10)
    assert s.bias_se == pytest.approx(math.sqrt(float(var.sum()) / n), rel=1e-10)
    assert s.mse == pytest.approx(float(((draws - e) ** 2).sum((1, 2)).mean()), rel=1e-10)
    assert s.cosine == pytest.approx(float((mean * e).sum() / (mean.norm() * e.norm())), rel=1e-10)
    assert s.snr == pytest.approx(float((mean.abs() / var.sqrt()).mean()), rel=1e-10)
    assert s.snr_norm == pytest.approx(float(mean.norm() / var.sum().sqrt()), rel=1e-10)


def _fixed_gradient(values):
    """A hand-made 'estimator' whose gradient in the logits is values[i] at its i-th call."""
    calls = {"i": 0}

    def est(f, logits, *, distribution="categorical", generator=None) -> Tensor:
        c = values[calls["i"] % len(values)]
        calls["i"] += 1
        f(torch.zeros((1,) + logits.shape, dtype=logits.dtype))  # one evaluation of f
        return (logits * c).sum()

    return est


def test_bias_relative_bias_and_cosine_on_a_hand_made_case():
    logits = torch.zeros(2, dtype=torch.float64)
    exact = torch.tensor([3.0, 0.0], dtype=torch.float64)
    c = torch.tensor([3.0, 4.0], dtype=torch.float64)
    s = D.gradient_stats(
        _fixed_gradient([c]),
        lambda z: z.sum(-1),
        logits,
        n=4,
        distribution="bernoulli",
        exact=exact,
    )
    assert s.variance == 0.0
    assert s.bias == pytest.approx(4.0)  # ||(3, 4) - (3, 0)||
    assert s.relative_bias == pytest.approx(4.0 / 3.0)
    assert s.cosine == pytest.approx(9.0 / 15.0)  # <c, e> / (|c| |e|) = 9 / (5 * 3)
    assert s.mse == pytest.approx(16.0)
    assert s.bias_pvalue == 0.0  # zero variance and a nonzero bias: certainly biased
    assert s.evaluations_per_call == 1


def test_snr_definitions_on_a_hand_made_case():
    # Draws alternate c + d and c - d: mean c, per-component variance d^2 n / (n - 1).
    n = 10
    c = torch.tensor([3.0, -4.0], dtype=torch.float64)
    d = torch.tensor([1.0, 2.0], dtype=torch.float64)
    s = D.gradient_stats(
        _fixed_gradient([c + d, c - d]),
        lambda z: z.sum(-1),
        torch.zeros(2, dtype=torch.float64),
        n=n,
        distribution="bernoulli",
        exact=c,
    )
    std = d * math.sqrt(n / (n - 1))
    assert torch.allclose(s.mean, c)
    assert s.bias == pytest.approx(0.0, abs=1e-12)
    assert s.variance == pytest.approx(float((std**2).sum()))
    assert s.snr == pytest.approx(float((c.abs() / std).mean()))  # (3 / 1 + 4 / 2) / 2, rescaled
    assert s.snr_norm == pytest.approx(5.0 / float((std**2).sum().sqrt()))


def test_counting_wrapper_counts_calls_and_samples():
    prob = P.categorical_toy()
    counted = D.count_evaluations(prob.f)
    get("reinforce", n_samples=3)(counted, prob.logits)
    assert (counted.calls, counted.evaluations) == (1, 3)
    counted.reset()
    assert (counted.calls, counted.evaluations) == (0, 0)
    s = D.gradient_stats(get("reinforce", n_samples=4), prob.f, prob.logits, n=3)
    assert s.evaluations_per_call == 4


def test_distribution_input_differentiates_in_params():
    prob = P.gaussian()
    for name in ("reparam", "reinforce"):
        s = D.gradient_stats(
            name,
            prob.f,
            prob.logits,
            n=300,
            params=prob.params,
            exact=prob.exact,
            generator=_gen(4),
        )
        assert s.mean.shape == (6,)
        assert bool(((s.mean - prob.exact).abs() <= 4 * s.mean_se).all()), name
    # Negative control: the same check rejects a wrong answer (d/d sigma = sigma, not 2 sigma)
    # for reparam's draws.
    wrong = prob.exact.clone()
    wrong[3:] /= 2
    s = D.gradient_stats(
        "reparam", prob.f, prob.logits, n=300, params=prob.params, exact=wrong, generator=_gen(4)
    )
    assert not bool(((s.mean - wrong).abs() <= 4 * s.mean_se).all())
    assert s.bias_pvalue < 1e-6
    with pytest.raises(ValueError, match="params"):
        D.gradient_stats("reparam", prob.f, prob.logits, n=3)
    with pytest.raises(ValueError, match="vectorize"):
        D.gradient_stats("reparam", prob.f, prob.logits, n=3, params=prob.params, vectorize=True)


def test_bad_input_is_rejected_with_the_argument_named():
    prob = P.rebar_toy()
    with pytest.raises(ValueError, match="n must be"):
        D.gradient_stats("reinforce", prob.f, prob.logits, n=1, distribution="bernoulli")
    with pytest.raises(ValueError, match="distribution must be"):
        D.gradient_stats("reinforce", prob.f, prob.logits, n=3, distribution="poisson")
    with pytest.raises(ValueError, match="unknown estimator"):
        D.gradient_stats("no-such", prob.f, prob.logits, n=3, distribution="bernoulli")
    with pytest.raises(ValueError, match="does not support"):
        D.gradient_stats("reparam", prob.f, prob.logits, n=3, distribution="bernoulli")


# --- compare and to_markdown ------------------------------------------------------------------


def test_compare_skips_unsupported_records_failures_and_passes_options():
    prob = P.rebar_toy(0.45)

    def broken(f, logits, *, distribution="categorical", generator=None):
        raise RuntimeError("boom")

    rows = D.compare(
        ["reinforce", "reparam", "gumbel-softmax", broken],
        prob.f,
        prob.logits,
        n=20,
        distribution="bernoulli",
        options={"tau": 0.5},
        errors="record",
    )
    assert [r.estimator for r in rows] == ["reinforce", "reparam", "gumbel-softmax", "broken"]
    assert isinstance(rows[0], D.GradientStats) and "tau" not in rows[0].options
    assert isinstance(rows[1], D.Skipped) and not rows[1].failed
    assert "unsupported: bernoulli" in rows[1].reason
    assert rows[2].options["tau"] == 0.5
    assert isinstance(rows[3], D.Skipped) and rows[3].failed and "boom" in rows[3].reason
    table = D.to_markdown(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "unsupported: bernoulli" in table and "failed: RuntimeError: boom" in table
    with pytest.raises(RuntimeError, match="boom"):
        D.compare([broken], prob.f, prob.logits, n=3, distribution="bernoulli")


def test_compare_is_reproducible_and_independent_of_other_estimators():
    prob = P.categorical_toy()
    a = D.compare(["st", "reinforce"], prob.f, prob.logits, n=30, seed=5)
    b = D.compare(["reinforce"], prob.f, prob.logits, n=30, seed=5)
    assert torch.equal(a[1].mean, b[0].mean)
    state = torch.get_rng_state()
    D.compare(["gumbel-softmax"], prob.f, prob.logits, n=3, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # construction left the global RNG alone


def test_to_dict_is_json_ready():
    import json

    prob = P.rebar_toy()
    rows = D.compare(["exact", "reparam"], prob.f, prob.logits, n=3, distribution="bernoulli")
    text = json.dumps([r.to_dict() for r in rows], allow_nan=False)
    assert '"inf"' in text  # exact's SNR


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    prob = P.rebar_toy()
    rows = D.compare(
        ["exact", "reinforce", "st"], prob.f, prob.logits, n=20, distribution="bernoulli"
    )
    path = tmp_path / "plot.png"
    D.plot_variance_bias(rows, str(path), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the built-in problems --------------------------------------------------------------------


@pytest.mark.parametrize("name", P.available_problems())
def test_builtin_problems_follow_the_contract(name):
    prob = P.get_problem(name)
    assert prob.name == name and prob.description
    if prob.params:
        assert prob.exact is not None and prob.exact.numel() == sum(p.numel() for p in prob.params)
        z = prob.logits.sample((5,))
        assert prob.f(z).shape == (5,)
        return
    e = D.exact_gradient(prob.f, prob.logits, distribution=prob.distribution)
    assert e is not None and e.shape == prob.logits.shape and bool(torch.isfinite(e).all())
    assert e.abs().sum() > 0
    # f broadcasts over extra leading dims (needed by vectorize=True).
    fam = make_family(prob.logits, prob.distribution, supported=(prob.distribution,), name="t")
    sample = fam.sample(6, _gen())
    out = prob.f(sample.reshape((2, 3) + tuple(sample.shape[1:])))
    assert out.shape[:2] == (2, 3)


def test_vae_problem_is_a_per_example_loss_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    prob = P.vae_digits()
    assert torch.equal(state, torch.get_rng_state())
    assert prob.logits.shape == (8, 2, 4)
    probs = torch.softmax(prob.logits, -1)
    assert float(probs.min()) > 1e-3  # no near-deterministic class (see the docstring)
    z = torch.nn.functional.one_hot(prob.logits.argmax(-1), 4).double().unsqueeze(0)
    assert prob.f(z).shape == (1, 8)
    assert bool((prob.f(z) > 0).all())  # a negative log-likelihood of Bernoulli pixels


def test_unknown_problem_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown problem 'nope'; available: rebar-0.45"):
        P.get_problem("nope")
