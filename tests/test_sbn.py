"""The stochastic binary network: exact likelihoods by enumeration, the m-sample NLL estimate,
nested estimators (unbiased gradients through two stochastic layers), and ``discograd sbn``."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from discograd import estimators
from discograd.cli import main
from discograd.models.sbn import PerLayer, StochasticBinaryNetwork, configurations, split_halves
from tests.stats import assert_mean_close, mean_is_close

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tiny(latent: str, seed: int = 0) -> StochasticBinaryNetwork:
    torch.manual_seed(seed)
    model = StochasticBinaryNetwork(3, 4, n_latent=2, n_classes=3, latent=latent).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # sharper conditionals: the layers matter for the likelihood
    return model


def _data(b: int = 3):
    g = torch.Generator().manual_seed(1)
    x_in = torch.bernoulli(torch.full((b, 3), 0.5, dtype=torch.float64), generator=g)
    x_out = torch.bernoulli(torch.full((b, 4), 0.5, dtype=torch.float64), generator=g)
    return x_in, x_out


def _values(model: StochasticBinaryNetwork):
    """Every value of one layer, by itertools (independent of the model's enumeration)."""
    if model.latent == "bernoulli":
        return [torch.tensor(v, dtype=torch.float64) for v in itertools.product([0, 1], repeat=2)]
    eye = torch.eye(model.n_classes, dtype=torch.float64)
    return [torch.stack([eye[a], eye[b]]) for a, b in itertools.product(range(3), repeat=2)]


def _log_p(model, logits, value):
    if model.latent == "bernoulli":
        return (value * F.logsigmoid(logits) + (1 - value) * F.logsigmoid(-logits)).sum(-1)
    return (value * torch.log_softmax(logits, -1)).sum((-2, -1))


def _enumerate(model, x_in, x_out):
    """log p(h1, h2 | x_in) and log p(x_out | h2) for every (h1, h2), by hand: (C, B) each."""
    joint, lik = [], []
    for h1 in _values(model):
        for h2 in _values(model):
            lp1 = _log_p(model, model.logits(0, x_in), h1)
            lp2 = _log_p(model, model.logits(1, model.code(h1)), h2)
            out = model.out(model.code(h2))
            ll = -F.binary_cross_entropy_with_logits(
                out.expand(x_out.shape), x_out, reduction="none"
            ).sum(-1)
            joint.append(lp1 + lp2)
            lik.append(ll)
    return torch.stack(joint), torch.stack(lik)


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_exact_nll_equals_a_sum_over_every_configuration(latent):
    model = _tiny(latent)
    x_in, x_out = _data()
    joint, lik = _enumerate(model, x_in, x_out)
    expected = -torch.logsumexp(joint + lik, 0)
    torch.testing.assert_close(model.exact_nll(x_in, x_out), expected)
    # The configurations themselves: 2^N binary vectors, K^N concatenated one-hots.
    assert configurations(2, 2, "bernoulli").shape == (4, 2)
    assert configurations(2, 3, "categorical").shape == (9, 6)


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_m_sample_nll_tightens_towards_the_exact_value(latent):
    model = _tiny(latent)
    x_in, x_out = _data(b=1)
    with torch.no_grad():
        joint, lik = _enumerate(model, x_in, x_out)
    exact_nll = float(-torch.logsumexp(joint + lik, 0))
    exact_j = float(-(joint.exp() * lik).sum())  # E_h[-log p(x|h)], the training objective
    g = torch.Generator().manual_seed(2)
    reps, ms = 400, (1, 10, 100)
    means = {}
    for m in ms:
        log_lik = model.log_likelihood_samples(x_in, x_out, m * reps, g).reshape(reps, m)
        nll_m = -(torch.logsumexp(log_lik, 1) - math.log(m))
        means[m] = nll_m
    # m = 1 is the single-sample objective: unbiased for E_h[-log p(x|h)] ...
    assert_mean_close(means[1], torch.tensor(exact_j))
    # ... and the average likelihood is unbiased for p(x_out | x_in), its log is not (Jensen):
    lik_draws = model.log_likelihood_samples(x_in, x_out, 20000, g)[:, 0]
    assert_mean_close(lik_draws.exp(), torch.tensor(math.exp(-exact_nll)))
    assert not mean_is_close(lik_draws, torch.tensor(-exact_nll))  # negative control
    # E[NLL_m] decreases with m and stays above the exact value.
    m1, m10, m100 = (float(means[m].mean()) for m in ms)
    assert m1 > m10 > m100 >= exact_nll - 4 * float(means[100].std()) / reps**0.5
    assert abs(m100 - exact_nll) < abs(m1 - exact_nll) / 10
    # With many samples the estimate is the exact value within its (delta-method) error.
    p = lik_draws.exp()
    se = float(p.std() / p.mean()) / len(p) ** 0.5
    assert abs(float(-torch.log(p.mean())) - exact_nll) < 4 * se


def _grad_vector(model):
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    return torch.cat([g.flatten() for g in grads]).clone()


def _group_gradients(model, est, x_in, x_out, groups, per_group, seed):
    """Gradients of the mean surrogate over per_group replicas of the data, for each group."""
    g = torch.Generator().manual_seed(seed)
    rep_in, rep_out = x_in.repeat(per_group, 1), x_out.repeat(per_group, 1)
    out = []
    for _ in range(groups):
        model.zero_grad()
        model.loss(rep_in, rep_out, est, g).mean().backward()
        out.append(_grad_vector(model))
    return torch.stack(out)


class _DropOuterScore(torch.nn.Module):
    """REINFORCE that sees the logits detached: the score term of its layer is dropped."""

    def __init__(self):
        super().__init__()
        self.inner = estimators.get("reinforce")

    def forward(self, f, logits, *, distribution, generator=None):
        return self.inner(f, logits.detach(), distribution=distribution, generator=generator)


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_nested_unbiased_estimators_give_the_exact_gradient(latent):
    model = _tiny(latent)
    x_in, x_out = _data(b=2)
    # Exact gradient of the objective by hand enumeration (independent of the estimators).
    model.zero_grad()
    joint, lik = _enumerate(model, x_in, x_out)
    (-(joint.exp() * lik).sum(0).mean()).backward()
    exact = _grad_vector(model)
    # Nested Exact estimators reproduce it.
    model.zero_grad()
    model.loss(
        x_in, x_out, PerLayer([estimators.get("exact"), estimators.get("exact")])
    ).mean().backward()
    torch.testing.assert_close(_grad_vector(model), exact)
    # Nested REINFORCE is unbiased; dropping the first layer's score term is rejected.
    per = x_in.shape[0]
    nested = PerLayer([estimators.get("reinforce"), estimators.get("reinforce")])
    draws = _group_gradients(model, nested, x_in, x_out, 60, 200, seed=3)
    assert draws.shape[0] == 60 and per == 2
    assert_mean_close(draws, exact)
    broken = PerLayer([_DropOuterScore(), estimators.get("reinforce")])
    bad = _group_gradients(model, broken, x_in, x_out, 60, 200, seed=3)
    assert not mean_is_close(bad, exact)


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
@pytest.mark.parametrize("name", estimators.available())
def test_every_estimator_trains_every_layer(name, latent):
    model = _tiny(latent).float()
    x_in, x_out = (t.float() for t in _data())
    est_cls = estimators.base._REGISTRY[name]
    if latent not in est_cls.distributions:
        with pytest.raises(ValueError, match="does not support"):
            model.loss(x_in, x_out, PerLayer([estimators.get(name), estimators.get(name)]))
        return
    if name == "reparam":
        pytest.fail("reparam should not accept discrete distributions")
    est = PerLayer([estimators.get(name), estimators.get(name)])
    loss = model.loss(x_in, x_out, est, torch.Generator().manual_seed(0))
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.mean().backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(float(p.grad.abs().sum()) > 0 for p in model.maps[0].parameters())


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="n_latent"):
        StochasticBinaryNetwork(3, 4, n_latent=0)
    with pytest.raises(ValueError, match="latent"):
        StochasticBinaryNetwork(3, 4, latent="gaussian")
    with pytest.raises(ValueError, match="image_shape"):
        split_halves(torch.zeros(2, 10), (3, 3))
    model = _tiny("bernoulli")
    with pytest.raises(ValueError, match="one estimator per layer"):
        model.loss(*_data(), [estimators.get("st")])
    with pytest.raises(ValueError, match="m must be"):
        model.nll(*_data(), 0)
    with pytest.raises(ValueError, match="max_configurations"):
        StochasticBinaryNetwork(3, 4, n_latent=20).exact_nll(*(t.float() for t in _data()))


