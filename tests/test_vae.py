"""The discrete VAE: loss shapes, exact ELBO and IW bound against enumeration, the CLI job."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from discograd.estimators import get
from discograd.models import DiscreteVAE
from discograd.train import load_checkpoint, seeded
from tests.stats import assert_mean_close, mean_is_close

LATENTS = ["categorical", "bernoulli"]


def tiny(latent: str, n_latent: int = 2, n_classes: int = 3, sharpen: float = 3.0, seed=0):
    """A float64 model small enough to enumerate, with weights scaled up so that q(z|x) is far
    from the posterior (a large ELBO gap)."""
    with seeded(seed):
        model = DiscreteVAE(6, n_latent, n_classes, hidden=(8,), latent=latent).double()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(sharpen)
        x = torch.bernoulli(torch.full((3, 6), 0.5, dtype=torch.float64))
    return model, x


def enumerate_z(model: DiscreteVAE) -> torch.Tensor:
    """Every z: (C, N, K) one-hot or (C, N) bits."""
    k = model.n_classes
    codes = torch.tensor(list(itertools.product(range(k), repeat=model.n_latent)))
    if model.latent == "categorical":
        return F.one_hot(codes, k).double()
    return codes.double()


def exact(model: DiscreteVAE, x: torch.Tensor):
    """log p(x), ELBO and KL(q || prior) per example, by summing over every z."""
    z = enumerate_z(model)
    zb = z.unsqueeze(1).expand((z.shape[0], x.shape[0]) + z.shape[1:])  # (C, B, ...)
    log_lik = model.log_likelihood(x, zb)  # (C, B)
    log_prior = -model.n_latent * math.log(model.n_classes)
    logits = model.encode(x)
    if model.latent == "categorical":
        log_q = (zb * torch.log_softmax(logits, -1)).sum((-2, -1))
    else:
        log_q = (zb * F.logsigmoid(logits) + (1 - zb) * F.logsigmoid(-logits)).sum(-1)
    q = log_q.exp()
    assert torch.allclose(q.sum(0), torch.ones(x.shape[0], dtype=torch.float64))
    log_px = torch.logsumexp(log_lik + log_prior, 0)
    elbo = (q * (log_lik + log_prior - log_q)).sum(0)
    kl = (q * (log_q - log_prior)).sum(0)
    return log_px, elbo, kl


# -- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("latent", LATENTS)
def test_shapes(latent):
    model = DiscreteVAE(10, 3, 4, hidden=(16, 8), latent=latent)
    x = torch.bernoulli(torch.full((5, 10), 0.3))
    rows = (5, 3, 4) if latent == "categorical" else (5, 3)
    logits = model.encode(x)
    assert logits.shape == rows
    z = model.family(logits).sample(7, torch.Generator().manual_seed(0))
    assert z.shape == (7,) + rows
    assert model.decode(z).shape == (7, 5, 10)
    assert model.log_likelihood(x, z).shape == (7, 5)
    assert model.log_prior(z).shape == (7, 5)
    assert model.kl(logits).shape == (5,)
    assert model.log_weights(x, 9, chunk=4).shape == (9, 5)
    assert model.neg_iw_bound(x, 9).shape == (5,)
    assert all(t.shape == (5,) for t in model.neg_elbo(x, n_samples=3))
    assert model.sample_prior(4).shape == model.reconstruct(x[:4]).shape == (4, 10)

    seen = []

    def spy(f, logits, **kw):  # what the estimator hands f, and what f gives back
        z = torch.zeros((2,) + logits.shape)
        seen.append(f(z).shape)
        return get("st-gumbel-softmax", n_samples=2)(f, logits, **kw)

    loss, terms = model.loss(x, spy, torch.Generator().manual_seed(1))
    assert loss.shape == () and set(terms) == {"rec", "kl"}
    assert seen == [(2, 5)]
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="latent"):
        DiscreteVAE(4, 2, 3, latent="gaussian")
    with pytest.raises(ValueError, match="n_classes"):
        DiscreteVAE(4, 2, 1)
    with pytest.raises(ValueError, match="m must"):
        DiscreteVAE(4, 2, 3).neg_iw_bound(torch.zeros(1, 4), 0)


@pytest.mark.parametrize("latent", LATENTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_sample_prior_in_the_models_dtype(latent, dtype):
    # The prior's zero logits were float32 whatever the model: a float64 or bfloat16 decoder
    # refused them (mat1 and mat2 must have the same dtype).
    model = DiscreteVAE(10, 3, 4, hidden=(8,), latent=latent).to(dtype)
    pixels = model.sample_prior(5, torch.Generator().manual_seed(0))
    assert pixels.shape == (5, 10) and pixels.dtype == dtype
    assert bool(((pixels >= 0) & (pixels <= 1)).all())


@pytest.mark.parametrize(
    "size, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_vae_experiment_checks_eval_batch_size(size, error):
    # 0 failed at the first evaluation (range() arg 3 must not be zero); -1 evaluated no
    # example and reported 0.0 for every metric.
    from discograd.data import load_digits
    from discograd.models import VAEExperiment

    data = load_digits()
    model = DiscreteVAE(data.dim, 2, 3, hidden=(4,))
    with pytest.raises(error, match="eval_batch_size"):
        VAEExperiment(data, model, get("st"), eval_batch_size=size)
    exp = VAEExperiment(data, model, get("st"), eval_batch_size=7, iw_samples=2)
    out = exp.evaluate("valid", torch.Generator().manual_seed(0))
    assert out["neg_elbo"] > 0 and out["neg_iw"] > 0


# -- exact values ------------------------------------------------------------------------------


@pytest.mark.parametrize("latent", LATENTS)
def test_loss_with_exact_estimator_is_the_negative_elbo(latent):
    model, x = tiny(latent)
    log_px, elbo, kl = exact(model, x)
    assert torch.allclose(model.kl(model.encode(x)), kl, atol=1e-12)
    loss, terms = model.loss(x, get("exact"))
    assert loss.item() == pytest.approx(-elbo.mean().item(), abs=1e-10)
    assert (elbo < log_px).all()  # the model has a gap for the tests below to close


@pytest.mark.parametrize("latent", LATENTS)
def test_iw_bound_is_exact_when_q_is_the_posterior(latent):
    # One latent variable: the posterior p(z|x) of one x is a single categorical, which the
    # encoder outputs exactly when its last layer is its bias, set to log p(z|x).
    model, x = tiny(latent, n_latent=1, n_classes=5)
    x = x[:1]
    z = enumerate_z(model).unsqueeze(1)  # (C, 1, N[, K])
    log_joint = model.log_likelihood(x, z)[:, 0]  # (C,); the prior is uniform
    log_post = torch.log_softmax(log_joint, 0)
    with torch.no_grad():
        last = model.encoder[-1]
        last.weight.zero_()
        last.bias.copy_(log_post if latent == "categorical" else log_post[1:] - log_post[:1])
    log_px, elbo, _ = exact(model, x)
    gen = torch.Generator().manual_seed(0)
    for m in (1, 7, 100):
        assert -model.neg_iw_bound(x, m, gen).item() == pytest.approx(log_px.item(), abs=1e-10)
    assert elbo.item() == pytest.approx(log_px.item(), abs=1e-10)


def iw_draws(model, x, m: int, reps: int, seed: int, drop_log_m: bool = False):
    """reps independent draws of the IW bound L_m for each x: (reps, B)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        log_w = model.log_weights(x, m * reps, gen, chunk=m * reps).reshape(reps, m, -1)
    return torch.logsumexp(log_w, 1) - (0.0 if drop_log_m else math.log(m))


