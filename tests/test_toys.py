"""The seeds' worked examples (discograd.experiments.toys and ``discograd toy``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats as sps

from discograd.cli import main
from discograd.experiments import toys
from tests.stats import assert_mean_close, mean_is_close

A, B, THETA = 2.0, 1.0, 0.3


@pytest.mark.parametrize("name", ["reinforce", "reparam"])
def test_gaussian_gradients_are_unbiased(name):
    gen = torch.Generator().manual_seed(0)
    draws = toys.gaussian_gradients(name, A, B, THETA, repeats=20000, generator=gen)
    exact = torch.tensor(2 * A * (A * THETA + B), dtype=torch.float64)
    assert_mean_close(draws, exact)
    # The variance matches the closed form (4 standard errors of a variance estimate, whose
    # variance is (m4 - s^4) / n for n draws).
    n = draws.numel()
    m4 = ((draws - draws.mean()) ** 4).mean()
    var_se = float(((m4 - draws.var() ** 2) / n).sqrt())
    assert abs(float(draws.var()) - toys.gaussian_variance(name, A, B, THETA, 1)) < 4 * var_se


def test_gaussian_sample_dependent_baseline_is_rejected():
    # Negative control: the score function with the baseline b = z, which depends on the sample
    # it multiplies, is biased by -a (E[z * a (z - mu)] = a).
    gen = torch.Generator().manual_seed(1)
    mu = A * THETA + B
    z = mu + torch.randn(20000, generator=gen, dtype=torch.float64)
    biased = (z**2 - z) * A * (z - mu)
    assert not mean_is_close(biased, torch.tensor(2 * A * mu, dtype=torch.float64))


def test_gaussian_toy_descends_to_minus_b_over_a(tmp_path):
    s = toys.gaussian(tmp_path, sample_counts=(1, 16), repeats=500, steps=120, n_samples=16, seed=0)
    star = -B / A
    assert s["theta_star"] == star
    assert abs(s["descent"]["reparam"]["theta_final"] - star) < 0.05
    assert abs(s["descent"]["reinforce"]["theta_final"] - star) < 0.2
    first = {name: rows[0]["variance"] for name, rows in s["variance"].items()}
    assert first["reinforce"] > 10 * first["reparam"]  # exact ratio at theta0 = 1: 55.5
    assert (tmp_path / "gaussian.png").exists()


def test_chi_square_matches_scipy():
    counts = torch.tensor([30.0, 52.0, 18.0, 100.0], dtype=torch.float64)
    probs = torch.tensor([0.15, 0.25, 0.1, 0.5], dtype=torch.float64)
    ours = toys.chi_square(counts, probs)
    ref = sps.chisquare(counts.numpy(), probs.numpy() * 200)
    assert ours["df"] == 3
    assert ours["statistic"] == pytest.approx(ref.statistic, rel=1e-10)
    assert ours["pvalue"] == pytest.approx(ref.pvalue, rel=1e-8)


def test_gumbel_max_frequencies_match_softmax(tmp_path):
    s = toys.gumbel_max(tmp_path, n=50_000, seed=3)
    assert s["chi_square"]["pvalue"] > 1e-3
    assert (tmp_path / "gumbel_max.png").exists()
    # Negative control: Gaussian noise in place of Gumbel noise does not give softmax.
    gen = torch.Generator().manual_seed(3)
    mu = torch.tensor(s["logits"], dtype=torch.float64)
    wrong = (mu + torch.randn(50_000, mu.numel(), generator=gen, dtype=torch.float64)).argmax(-1)
    counts = torch.bincount(wrong, minlength=mu.numel())
    assert toys.chi_square(counts, torch.softmax(mu, -1))["pvalue"] < 1e-6


def test_concrete_samples_approach_vertices(tmp_path):
    s = toys.concrete(tmp_path, temperatures=(5.0, 1.0, 0.1, 0.02), n=2000, grid=24, seed=0)
    rows = s["temperatures"]
    means = [r["mean_max_coordinate"] for r in rows]
    assert means == sorted(means)  # closer to a vertex as tau decreases
    assert rows[0]["near_vertex_0.99"] == 0.0
    assert rows[-1]["near_vertex_0.99"] > 0.9
    # argmax of a Concrete sample is the Gumbel-max draw, distributed as softmax at every tau.
    for r in rows:
        assert r["vertex_chi_square"]["pvalue"] > 1e-3
    assert (tmp_path / "concrete.png").exists()


def test_ternary_maps_vertices_and_centre():
    pts = torch.cat([torch.eye(3), torch.full((1, 3), 1 / 3)]).double()
    xy = toys.ternary(pts)
    expected = torch.tensor([[0, 0], [1, 0], [0.5, 3**0.5 / 2], [0.5, 3**0.5 / 6]]).double()
    assert torch.allclose(xy, expected)


def test_bitflip_runs_and_writes(tmp_path):
    s = toys.bitflip(
        tmp_path,
        estimator_names=("reinforce", "disarm", "arm"),
        steps=40,
        probe_every=20,
        probe_draws=400,
        lr=0.05,
        seed=0,
    )
    assert set(s["runs"]) == {"reinforce", "disarm", "arm"}
    assert s["skipped"] == {}
    assert (tmp_path / "bitflip.png").exists()
    exact = s["exact_gradient_at_0"]
    for name, run in s["runs"].items():
        assert run["step"] == [0, 20, 40]
        # At theta = 0 the unbiased estimators' mean gradient is the exact one (4 SE).
        se = (run["grad_variance"][0] / 400) ** 0.5
        assert abs(run["grad_mean"][0] - exact) <= 4 * se + 1e-12, name
        assert run["loss"][-1] < run["loss"][0]  # the exact loss went down
        # The logged loss is the exact one at the final theta.
        theta = torch.tensor([run["theta_final"]], dtype=torch.float64)
        assert run["loss"][-1] == pytest.approx(float(toys.bitflip_loss(theta, 0.45)))
    # DisARM is exact at theta = 0 (the antithetic pair always differs there).
    assert s["runs"]["disarm"]["grad_variance"][0] < 1e-20


def test_bitflip_refuses_unknown_estimators_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(toys, "_bitflip_run", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(ValueError, match="estimator_names: unknown estimator 'no-such'"):
        toys.bitflip(tmp_path, estimator_names=("reinforce", "no-such"), steps=2)


def test_bitflip_loss_is_the_expectation():
    theta = torch.tensor([-1.3, 0.0, 2.0], dtype=torch.float64)
    p = torch.sigmoid(theta)
    t = 0.3
    assert torch.allclose(toys.bitflip_loss(theta, t), p * 0.7**2 + (1 - p) * 0.3**2)


def test_cli_toy_gumbel_max(tmp_path, capsys):
    rc = main(["toy", "gumbel-max", "--n", "3000", "--logits", "0,1,2", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "chi-square" in out and "p-value" in out
    data = json.loads((tmp_path / "gumbel_max.json").read_text())
    assert data["n"] == 3000 and np.isclose(sum(data["frequencies"]), 1.0)
    assert (tmp_path / "gumbel_max.png").exists()


def test_cli_toy_without_name_prints_help(capsys):
    assert main(["toy"]) == 2
    assert "gaussian" in capsys.readouterr().out


def test_cli_toy_bad_option(tmp_path, capsys):
    assert main(["toy", "gumbel-max", "--n", "0", "--out", str(tmp_path)]) == 2
    assert "n must be" in capsys.readouterr().err
