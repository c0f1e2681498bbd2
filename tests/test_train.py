"""The shared training loop: resume is exact, checkpoints are atomic, failures are loud."""

from __future__ import annotations

import json
import math
from typing import Optional

import pytest
import torch
from torch import nn

from discograd.estimators import get
from discograd.schedules import ExponentialDecay
from discograd.train import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    epoch_batches,
    fit,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    seeded,
)


class Crash(Exception):
    """Stands for a killed process in the middle of a run."""


class Toy:
    """3 categorical latents of 4 classes from an encoder with dropout (the global generator),
    decoded linearly, squared error to a dynamically binarized batch; 37 examples, so batches
    of 5 leave a short last batch and an epoch ends after 8 steps."""

    def __init__(self, estimator: nn.Module, crash_at: Optional[int] = None, nan_at=None):
        with seeded(0):
            self.model = nn.ModuleDict(
                {
                    "enc": nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, 12)),
                    "dec": nn.Linear(12, 6),
                }
            )
            self.data = torch.rand(37, 6)
        self.estimator = estimator
        self.crash_at, self.nan_at = crash_at, nan_at

    def batches(self, batch_size, generator):
        return epoch_batches(self.data, batch_size, generator, binarize=True)

    def loss(self, batch, step, generator):
        if step == self.crash_at:
            raise Crash
        logits = self.model["enc"](batch).unflatten(-1, (3, 4))

        def f(z):
            return ((self.model["dec"](z.flatten(-2)) - batch) ** 2).sum(-1)

        value = self.estimator(f, logits, generator=generator).mean()
        if self.nan_at is not None and step >= self.nan_at:
            value = value * float("nan")
        return value, {"f": value.detach()}

    def evaluate(self, split, generator):
        return {"value": float(self.loss(self.data, -1, generator)[0]), "n": 37}

    def config_dict(self):
        return {"kind": "toy", "estimator": self.estimator.name}


ESTIMATORS = {
    # A state buffer (the moving-average baseline) and a temperature schedule's step counter.
    "reinforce-ema": lambda: get("reinforce", baseline="ema"),
    "gumbel-annealed": lambda: get("gumbel-softmax", tau=ExponentialDecay(1.0, 0.05, 0.3, 2)),
}


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(steps=12, batch_size=5, lr=0.05, eval_every=3, ckpt_every=4, log_every=2)
    base.update(kw)
    return TrainConfig(out_dir=str(tmp_path), quiet=True, **base)


def params(exp: Toy) -> dict:
    state = {f"model.{k}": v for k, v in exp.model.state_dict().items()}
    state.update({f"est.{k}": v for k, v in exp.estimator.state_dict().items()})
    return state


def rows(path, drop=("time",)):
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