def below(draws, value, n_se=4.0) -> bool:
    """One-sided: the mean of draws is not above value by more than n_se standard errors."""
    se = draws.std(0) / draws.shape[0] ** 0.5
    return bool((draws.mean(0) - value <= n_se * se).all())


@pytest.mark.parametrize("latent", LATENTS)
def test_iw_bound_statistics(latent):
    model, x = tiny(latent, n_latent=2 if latent == "categorical" else 4)
    log_px, elbo, _ = exact(model, x)
    reps = 4000
    draws = {m: iw_draws(model, x, m, reps, seed=m) for m in (1, 8, 64)}

    # L_1 is the ELBO (an unbiased estimate of it), and every L_m is below log p(x).
    assert_mean_close(draws[1], elbo)
    for m, d in draws.items():
        assert below(d, log_px), m
    # It tightens as m grows: each step up in m raises the mean by more than 4 SE.
    for a, b in ((1, 8), (8, 64)):
        diff = draws[b].mean(0) - draws[a].mean(0)
        se = (draws[a].var(0) / reps + draws[b].var(0) / reps).sqrt()
        assert (diff > 4 * se).all(), (a, b, diff, se)
    gap = log_px - draws[64].mean(0)
    assert (gap < 0.5 * (log_px - elbo)).all()

    # Negative controls: without the -log m the "bound" rises above log p(x), and L_8 is not
    # the ELBO; the same checks reject both.
    assert not below(iw_draws(model, x, 8, reps, seed=8, drop_log_m=True), log_px)
    assert not mean_is_close(draws[8], elbo)


