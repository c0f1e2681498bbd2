"""``discograd sbn``, ``semisup`` and ``gan`` in several processes and in mixed precision.

The commands run whole (parsing, training, files, printing) in two forked copies of this
process joined in a gloo group (fit uses the group it finds, as under torchrun), once for all
the multi-process assertions; one real ``--nproc 2`` launch checks that the command restarts
itself under torchrun. The single-process ``--precision bf16`` runs check that mixed precision
reaches every command and trains to finite losses.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from discograd import distributed
from discograd.cli import build_parser, main
from discograd.models.m2 import SemiSupervisedExperiment
from discograd.train import load_checkpoint
from tests.test_distributed import run_ranks
from tests.test_train import rows

# Tiny settings of each command. The digits have 1197 training images, 100 of them labeled:
# semisup's batches of 548 leave a last unlabeled batch of 1097 - 2 * 548 = 1 image at step 3,
# fewer rows than processes (the case per-term sharding exists for). sbn's odd batch gives
# shares of 8 and 7.
QUIET = ["--eval-every", "0", "--log-every", "1", "--no-plots"]
JOBS = {
    "sbn": ["sbn", "--steps", "3", "--batch-size", "15", "--n-latent", "6",
            "--eval-samples", "4", *QUIET],
    "semisup": ["semisup", "--steps", "3", "--batch-size", "548", "--hidden", "8",
                "--z-dim", "2", *QUIET],
    "gan": ["gan", "--steps", "3", "--batch-size", "8", "--hidden", "8", "--embed", "4",
            "--d-hidden", "4", "--n-train", "40", "--n-valid", "20", "--eval-samples", "30",
            "--n-show", "10", *QUIET],
}  # fmt: skip
# What each command prints at the end (rank 0 only).
SUMMARY = {"sbn": "test NLL of the lower half", "semisup": "test accuracy:", "gan": "grammatical:"}
FILES = {
    "sbn": {"checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"},
    "semisup": {"checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"},
    "gan": {"checkpoint.pt", "config.json", "metrics.jsonl", "summary.json", "samples.txt"},
}


def job(name: str, out: Path, *extra: str) -> list:
    return [*JOBS[name], "--out", str(out), *extra]


def train_rows(out: Path) -> list:
    return [r for r in rows(out) if r.get("split") == "train"]


def plain(module: torch.nn.Module) -> dict:
    return {
        k: v.detach().numpy().copy() for k, v in module.state_dict().items() if "extra" not in k
    }


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# -- two ranks --------------------------------------------------------------------------------


class OneWeightPerRank(SemiSupervisedExperiment):
    """Negative control: semisup's batches shared as the trainer shares any batch."""

    def shard_batch(self, batch, rank, world_size):
        return distributed.shard(batch, rank, world_size)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Each command on 2 forked ranks, and two negative controls: the GAN without the
    discriminator's gradient average, semisup with the trainer's one-weight-per-rank sharding.
    Per rank: exit codes, what it printed, and the GAN's networks after training."""
    tmp = tmp_path_factory.mktemp("ranks")

    def scenario(rank, world):
        import discograd.train as train
        from discograd.experiments import semisup

        seen = []
        real_fit = train.fit

        def recording_fit(experiment, config):
            seen.append(experiment)
            return real_fit(experiment, config)

        train.fit = recording_fit  # this forked process only
        codes, text = {}, io.StringIO()
        with contextlib.redirect_stdout(text):
            for name in JOBS:
                codes[name] = main(job(name, tmp / name))
            gan = seen[-1].model
            real_average = distributed.all_reduce_gradients
            distributed.all_reduce_gradients = lambda *a, **k: None
            codes["gan-unsynced"] = main(job("gan", tmp / "gan-unsynced"))
            distributed.all_reduce_gradients = real_average
            unsynced = seen[-1].model
            semisup.SemiSupervisedExperiment = OneWeightPerRank  # the trainer's default sharding
            codes["semisup-one-weight"] = main(job("semisup", tmp / "semisup-one-weight"))
        return {
            "codes": codes,
            "stdout": text.getvalue(),
            "d": plain(gan.discriminator),
            "g": plain(gan.generator),
            "unsynced_d": plain(unsynced.discriminator),
            "unsynced_g": plain(unsynced.generator),
        }

    return tmp, run_ranks(scenario, tmp)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_two_processes_train_and_rank0_alone_writes(two_ranks, name):
    tmp, ranks = two_ranks
    assert [r["codes"][name] for r in ranks] == [0, 0]
    out = tmp / name
    assert {p.name for p in out.iterdir()} == FILES[name]
    # One row per step and one final row per split: written by one process.
    assert [r["step"] for r in train_rows(out)] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in train_rows(out))
    finals = [r["split"] for r in rows(out) if r.get("final")]
    assert sorted(finals) == (["samples"] if name == "gan" else ["test", "valid"])
    config = json.loads((out / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
    assert load_checkpoint(out / "checkpoint.pt")["world_size"] == 2
    # Rank 0 prints its messages and the result once; rank 1 prints nothing.
    assert ranks[0]["stdout"].count(SUMMARY[name]) == 1 + (name == "gan")  # + the control
    assert f"output: {out.resolve()}" in ranks[0]["stdout"]
    assert ranks[1]["stdout"] == ""


def test_gan_discriminator_is_identical_on_both_ranks(two_ranks):
    _, (rank0, rank1) = two_ranks
    # The generator is DDP's (averaged by the trainer), the discriminator the experiment's
    # own optimizer, averaged in GANExperiment.loss: after 3 steps of 2 updates each, both
    # networks are the same on both ranks, bit for bit.
    assert same(rank0["g"], rank1["g"]) and same(rank0["d"], rank1["d"])
    # Negative control: without the discriminator's average each rank's copy follows its own
    # share of the batch and drifts apart, while DDP still keeps the generators together.
    assert rank0["codes"]["gan-unsynced"] == 0
    assert same(rank0["unsynced_g"], rank1["unsynced_g"])
    assert not same(rank0["unsynced_d"], rank1["unsynced_d"])


def test_semisup_short_unlabeled_batch_needs_per_term_shares(two_ranks):
    tmp, ranks = two_ranks
    # Step 3's unlabeled part has 1 image for 2 ranks: with per-term shares rank 1 joins with
    # factor 0 and the loss stays finite (asserted above). The trainer's default sharding
    # hands rank 1 an empty unlabeled share, whose mean is NaN: every rank stops.
    assert [r["codes"]["semisup-one-weight"] for r in ranks] == [1, 1]
    assert [r["step"] for r in train_rows(tmp / "semisup-one-weight")] == [1, 2]


def test_m2_shares_average_to_the_batch_loss_and_gradient():
    from discograd.experiments.semisup import build_experiment

    parser = build_parser()
    args = parser.parse_args(["semisup", "--hidden", "8", "--z-dim", "2", "--estimator", "exact"])

    class Data:  # 20 images of 6 pixels, 2 of each digit
        dim = 6
        train, valid, test = (torch.rand(20, 6, generator=torch.Generator().manual_seed(0)),) * 3
        train_labels = valid_labels = test_labels = torch.arange(20) % 10

    args.n_labeled = 10
    exp = build_experiment(args, Data())
    # Zero z-noise and the exact estimator: the loss is a deterministic function of the rows.
    exp.model.noise = lambda x, generator=None: torch.zeros(x.shape[0], 2)
    gen = torch.Generator().manual_seed(1)
    batch = {"x_l": torch.rand(5, 6, generator=gen).round(), "y_l": torch.arange(5),
             "x_u": torch.rand(3, 6, generator=gen).round()}  # fmt: skip
    params = list(exp.model.parameters())

    def loss_and_grad(shares):
        total = torch.zeros(())
        for share, w in shares:
            loss, _ = exp.loss(share, 0, gen)
            total = total + w * loss
        return float(total.detach()), torch.autograd.grad(total, params)

    full, full_grad = loss_and_grad([(batch, 1.0)])
    for n in (2, 4):  # shares 3/2 and 2/1 rows; with 4 ranks some shares are empty
        loss, grad = loss_and_grad([(s, w / n) for s, w in (exp.shard_batch(batch, r, n)
                                                             for r in range(n))])  # fmt: skip
        assert loss == pytest.approx(full, rel=1e-6)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(grad, full_grad))
    # Negative control: one weight per rank (rows of the largest part) is not the batch's.
    loss, grad = loss_and_grad([(s, w / 2) for s, w in (distributed.shard(batch, r, 2)
                                                        for r in range(2))])  # fmt: skip
    assert not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(grad, full_grad))