@pytest.mark.parametrize("est", sorted(ESTIMATORS))
@pytest.mark.parametrize("crash_at", [6, 10])  # resumes mid-epoch (from 4) and at its end (8)
def test_resume_is_bit_identical(tmp_path, est, crash_at):
    full = Toy(ESTIMATORS[est]())
    fit(full, config(tmp_path / "full"))

    with pytest.raises(Crash):
        fit(Toy(ESTIMATORS[est](), crash_at=crash_at), config(tmp_path / "cut"))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4 * (crash_at // 4)
    resumed = Toy(ESTIMATORS[est]())
    fit(resumed, config(tmp_path / "cut", resume=True))

    a, b = params(full), params(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(resumed.estimator.num_steps) == 12  # estimator.step() once per optimizer step
    # The metrics file reads as one uninterrupted run.
    assert rows(tmp_path / "full") == rows(tmp_path / "cut")


@pytest.mark.parametrize("drop", ["noise", "global", "data"])
def test_resume_negative_control(tmp_path, drop):
    # Resume from a checkpoint whose noise generator, global generator or data position was
    # replaced by a fresh one: the comparison above must then fail.
    full = Toy(ESTIMATORS["reinforce-ema"]())
    fit(full, config(tmp_path / "full"))
    with pytest.raises(Crash):
        fit(Toy(ESTIMATORS["reinforce-ema"](), crash_at=6), config(tmp_path / "cut"))
    path = tmp_path / "cut" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    fresh = torch.Generator().manual_seed(123).get_state()
    if drop == "data":  # back to the start of the epoch, consistently
        ckpt["data"].update(index=0, state=ckpt["data"]["epoch_start"])
    else:
        ckpt["rng"][drop] = fresh
    save_checkpoint(ckpt, path)
    resumed = Toy(ESTIMATORS["reinforce-ema"]())
    fit(resumed, config(tmp_path / "cut", resume=True))
    assert not all(torch.equal(v, params(resumed)[k]) for k, v in params(full).items())


def test_same_seed_same_run_and_evaluation_does_not_move_training(tmp_path):
    a, b, c = (Toy(ESTIMATORS["gumbel-annealed"]()) for _ in range(3))
    fit(a, config(tmp_path / "a", eval_every=0))
    fit(b, config(tmp_path / "b", eval_every=1))
    fit(c, config(tmp_path / "c", seed=1))
    assert all(torch.equal(v, params(b)[k]) for k, v in params(a).items())
    assert not all(torch.equal(v, params(c)[k]) for k, v in params(a).items())


def test_fit_leaves_global_rng_alone(tmp_path):
    before = torch.get_rng_state()
    fit(Toy(get("st")), config(tmp_path, steps=3))
    assert torch.equal(before, torch.get_rng_state())


def test_files_and_keys(tmp_path):
    fit(Toy(ESTIMATORS["gumbel-annealed"]()), config(tmp_path, steps=6))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert set(cfg) == {"train", "experiment", "versions"}
    assert {"steps", "batch_size", "lr", "seed", "eval_every", "ckpt_every"} <= set(cfg["train"])
    assert cfg["experiment"] == {"kind": "toy", "estimator": "gumbel-softmax"}

    table = rows(tmp_path, drop=())
    train = [r for r in table if r["split"] == "train"]
    evals = [r for r in table if r["split"] == "valid"]
    final = [r for r in table if r.get("final")]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert set(train[0]) == {"step", "time", "split", "loss", "f", "estimator", "temperature"}
    assert train[0]["estimator"] == "gumbel-softmax"
    # ExponentialDecay(1.0, rate 0.05, floor 0.3, every 2) at the step the row was logged.
    assert train[1]["temperature"] == pytest.approx(ExponentialDecay(1.0, 0.05, 0.3, 2)(3))
    assert [r["step"] for r in evals if not r.get("final")] == [3]
    assert {(r["split"], r["step"]) for r in final} == {("valid", 6), ("test", 6)}
    assert set(final[0]) == {"step", "time", "split", "value", "n", "final"}
    assert all(r["time"] >= 0 for r in table)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
    ]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"a": torch.ones(3)}, path)

    def dies_halfway(obj, fh):
        fh.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"a": torch.zeros(3)}, path)
    # Negative control: writing in place, as a naive loop would, destroys the good checkpoint.
    naive = tmp_path / "naive.pt"
    naive.write_bytes(path.read_bytes())
    with pytest.raises(OSError), open(naive, "wb") as fh:
        torch.save({"a": torch.zeros(3)}, fh)
    monkeypatch.undo()

    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "naive.pt"]
    with pytest.raises(CheckpointError, match="naive.pt"):
        load_checkpoint(naive)


def test_inconsistent_data_position_is_an_error(tmp_path):
    fit(Toy(get("st")), config(tmp_path, steps=4))
    path = tmp_path / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    ckpt["data"]["index"] = 1  # the generator state saved no longer follows from the replay
    save_checkpoint(ckpt, path)
    with pytest.raises(CheckpointError, match="did not reproduce"):
        fit(Toy(get("st")), config(tmp_path, steps=8, resume=True))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_damaged_checkpoint_is_an_error_naming_the_file(tmp_path, damage):
    fit(Toy(get("st")), config(tmp_path, steps=4))
    path = tmp_path / "checkpoint.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        fit(Toy(get("st")), config(tmp_path, steps=8, resume=True))