@pytest.mark.parametrize(
    "size, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_sbn_experiment_checks_eval_batch_size(size, error):
    # 0 failed at the first evaluation (range() arg 3 must not be zero); -1 evaluated no
    # example and reported nll 0.0.
    from discograd.data import load_digits
    from discograd.models.sbn import SBNExperiment

    data = load_digits()
    half = data.dim // 2
    model = StochasticBinaryNetwork(half, half, n_latent=2)
    est = [estimators.get("st")] * 2
    with pytest.raises(error, match="eval_batch_size"):
        SBNExperiment(data, model, est, eval_batch_size=size)
    exp = SBNExperiment(data, model, est, eval_batch_size=7, eval_samples=2)
    assert exp.evaluate("valid", torch.Generator().manual_seed(0))["nll"] > 0


def test_training_lowers_the_nll_on_digits(tmp_path):
    from discograd.data import load_digits
    from discograd.models.sbn import SBNExperiment
    from discograd.train import TrainConfig, fit

    data = load_digits()
    torch.manual_seed(0)
    model = StochasticBinaryNetwork(32, 32, n_latent=32)
    est = PerLayer([estimators.get("st"), estimators.get("st")])
    exp = SBNExperiment(data, model, est, eval_samples=50)
    before = exp.evaluate("valid", torch.Generator().manual_seed(0))["nll"]
    result = fit(exp, TrainConfig(steps=150, batch_size=50, lr=3e-3, eval_every=0, quiet=True))
    after = result.final["valid"]["nll"]
    assert after < before - 1.0, (before, after)


def test_cli_end_to_end_writes_summary_and_figures(tmp_path):
    out = tmp_path / "run"
    rc = main(
        ["sbn", "--steps", "12", "--eval-every", "6", "--eval-samples", "20", "--n-latent", "8"]
        + ["--latent", "categorical", "--n-classes", "3", "--out", str(out), "--quiet"]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["steps_per_second"] > 0
    assert summary["test"]["nll"] <= summary["test"]["nll_1"] + 1e-6  # log-mean-exp <= mean
    assert (out / "completions.png").read_bytes()[:8] == PNG_SIGNATURE
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"]["model"]["n_layers"] == 2
    # An estimator that does not support the layers' distribution: exit status 2.
    assert main(["sbn", "--estimator", "arm", "--latent", "categorical", "--out", str(out)]) == 2


def test_cli_reads_an_npz_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, (40, 6, 4), dtype=np.uint8))
    argv = ["sbn", "--dataset", f"mnist-npz:{path}", "--steps", "4", "--eval-every", "0"]
    argv += ["--eval-samples", "5", "--n-latent", "4", "--estimator", "disarm"]
    assert main(argv + ["--out", str(tmp_path / "o"), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "upper 12 -> lower 12 pixels" in text
    assert "test NLL of the lower half (m=5)" in text