# -- the launcher -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(JOBS))
def test_options_travel_to_the_workers(tmp_path, name):
    # launch() pickles the parsed options, func included: it must be a module-level function.
    args = build_parser().parse_args(job(name, tmp_path, "--nproc", "2", "--precision", "bf16"))
    back = pickle.loads(pickle.dumps(args))
    assert back.nproc == 2 and back.precision == "bf16" and back.compile is False
    assert back.func is args.func and back.func.__module__ == f"discograd.cli.{name}"


def test_gan_nproc_starts_torchrun(tmp_path, capfd):
    out = tmp_path / "gan"
    assert main(job("gan", out, "--nproc", "2")) == 0, capfd.readouterr().err[-3000:]
    assert capfd.readouterr().out.count("grammatical:") == 1
    assert {p.name for p in out.iterdir()} == FILES["gan"]
    assert [r["step"] for r in train_rows(out)] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["processes"] == 2


def test_speed_test_refuses_the_training_options(tmp_path, capsys):
    argv = ["semisup", "--speed", "--out", str(tmp_path), "--quiet"]
    for extra in (["--nproc", "2"], ["--precision", "bf16"], ["--compile"]):
        assert main(argv + extra) == 2
        assert extra[0] in capsys.readouterr().err


# -- mixed precision --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(JOBS))
def test_bf16_trains_every_command_to_finite_losses(tmp_path, name):
    out = tmp_path / name
    assert main(job(name, out, "--precision", "bf16")) == 0
    assert json.loads((out / "config.json").read_text())["train"]["precision"] == "bf16"
    table = train_rows(out)
    assert len(table) == 3 and all(math.isfinite(r["loss"]) for r in table)
    final = [r for r in rows(out) if r.get("final")]
    numbers = [v for r in final for v in r.values() if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers)


