"""Numerics of the trainer: mixed precision (bf16, fp16 with loss scaling) trains the VAE along
the fp32 loss curve within run-to-run noise; torch.compile of the training step gives the
eager step's numbers."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from discograd.data import load_digits
from discograd.estimators import get
from discograd.models import DiscreteVAE, VAEExperiment
from discograd.train import TrainConfig, fit, load_checkpoint, save_checkpoint, seeded
from tests.test_train import Crash, Toy, config, params, rows

SEEDS = (0, 1, 2)
STEPS, ROWS = 100, 5


def vae(seed: int, hidden=32, n_latent=4, n_classes=4) -> VAEExperiment:
    # No init_output_bias: the loss then falls from ~44 to ~27 nats in 100 steps while the
    # decoder finds the pixel intensities, a descent steep and reproducible enough that a
    # curve which truly differs stands out of the seed-to-seed noise (see the control).
    with seeded(seed):
        model = DiscreteVAE(64, n_latent, n_classes, (hidden,))
    return VAEExperiment(DATA, model, get("st-gumbel-softmax"), iw_samples=0)


DATA = load_digits()


def curve(tmp_path, precision: str, seed: int, lr: float = 1e-2) -> np.ndarray:
    """Training loss of a short VAE run, averaged over each fifth of it: (ROWS,)."""
    out = tmp_path / f"{precision}-{lr}-{seed}"
    cfg = TrainConfig(steps=STEPS, batch_size=32, lr=lr, seed=seed, eval_every=0, ckpt_every=0,
                      log_every=STEPS // ROWS, out_dir=str(out), quiet=True, final_splits=(),
                      precision=precision)  # fmt: skip
    fit(vae(seed), cfg)
    return np.array([r["loss"] for r in rows(out) if r["split"] == "train"])


def z_scores(curves: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row: (mean of curves - mean of reference) / standard error, the error from the
    reference's seed-to-seed spread (the noise of one run), both over the same seeds."""
    se = reference.std(0, ddof=1) / np.sqrt(reference.shape[0])
    return (curves.mean(0) - reference.mean(0)) / se


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp32")
    return np.stack([curve(tmp, "fp32", s) for s in SEEDS])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_follows_the_fp32_loss_curve(tmp_path, fp32, precision):
    mixed = np.stack([curve(tmp_path, precision, s) for s in SEEDS])
    assert fp32[:, 0].mean() - fp32[:, -1].mean() > 5  # the curve has a shape to compare
    z = z_scores(mixed, fp32)
    assert np.all(np.abs(z) < 4), z


def test_negative_control_a_different_curve_is_rejected(tmp_path, fp32):
    # The same comparison rejects fp32 at 0.7 x the learning rate.
    slower = np.stack([curve(tmp_path, "fp32", s, lr=7e-3) for s in SEEDS])
    assert np.any(np.abs(z_scores(slower, fp32)) > 4), z_scores(slower, fp32)


def test_autocast_is_active_in_training_and_off_in_evaluation(tmp_path):
    exp = vae(0)
    seen = []
    exp.model.encoder[0].register_forward_hook(
        lambda module, inputs, output: seen.append((module.training, output.dtype))
    )
    cfg = TrainConfig(steps=2, batch_size=8, eval_every=0, ckpt_every=0, out_dir=str(tmp_path),
                      quiet=True, final_splits=("valid",), precision="bf16")  # fmt: skip
    fit(exp, cfg)
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in exp.model.parameters())  # fp32 master weights


def test_fp16_loss_scale_is_logged_and_resumed_exactly(tmp_path):
    def run(folder, **kw):
        toy = Toy(get("st"), **kw)
        fit(toy, config(folder, precision="fp16", log_every=1))
        return toy

    full = run(tmp_path / "full")
    scales = [r["loss_scale"] for r in rows(tmp_path / "full") if r["split"] == "train"]
    assert scales[0] < 2.0**16  # the first steps overflowed fp16 and were skipped
    with pytest.raises(Crash):
        run(tmp_path / "cut", crash_at=6)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ckpt["scaler"]["scale"] == scales[3]
    resumed = Toy(get("st"))
    fit(resumed, config(tmp_path / "cut", precision="fp16", log_every=1, resume=True))
    assert all(torch.equal(v, params(resumed)[k]) for k, v in params(full).items())
    # Negative control: the same resume with the scaler's state dropped (back to 2^16).
    ckpt["scaler"] = None
    save_checkpoint(ckpt, tmp_path / "cut" / "checkpoint.pt")
    lost = Toy(get("st"))
    fit(lost, config(tmp_path / "cut", precision="fp16", log_every=1, resume=True))
    assert not all(torch.equal(v, params(lost)[k]) for k, v in params(full).items())


def test_bad_precision_is_a_clear_error(capsys):
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")
    from discograd.cli import vae as vae_cli

    parser = argparse.ArgumentParser(prog="discograd")
    vae_cli.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["vae", "--precision", "fp8"])
    assert "--precision" in capsys.readouterr().err


def test_compiled_step_matches_eager(tmp_path):
    import torch._dynamo

    def run(name, compile):
        exp = vae(0, hidden=16, n_latent=3, n_classes=4)
        cfg = TrainConfig(steps=4, batch_size=16, lr=1e-2, eval_every=0, ckpt_every=0,
                          log_every=1, out_dir=str(tmp_path / name), quiet=True,
                          final_splits=(), compile=compile)  # fmt: skip
        fit(exp, cfg)
        return exp

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compiled = run("compiled", True)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    eager = run("eager", False)
    assert graphs > 0  # torch.compile really traced the step
    loss = [[r["loss"] for r in rows(tmp_path / n)] for n in ("compiled", "eager")]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)
    # Parameters within 1% of one Adam step (lr): the fused kernels round differently, and
    # Adam's g / sqrt(v) magnifies that where a gradient is nearly 0.
    for (k, a), b in zip(compiled.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-4), k
    config_json = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert config_json["train"]["compile"] is True