def test_resume_with_other_settings_is_refused(tmp_path):
    fit(Toy(get("st")), config(tmp_path, steps=4))
    with pytest.raises(CheckpointError, match="train.lr"):
        fit(Toy(get("st")), config(tmp_path, steps=8, lr=0.01, resume=True))
    # Settings that do not change the trajectory may change: here, more steps.
    assert fit(Toy(get("st")), config(tmp_path, steps=8, resume=True)).step == 8


def test_nan_loss_stops_early_naming_the_step(tmp_path):
    exp = Toy(get("st"), nan_at=3)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 4"):
        fit(exp, config(tmp_path))
    assert all(torch.isfinite(p).all() for p in exp.model.parameters())
    last = rows(tmp_path)[-1]
    assert last["event"] == "stopped" and last["step"] == 4


class Diverging(Toy):
    """The parameters turn NaN at ``nan_params_at`` (as after a step with a huge learning
    rate): the estimator's check of its logits sees the NaN before any loss exists."""

    def __init__(self, nan_params_at: int, **kw):
        super().__init__(get("st"), **kw)
        self.nan_params_at = nan_params_at

    def loss(self, batch, step, generator):
        if step == self.nan_params_at:
            with torch.no_grad():
                self.model["enc"][0].weight.fill_(float("nan"))
        return super().loss(batch, step, generator)


def test_diverged_parameters_stop_early_like_a_nan_loss(tmp_path):
    with pytest.raises(
        NonFiniteLossError,
        match=r"parameters are not finite \(logits contains "
        r"NaN\) at step 6: stopping early .* lower learning rate",
    ):
        fit(Diverging(nan_params_at=5), config(tmp_path))
    last = rows(tmp_path)[-1]
    assert last["event"] == "stopped" and last["step"] == 6
    # With finite parameters the same ValueError is a real error (bad input), raised as it is.
    exp = BadLogits(get("st"))
    with pytest.raises(ValueError, match="logits contains NaN") as caught:
        fit(exp, config(tmp_path / "input"))
    assert not isinstance(caught.value, NonFiniteLossError)


class BadLogits(Toy):
    """Finite parameters, NaN logits (as from a NaN in the data)."""

    def loss(self, batch, step, generator):
        logits = torch.full((batch.shape[0], 3, 4), float("nan"))
        return self.estimator(lambda z: z.sum((-1, -2)), logits).mean(), {}


def test_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="out_dir"):
        TrainConfig(resume=True)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        # seed: numpy's SeedSequence raised its own errors, naming no setting, at fit().
        ({"seed": -1}, ValueError),
        ({"seed": 1.5}, TypeError),
        ({"seed": "3"}, TypeError),
        ({"seed": True}, TypeError),
        # Wrong types gave TypeErrors from comparisons ('>' not supported ...).
        ({"lr": "0.1"}, TypeError),
        ({"grad_clip": None}, TypeError),
        ({"grad_clip": -1.0}, ValueError),
        ({"batch_size": True}, TypeError),
        ({"steps": 2.0}, TypeError),
        ({"eval_splits": ["valid", 3]}, TypeError),
        ({"final_splits": None}, TypeError),
        ({"device": "bogus"}, ValueError),
        # cuda:N with N the number of GPUs: none on a CPU-only build (an AssertionError from
        # torch before), past the last one otherwise.
        ({"device": f"cuda:{torch.cuda.device_count()}"}, ValueError),
    ],
)
def test_bad_config_fields_are_named(kwargs, error):
    (name,) = kwargs
    with pytest.raises(error, match=name):
        TrainConfig(**kwargs)


def test_a_split_name_is_one_split_not_its_letters(tmp_path):
    cfg = TrainConfig(eval_splits="valid", final_splits="test")
    assert cfg.eval_splits == ("valid",) and cfg.final_splits == ("test",)
    assert TrainConfig(eval_splits=["valid", "test"]).eval_splits == ("valid", "test")
    assert TrainConfig(eval_splits=()).eval_splits == ()

    class Splits(Toy):
        def evaluate(self, split, generator):
            seen.append(split)
            return super().evaluate(split, generator)

    seen: list = []
    cfg = config(tmp_path, steps=2, eval_every=1, eval_splits="valid", final_splits="test")
    result = fit(Splits(get("st")), cfg)
    assert seen == ["valid", "test"] and set(result.final) == {"test"}