# -- the command line ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd, extra_path=None):
    """``python -m discograd ARGS`` in a fresh interpreter, with this checkout's src (after
    ``extra_path``, if given) first on the import path."""
    paths = [extra_path, ROOT / "src", os.environ.get("PYTHONPATH")]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(str(p) for p in paths if p),
    )
    return subprocess.run(
        [sys.executable, "-m", "discograd", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_vae_job_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_job = ["vae", "--steps", "30", "--batch-size", "16", "--hidden", "16", "--n-latent",
                "3", "--n-classes", "4", "--eval-every", "10", "--ckpt-every", "10",
                "--log-every", "5", "--iw-samples", "5", "--out", str(out)]  # fmt: skip
    proc = run_cli(*tiny_job, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "data: digits" in proc.stdout
    assert "test negative ELBO" in proc.stdout and "importance-weighted bound (m=5)" in proc.stdout

    for name in ("reconstructions.png", "samples.png", "training_curve.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        mpimg = pytest.importorskip("matplotlib.image")
        assert mpimg.imread(out / name).ndim == 3
    table = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in table if r["split"] == "train"] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in table if r["split"] == "valid"] == [10, 20, 30]
    test = [r for r in table if r["split"] == "test"]
    assert len(test) == 1 and {"neg_elbo", "neg_iw", "kl", "rec"} <= set(test[0])
    assert table[0]["estimator"] and "temperature" in table[0]
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"]["model"]["n_latent"] == 3
    assert config["train"]["steps"] == 30
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 30
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["neg_elbo"] == pytest.approx(test[0]["neg_elbo"])

    # Resume in-process (the same entry point as the script) to spare a second interpreter.
    args = parse(*tiny_job[1:2], "40", *tiny_job[3:], "--resume", "--no-plots")
    assert args.func(args) == 0
    assert "resuming from step 30" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 40


def test_help_lists_the_options(capsys):
    from discograd.cli import main

    with pytest.raises(SystemExit) as top:
        main(["--help"])
    assert top.value.code == 0
    assert "vae" in capsys.readouterr().out
    with pytest.raises(SystemExit) as sub:
        main(["vae", "--help"])
    assert sub.value.code == 0
    text = capsys.readouterr().out
    for option in ("--estimator", "--tau", "--tau-schedule", "--tau-min", "--anneal-rate",
                   "--anneal-every", "--latent", "--n-latent", "--n-classes", "--hidden",
                   "--steps", "--batch-size", "--lr", "--seed", "--eval-every", "--ckpt-every",
                   "--out", "--resume", "--iw-samples", "--dataset", "--quiet"):  # fmt: skip
        assert option in text, option
    assert "reinforce" in text  # the estimator names are listed


def parse(*argv):
    from discograd.cli import vae

    parser = argparse.ArgumentParser(prog="discograd")
    vae.add_parser(parser.add_subparsers())
    # --threads 0: leave the test process's torch threads as they are.
    return parser.parse_args(["vae", *argv, "--threads", "0"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--estimator", "nope"], "unknown estimator 'nope'"),
        (["--dataset", "nope"], "nope"),
        (["--estimator-option", "novalue"], "KEY=VALUE"),
        (["--estimator", "st", "--estimator-option", "colour=1"], "colour"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, capsys, argv, message):
    args = parse(*argv, "--out", str(tmp_path), "--quiet")
    assert args.func(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("latent", LATENTS)
def test_every_registered_estimator_trains_the_vae(tmp_path, capsys, latent):
    from discograd.cli.vae import build_estimator
    from discograd.estimators import available

    x = torch.bernoulli(torch.full((4, 6), 0.5), generator=torch.Generator().manual_seed(0))
    for name in available():
        args = parse("--estimator", name, "--latent", latent, "--out", str(tmp_path), "--quiet")
        estimator, _ = build_estimator(args)
        if latent not in estimator.distributions:
            assert args.func(args) == 2, name
            assert "does not support --latent" in capsys.readouterr().err, name
            continue
        model = DiscreteVAE(6, 2, 3, hidden=(8,), latent=latent)
        loss, terms = model.loss(x, estimator, torch.Generator().manual_seed(1))
        loss.backward()
        assert torch.isfinite(loss), name
        assert model.encoder[-1].weight.grad.abs().sum() > 0, name  # the estimator's gradient


def test_vae_job_in_process_with_bernoulli_latents_and_annealing(tmp_path):
    args = parse("--latent", "bernoulli", "--n-latent", "6", "--hidden", "16", "--steps", "20",
                 "--tau-schedule", "exp", "--tau", "1", "--anneal-rate", "0.05",
                 "--anneal-every", "5", "--log-every", "5", "--iw-samples", "0", "--no-plots",
                 "--quiet", "--out", str(tmp_path))  # fmt: skip
    assert args.func(args) == 0
    table = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    taus = [r["temperature"] for r in table if r["split"] == "train"]
    assert taus[0] == 1.0 and taus[-1] == pytest.approx(max(0.5, math.exp(-0.05 * 15)))
    assert "neg_iw" not in table[-1]


def test_vae_preset_sets_the_papers_options_and_the_command_line_wins():
    from discograd.cli import build_parser

    args = build_parser().parse_args(["vae", "--preset", "jang-categorical", "--steps", "7"])
    assert (args.n_latent, args.n_classes, args.batch_size) == (20, 10, 100)
    assert args.steps == 7
    default = build_parser().parse_args(["vae"])
    assert (default.n_latent, default.batch_size) != (20, 100)


def test_experiments_evaluate_on_one_static_draw_per_split():
    """VAE, SBN and M2 experiments share discograd.data.binarize.StaticSplits: each split is
    Bernoulli(intensity) drawn once with binarize_seed, kept, and the same in all three."""
    from discograd.data import load_digits
    from discograd.data.binarize import binarize
    from discograd.models import VAEExperiment
    from discograd.models.m2 import M2, SemiSupervisedExperiment
    from discograd.models.sbn import SBNExperiment, StochasticBinaryNetwork

    data = load_digits()
    half = data.dim // 2
    experiments = [
        VAEExperiment(data, DiscreteVAE(data.dim, 2, 3, hidden=(4,)), get("st"), binarize_seed=5),
        SBNExperiment(
            data, StochasticBinaryNetwork(half, half, n_latent=2), [get("st")] * 2, binarize_seed=5
        ),
        SemiSupervisedExperiment(data, M2(data.dim, 10, z_dim=2, hidden=(4,)), get("exact"),
                                 binarize_seed=5),
    ]  # fmt: skip
    for split in ("valid", "test"):
        expected = binarize(getattr(data, split), "static", seed=5)
        assert set(expected.unique().tolist()) == {0.0, 1.0}
        for exp in experiments:
            first = exp.binarized(split)
            assert torch.equal(first, expected) and exp.binarized(split) is first  # cached
    other = VAEExperiment(data, DiscreteVAE(data.dim, 2, 3, hidden=(4,)), get("st"))
    assert not torch.equal(other.binarized("test"), experiments[0].binarized("test"))  # seed 0
    with pytest.raises(ValueError, match="split"):
        experiments[1].binarized("validation")
