"""``discograd vae``: --device reaches the training loop, bad devices are clear errors, and
summary.json's steps_per_second leaves out evaluation time; the option groups every training
command shares (discograd.cli._common) keep each command's own defaults."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from discograd.cli import build_parser, main
from discograd.cli._common import check_device, temperature

TINY = ["vae", "--steps", "12", "--batch-size", "16", "--hidden", "8", "--n-latent", "2",
        "--n-classes", "3", "--log-every", "4", "--iw-samples", "0", "--no-plots", "--quiet",
        "--threads", "0"]  # fmt: skip


def test_check_device_accepts_cpu_and_names_the_option_otherwise():
    assert check_device("cpu") == "cpu"
    assert check_device("cpu:0") == "cpu:0"
    for bad in ("bogus", "cuda:x", ""):
        with pytest.raises(ValueError, match="--device"):
            check_device(bad)
    # Past the last GPU where there are GPUs, no CUDA at all where there are none.
    with pytest.raises(ValueError, match="--device 'cuda:99'"):
        check_device("cuda:99")


def test_device_reaches_the_train_config_and_the_model(tmp_path, monkeypatch):
    import discograd.train as train

    seen = {}
    real_fit = train.fit

    def spy(experiment, config):
        result = real_fit(experiment, config)
        seen["config"] = config
        seen["params"] = {p.device for p in experiment.model.parameters()}
        return result

    monkeypatch.setattr(train, "fit", spy)
    out = tmp_path / "run"
    assert main([*TINY, "--device", "cpu", "--out", str(out)]) == 0
    assert seen["config"].device == "cpu"
    assert seen["params"] == {torch.device("cpu")}
    assert json.loads((out / "config.json").read_text())["train"]["device"] == "cpu"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["experiment"], summary["device"]) == ("vae", "cpu")


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
@pytest.mark.parametrize("argv", [TINY, ["sbn"], ["semisup"], ["semisup", "--speed"], ["gan"]])
def test_invalid_device_is_a_clear_error_before_any_work(tmp_path, capsys, argv, device):
    out = tmp_path / "run"
    assert main([*argv, "--device", device, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"discograd {argv[0]}: error: --device {device!r}")
    assert not out.exists()  # nothing trained, nothing written


def test_steps_per_second_excludes_evaluation_time(tmp_path, monkeypatch):
    """Each evaluation is made 0.25 s slower: ``seconds`` grows by that, ``train_seconds``
    does not (it may only differ by the clock reads around evaluate)."""
    from discograd.models import VAEExperiment

    calls = []
    evaluate = VAEExperiment.evaluate

    def slow(self, split, generator):
        calls.append(split)
        time.sleep(0.25)
        return evaluate(self, split, generator)

    monkeypatch.setattr(VAEExperiment, "evaluate", slow)
    out = tmp_path / "run"
    assert main([*TINY, "--eval-every", "6", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert calls == ["valid", "valid", "test"]  # at step 6, then the final valid and test
    assert summary["seconds"] - summary["train_seconds"] >= 0.25 * len(calls) - 0.02
    # steps / train_seconds, up to train_seconds' rounding to 0.01 s.
    train, rate = summary["train_seconds"], summary["steps_per_second"]
    assert summary["steps"] / (train + 0.006) <= rate <= summary["steps"] / max(train - 0.006, 1e-9)


_LOOP = {"ckpt_every": 1000, "log_every": 50, "anneal_every": 100, "device": "cpu", "seed": 0}
OWN_DEFAULTS = {
    "vae": {"estimator": "st-gumbel-softmax", "tau": 0.5, "tau_schedule": "constant",
            "tau_min": 0.5, "anneal_rate": 3e-4, "steps": 3000, "batch_size": 256, "lr": 2e-3,
            "eval_every": 500, "out": "runs/vae", **_LOOP},
    "gan": {"estimator": "gumbel-softmax", "tau": 0.5, "tau_schedule": "exp", "tau_min": 0.1,
            "anneal_rate": 3e-3, "steps": 2000, "batch_size": 64, "lr": 1e-3, "eval_every": 250,
            "out": "runs/gan", **_LOOP},
    "sbn": {"estimator": "gumbel-softmax", "tau": 1.0, "tau_schedule": "constant",
            "tau_min": 0.5, "anneal_rate": 3e-4, "steps": 2000, "batch_size": 100, "lr": 1e-3,
            "eval_every": 500, "out": "runs/sbn", **_LOOP},
    "semisup": {"estimator": "gumbel-softmax", "tau": 1.0, "tau_schedule": "constant",
                "tau_min": 0.5, "anneal_rate": 3e-4, "steps": 2000, "batch_size": 100,
                "lr": 1e-3, "eval_every": 500, "out": "runs/semisup", **_LOOP},
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(OWN_DEFAULTS))
def test_each_command_keeps_its_own_defaults_of_the_shared_options(command):
    args = build_parser().parse_args([command])
    assert {k: getattr(args, k) for k in OWN_DEFAULTS[command]} == OWN_DEFAULTS[command]


def test_temperature_is_the_constant_or_the_exp_schedule_the_options_give():
    schedule, record = temperature(build_parser().parse_args(["gan"]))
    assert record == {"schedule": "exp", "tau0": 0.5, "rate": 3e-3, "tau_min": 0.1, "every": 100}
    assert schedule(0) == schedule(99) == 0.5
    assert schedule(100) == pytest.approx(0.5 * math.exp(-3e-3 * 100))
    assert schedule(10**6) == 0.1
    args = build_parser().parse_args(["sbn", "--tau", "2"])
    assert temperature(args) == (2.0, {"schedule": "constant", "tau": 2.0})