class GlobalEvalToy(Toy):
    """A Toy whose evaluation draws from torch's global generator (as a model sampling with
    torch.rand would); its training draws from it too (dropout)."""

    def evaluate(self, split, generator):
        torch.rand(5)
        return super().evaluate(split, generator)


def test_an_evaluation_drawing_from_the_global_generator_does_not_move_training(tmp_path):
    # eval_every may change on resume (_RESUMABLE): it must not change the trajectory.
    a, b = GlobalEvalToy(get("st")), GlobalEvalToy(get("st"))
    fit(a, config(tmp_path / "a", eval_every=0))
    fit(b, config(tmp_path / "b", eval_every=1))
    assert all(torch.equal(v, params(b)[k]) for k, v in params(a).items())

    def train(path):
        return [r for r in rows(path) if r["split"] == "train"]

    assert train(tmp_path / "a") == train(tmp_path / "b")


def test_metrics_file_is_strict_json_with_non_finite_numbers_as_strings(tmp_path):
    class NonFinite(Toy):
        def loss(self, batch, step, generator):
            value, metrics = super().loss(batch, step, generator)
            vec = torch.tensor([1.0, float("nan")])
            return value, {**metrics, "kl": torch.tensor(float("inf")), "gap": -math.inf, "v": vec}

        def evaluate(self, split, generator):
            return {"nll": float("nan"), "value": 1.5}

    fit(NonFinite(get("st")), config(tmp_path, steps=4, eval_every=2, ckpt_every=2))

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    table = [json.loads(line, parse_constant=refuse) for line in lines]  # Infinity, NaN: no
    train = [r for r in table if r["split"] == "train"]
    evals = [r for r in table if r["split"] != "train"]
    assert len(train) == 2 and all(r["kl"] == "inf" and r["gap"] == "-inf" for r in train)
    assert all(r["v"] == [1.0, "nan"] for r in train)
    assert evals and all(r["nll"] == "nan" and r["value"] == 1.5 for r in evals)
    assert math.isnan(float(evals[0]["nll"])) and float(train[0]["kl"]) == math.inf
    # read_metrics gives the floats back.
    back = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["split"] for r in back] == [r["split"] for r in table]
    for r in (r for r in back if r["split"] == "train"):
        assert r["kl"] == math.inf and r["gap"] == -math.inf
        assert r["v"][0] == 1.0 and math.isnan(r["v"][1])
    assert all(math.isnan(r["nll"]) and r["value"] == 1.5 for r in back if "nll" in r)
    # Resuming reads the file back: the rows up to the checkpoint are kept as they were.
    fit(NonFinite(get("st")), config(tmp_path, steps=6, eval_every=2, ckpt_every=2, resume=True))
    again = [json.loads(line, parse_constant=refuse) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    kept = [r for r in table if not r.get("final")]
    assert again[: len(kept)] == kept and again[-1]["step"] == 6


class VectorToy(Toy):
    """Logs a vector metric (a per-latent term) and a number, both depending on the step."""

    def loss(self, batch, step, generator):
        value, metrics = super().loss(batch, step, generator)
        return value, {**metrics, "per_latent": torch.tensor([1.0, 2.0]) * step, "count": step}


def test_a_vector_metric_is_logged_as_its_latest_value(tmp_path):
    # It crashed training after the first optimizer step (float + list in the running sum).
    fit(VectorToy(get("st")), config(tmp_path / "full", steps=6, log_every=2, ckpt_every=3))
    train = [r for r in rows(tmp_path / "full") if r["split"] == "train"]
    assert [r["per_latent"] for r in train] == [[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]]
    assert [r["count"] for r in train] == [0.5, 2.5, 4.5]  # numbers: the mean over the steps
    # The running values go into the checkpoint (step 3, mid-row) and resume exactly.
    with pytest.raises(Crash):
        fit(VectorToy(get("st"), crash_at=4), config(tmp_path / "cut", steps=6, log_every=2,
                                                     ckpt_every=3))  # fmt: skip
    fit(VectorToy(get("st")), config(tmp_path / "cut", steps=6, log_every=2, ckpt_every=3,
                                     resume=True))  # fmt: skip
    assert rows(tmp_path / "full") == rows(tmp_path / "cut")


class ModeToy(Toy):
    """Toy that records the modules' training flags at every training step and evaluation."""

    def __init__(self, estimator: nn.Module):
        super().__init__(estimator)
        self.modes: list = []

    def loss(self, batch, step, generator):
        if step >= 0:  # evaluate() calls loss with step -1
            self.modes.append(("step", self.model.training, self.estimator.training))
        return super().loss(batch, step, generator)

    def evaluate(self, split, generator):
        self.modes.append(("eval", self.model.training, self.estimator.training))
        return super().evaluate(split, generator)


def test_steps_train_and_evaluations_eval_even_when_the_caller_left_eval_mode(tmp_path):
    # fit sets the modes once before the loop and after each evaluation, not at every step.
    exp = ModeToy(get("st"))
    exp.model.eval()
    exp.estimator.eval()
    fit(exp, config(tmp_path, steps=7, eval_every=3))
    kinds = [kind for kind, *_ in exp.modes]
    assert kinds == ["step"] * 3 + ["eval"] + ["step"] * 3 + ["eval"] + ["step"] + ["eval"] * 2
    assert all(flags == [True, True] for kind, *flags in exp.modes if kind == "step")
    assert all(flags == [False, False] for kind, *flags in exp.modes if kind == "eval")


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_infinite_loss_stops_early_before_any_checkpoint_of_it(tmp_path, bad):
    class Infinite(Toy):
        def loss(self, batch, step, generator):
            value, metrics = super().loss(batch, step, generator)
            return (value + bad, metrics) if step >= 5 else (value, metrics)

    exp = Infinite(get("st"))
    with pytest.raises(NonFiniteLossError, match=f"loss is {bad} at step 6"):
        fit(exp, config(tmp_path))
    assert all(torch.isfinite(p).all() for p in exp.model.parameters())
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # the one of step 4, not a later one
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    last = rows(tmp_path)[-1]
    assert last["event"] == "stopped" and last["step"] == 6


def test_metrics_are_read_in_one_transfer_with_the_values_item_gives(monkeypatch):
    from discograd.train import _read_metrics

    loss = torch.tensor(1 / 3, dtype=torch.float32, requires_grad=True) * 3
    metrics = {
        "loss": loss.detach(),
        "bf16": torch.tensor(1.1, dtype=torch.bfloat16),
        "fp16": torch.tensor([1.1], dtype=torch.float16),
        "fp64": torch.tensor([[1 / 7]], dtype=torch.float64),
        "count": torch.tensor(3),  # an integer stays an int
        "flag": torch.tensor(True),
        "vector": torch.tensor([0.5, 0.25]),
        "plain": 2.5,
    }
    expected = {
        k: (v.item() if v.numel() == 1 else v.tolist()) if isinstance(v, torch.Tensor) else v
        for k, v in metrics.items()
    }
    reads = []
    original = torch.Tensor.tolist

    def counting(self):
        reads.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    finite, values = _read_metrics(loss, metrics)
    assert finite is True
    assert list(values) == list(metrics)  # the order of the JSON keys
    for key in expected:
        assert values[key] == expected[key] and type(values[key]) is type(expected[key]), key
    # The loss and the four one-element float metrics, in one read (the vector on its own).
    assert torch.Size([5]) in reads and len(reads) == 2
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert _read_metrics(torch.tensor(bad), {"loss": torch.tensor(0.0)})[0] is False
        assert _read_metrics(torch.tensor([1.0, bad]), {})[0] is False  # not one element
    assert _read_metrics(torch.tensor([[2.0]], dtype=torch.bfloat16), {})[0] is True