def test_gan_fp16_scales_the_discriminator_loss_and_checkpoints_the_scale(tmp_path):
    from discograd.experiments.gan import Discriminator, Generator, SequenceGAN

    out = tmp_path / "fp16"
    assert main(job("gan", out, "--precision", "fp16")) == 0
    assert all(math.isfinite(r["loss"]) and r["loss_scale"] > 0 for r in train_rows(out))
    extra = load_checkpoint(out / "checkpoint.pt")["model"]["_extra_state"]
    scale = extra["d_scaler"]["scale"]
    assert scale > 0 and math.isfinite(scale)
    # A fresh model takes the scale from the checkpoint at its first fp16 step ...
    model = SequenceGAN(Generator(5, 8, 4), Discriminator(5, hidden=4, embed=4))
    model.set_extra_state(extra)
    with torch.autocast("cpu", dtype=torch.float16):
        scaler = model.d_scaler_for(torch.device("cpu"))
    assert scaler is not None and scaler.get_scale() == scale
    # ... and has none outside fp16 autocast (bf16 needs no loss scaling).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (
            SequenceGAN(Generator(5, 8, 4), Discriminator(5)).d_scaler_for(torch.device("cpu"))
            is None
        )
    bf16 = tmp_path / "bf16"
    assert main(job("gan", bf16, "--precision", "bf16")) == 0
    assert load_checkpoint(bf16 / "checkpoint.pt")["model"]["_extra_state"]["d_scaler"] is None


def test_parsed_options_reach_the_train_config(tmp_path):
    from discograd.experiments.sbn import train_config

    args = build_parser().parse_args(job("sbn", tmp_path, "--precision", "fp16", "--compile"))
    config = train_config(args)
    assert (config.precision, config.compile, config.device) == ("fp16", True, "cpu")
