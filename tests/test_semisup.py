"""M2: marginalization over the class equals an explicit sum over classes, sampling y is an
unbiased estimate of it, the 100-class (digit, bucket) labels, and ``discograd semisup``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from discograd import estimators
from discograd.cli import main
from discograd.models.m2 import M2, class_labels, labeled_subset
from tests.stats import assert_mean_close, mean_is_close

K = 4


def _model():
    torch.manual_seed(0)
    model = M2(x_dim=12, n_classes=K, z_dim=3, hidden=(8,)).double()
    with torch.no_grad():  # a clearly non-uniform q(y|x)
        model.classifier[-1].bias.copy_(torch.tensor([2.0, 0.0, -1.0, 0.5]))
    return model


def _x(b=5):
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((b, 12), 0.4, dtype=torch.float64), generator=g)


def _explicit(model, x, eps, with_entropy=True):
    """sum_y q(y|x) L(x, y) - H(q(y|x)), one class at a time."""
    log_q = torch.log_softmax(model.class_logits(x), -1)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for c in range(K):
        y = torch.full((x.shape[0],), c, dtype=torch.long)
        total = total + log_q[:, c].exp() * model.labeled_loss(x, y, eps)
    entropy = -(log_q.exp() * log_q).sum(-1)
    return total - entropy if with_entropy else total


def _grads(model, value):
    model.zero_grad()
    value.sum().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


@pytest.mark.parametrize(
    "size, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_semisupervised_experiment_checks_eval_batch_size(size, error):
    # 0 failed at the first evaluation (range() arg 3 must not be zero); -1 evaluated no
    # example and reported zeros.
    from discograd.data import load_digits
    from discograd.models.m2 import SemiSupervisedExperiment

    data = load_digits()
    model = M2(data.dim, 10, z_dim=2, hidden=(4,))
    with pytest.raises(error, match="eval_batch_size"):
        SemiSupervisedExperiment(data, model, estimators.get("exact"), eval_batch_size=size)
    exp = SemiSupervisedExperiment(data, model, estimators.get("exact"), eval_batch_size=7)
    out = exp.evaluate("valid", torch.Generator().manual_seed(0))
    assert out["neg_elbo"] > 0 and 0 <= out["accuracy"] <= 1


def test_marginalization_equals_an_explicit_sum_over_classes():
    model, x = _model(), _x()
    eps = model.noise(x, torch.Generator().manual_seed(2))
    explicit = _explicit(model, x, eps)
    exact_est = estimators.get("exact", batch_dims=1)
    through_exact, _ = model.unlabeled_loss(x, exact_est, eps)
    batched = model.marginal_loss(x, eps)
    torch.testing.assert_close(through_exact, explicit)
    torch.testing.assert_close(batched, explicit)
    g = _grads(model, explicit)
    torch.testing.assert_close(_grads(model, model.unlabeled_loss(x, exact_est, eps)[0]), g)
    torch.testing.assert_close(_grads(model, model.marginal_loss(x, eps)), g)
    # Negative control: the same sum without the entropy of q(y|x) is another number.
    assert not torch.allclose(_explicit(model, x, eps, with_entropy=False), explicit)


def test_sampled_class_is_an_unbiased_estimate_of_the_marginal():
    """ST Gumbel-softmax's forward value is f at an exact sample of q(y|x): its mean over many
    draws is the marginalized loss. Sampling y uniformly instead is rejected."""
    model, x = _model(), _x(b=1)
    eps = model.noise(x, torch.Generator().manual_seed(2))
    exact = _explicit(model, x, eps).detach()
    n = 4000
    xs, es = x.expand(n, -1), eps.expand(n, -1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        draws, _ = model.unlabeled_loss(xs, estimators.get("st-gumbel-softmax"), es, g)
        assert_mean_close(draws, exact.expand(n)[:1].squeeze())
        logits = torch.zeros(n, K, dtype=torch.float64)
        uniform = estimators.get("st-gumbel-softmax")(
            lambda y: model.neg_elbo_given_y(xs, y, es), logits, generator=g
        ) + model.kl_y(model.class_logits(xs))
    assert not mean_is_close(uniform, exact.squeeze())


def test_hundred_classes_are_digit_bucket_pairs():
    digits = torch.arange(10).repeat(200)
    labels = class_labels(digits, 100, seed=0)
    assert torch.equal(labels // 10, digits)
    assert set((labels % 10).tolist()) == set(range(10))
    assert torch.equal(class_labels(digits, 10), digits)
    chosen = labeled_subset(labels, 100, 100, seed=0)
    assert chosen.numel() == 100 and torch.equal(labels[chosen].sort().values, torch.arange(100))
    counts = torch.bincount(digits[labeled_subset(digits, 30, 10)], minlength=10)
    assert counts.tolist() == [3] * 10
    with pytest.raises(ValueError, match="multiple of 10"):
        class_labels(digits, 15)
    with pytest.raises(ValueError, match="n_labeled"):
        labeled_subset(digits, 0, 10)
    with pytest.raises(ValueError, match="n_classes"):
        M2(12, 1)


def test_cli_trains_and_reports_accuracy_bound_and_speed(tmp_path):
    out = tmp_path / "run"
    base = ["semisup", "--steps", "10", "--eval-every", "5", "--hidden", "16", "--z-dim", "4"]
    assert main(base + ["--estimator", "st-gumbel-softmax", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    test = summary["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and test["neg_elbo"] > 0
    assert summary["steps_per_second"] > 0
    # 100 classes of (digit, bucket) pairs, marginalized: the digit accuracy is reported too.
    out100 = tmp_path / "run100"
    argv = base + ["--n-classes", "100", "--estimator", "exact", "--out", str(out100)]
    assert main(argv + ["--quiet", "--no-plots", "--steps", "3"]) == 0
    test100 = json.loads((out100 / "summary.json").read_text())["test"]
    assert test100["digit_accuracy"] >= test100["accuracy"]
    config = json.loads((out100 / "config.json").read_text())["experiment"]
    assert config["model"]["n_classes"] == 100 and config["estimator"] == "exact"


def test_speed_test_writes_a_table_with_speedups(tmp_path):
    out = tmp_path / "speed"
    argv = ["semisup", "--speed", "--speed-classes", "10,40", "--speed-steps", "2"]
    argv += ["--speed-rounds", "1", "--hidden", "16", "--z-dim", "4", "--batch-size", "40"]
    assert main(argv + ["--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "speed.json").read_text())["rows"]
    assert [(r["classes"], r["estimator"]) for r in rows[:3]] == [
        (10, "exact"),
        (10, "gumbel-softmax"),
        (10, "st-gumbel-softmax"),
    ]
    assert all(r["steps_per_second"] > 0 and math.isfinite(r["speedup"]) for r in rows)
    assert rows[0]["speedup"] == 1.0
    assert "| 40 | exact (marginalization) |" in (out / "speed.md").read_text()
