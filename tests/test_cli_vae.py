"""``discograd vae``: --device reaches the training loop, bad devices are clear errors, and
summary.json's steps_per_second leaves out evaluation time."""

from __future__ import annotations

import json
import time

import pytest
import torch

from discograd.cli import main
from discograd.cli.vae import check_device

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
    assert json.loads((out / "summary.json").read_text())["device"] == "cpu"


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_invalid_device_is_a_clear_error_before_any_work(tmp_path, capsys, device):
    out = tmp_path / "run"
    assert main([*TINY, "--device", device, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("discograd vae: error: --device") and repr(device) in err
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
