r"""The shared training loop: one readable loop, top to bottom (in the manner of nanoGPT).

An *experiment* (vae, sbn, ...) is a model, an estimator, a loss and its data, described by
:class:`Experiment`; :func:`fit` trains it with Adam and does everything around the step::

    config -> generators -> (resume) -> loop { batch, loss, backward, update, log, eval, ckpt }

Randomness. Everything random draws from generators derived from ``TrainConfig.seed``:

- ``data``: the order of the examples and their dynamic binarization (resampled each epoch);
- ``noise``: the estimator's samples, handed to ``experiment.loss(..., generator=)``;
- ``eval``: re-seeded identically at every evaluation, so evaluating never moves the training
  streams and successive evaluations use common random numbers;
- torch's global generator (dropout, ...), forked for the duration of :func:`fit` and seeded, so
  the caller's global stream is left as it was.

Files in ``out_dir``: ``config.json`` (the run's configuration), ``metrics.jsonl`` (one JSON
object a line: training rows every ``log_every`` steps with the loss terms averaged over those
steps, evaluation rows with a ``"split"`` key, and the final evaluation with ``"final": true``)
and ``checkpoint.pt``, written atomically (temporary file, fsync, ``os.replace``) every
``ckpt_every`` steps and at the end. A checkpoint holds the model, the optimizer, the estimator
(baselines, control variates, temperature step counters), the state of every generator and the
position in the data, so that ``resume=True`` continues the run exactly: on CPU, an interrupted
and resumed run ends with the same parameters, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Protocol, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "Experiment",
    "FitResult",
    "NonFiniteLossError",
    "TrainConfig",
    "epoch_batches",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
    "seeded",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
_FORMAT = 1  # checkpoint layout version


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another run."""


class NonFiniteLossError(FloatingPointError):
    """Training stopped early because the loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Settings of the loop (the experiment holds its own: model sizes, estimator, ...).

    ``eval_every`` / ``ckpt_every`` / ``log_every`` of 0 mean: only at the end.
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    eval_every: int = 500
    ckpt_every: int = 1000
    log_every: int = 50
    out_dir: Optional[str] = None
    resume: bool = False
    quiet: bool = False
    grad_clip: float = 0.0  # max global gradient norm; 0 turns clipping off
    eval_splits: Tuple[str, ...] = ("valid",)
    final_splits: Tuple[str, ...] = ("valid", "test")
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "ckpt_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be finite and > 0, got {self.lr!r}")
        if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
            raise ValueError(f"grad_clip must be finite and >= 0, got {self.grad_clip!r}")
        if self.resume and not self.out_dir:
            raise ValueError("resume=True needs out_dir (where the checkpoint is)")
        self.eval_splits = tuple(self.eval_splits)
        self.final_splits = tuple(self.final_splits)


class Experiment(Protocol):
    """What :func:`fit` needs from an experiment.

    ``model`` and ``estimator`` are modules whose parameters Adam optimizes together (the
    estimator's: learned baselines, control variates, temperatures). ``batches`` gives the
    batches of ONE epoch, drawing all its randomness (order, binarization) from ``generator``;
    ``loss`` gives a scalar to minimize and a dict of numbers to log; ``evaluate`` gives a dict
    of numbers for a split; ``config_dict`` a JSON-serialisable description of the experiment.
    """

    model: nn.Module
    estimator: nn.Module

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterable[Any]: ...

    def loss(
        self, batch: Any, step: int, generator: torch.Generator
    ) -> Tuple[Tensor, Dict[str, float]]: ...

    def evaluate(self, split: str, generator: torch.Generator) -> Dict[str, float]: ...

    def config_dict(self) -> Dict[str, Any]: ...


@dataclass
class FitResult:
    """What :func:`fit` returns: the step reached and the final evaluation, by split."""

    step: int
    final: Dict[str, Dict[str, float]]
    elapsed: float
    out_dir: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# Pieces experiments share.


def epoch_batches(
    data: Tensor, batch_size: int, generator: torch.Generator, *, binarize: bool = False
) -> Iterator[Tensor]:
    """One epoch of shuffled minibatches of ``data`` (n, ...), the last one possibly smaller.

    With ``binarize``, each batch is drawn as x ~ Bernoulli(data) (dynamic binarization: a new
    draw every epoch). Draws are lazy, batch by batch, so replaying k batches replays the
    generator exactly.
    """
    order = torch.randperm(data.shape[0], generator=generator)
    for start in range(0, data.shape[0], batch_size):
        x = data[order[start : start + batch_size]]
        yield torch.bernoulli(x, generator=generator) if binarize else x


@contextlib.contextmanager
def seeded(seed: int, device: Optional[torch.device] = None) -> Iterator[None]:
    """Run a block (e.g. a model's initialisation) on torch's global generator seeded with
    ``seed``, restoring the global state afterwards."""
    cuda = device is not None and torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        # Only the generators fork_rng restores (torch.manual_seed would reseed every GPU).
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def save_checkpoint(state: Dict[str, Any], path: os.PathLike) -> None:
    """Write ``state`` with torch.save ATOMICALLY: a reader sees the old file or the new one,
    never a partial one (temporary file, fsync, os.replace, fsync of the folder)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def load_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`fit`; :class:`CheckpointError` naming the file if
    it is truncated, corrupt or not a discograd checkpoint."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for damaged files
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {exc}. Restore a good "
            f"copy, or delete it and start without --resume"
        ) from exc
    missing = [k for k in _CHECKPOINT_KEYS if not (isinstance(state, dict) and k in state)]
    if missing or state.get("format") != _FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a discograd training checkpoint of format {_FORMAT} "
            f"(missing: {', '.join(missing) or 'none'})"
        )
    return state


_CHECKPOINT_KEYS = ("format", "step", "model", "estimator", "optimizer", "rng", "data", "config")


# ---------------------------------------------------------------------------------------------
# The loop.


def fit(experiment: Experiment, config: TrainConfig) -> FitResult:
    """Train ``experiment`` for ``config.steps`` optimizer steps (see the module docstring)."""
    cfg = config
    device = torch.device(cfg.device)
    model = experiment.model.to(device)
    estimator = experiment.estimator.to(device)
    optimizer = torch.optim.Adam(_unique_parameters(model, estimator), lr=cfg.lr)
    run_config = _run_config(experiment, cfg)

    # Generators: data order/binarization, estimator noise, evaluation, torch's global one.
    data_seed, noise_seed, eval_seed, global_seed = _derive_seeds(cfg.seed)
    data_gen = torch.Generator().manual_seed(data_seed)
    noise_gen = torch.Generator(device).manual_seed(noise_seed)

    out = Path(cfg.out_dir) if cfg.out_dir else None
    ckpt_path = out / CHECKPOINT_FILE if out else None
    step, elapsed, data_pos, acc, global_state, resumed = 0, 0.0, None, {}, None, False
    if out:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_same_run(json.loads(ckpt["config"]), run_config, ckpt_path)
        model.load_state_dict(ckpt["model"])
        estimator.load_state_dict(ckpt["estimator"])
        optimizer.load_state_dict(ckpt["optimizer"])
        noise_gen.set_state(ckpt["rng"]["noise"])
        global_state = ckpt["rng"]["global"]
        step, elapsed, data_pos, acc = ckpt["step"], ckpt["elapsed"], ckpt["data"], ckpt["acc"]
        resumed = True
        _say(cfg, f"resuming from step {step} ({ckpt_path})")
    elif cfg.resume:
        _say(cfg, f"no checkpoint in {out}; starting from step 0")
    elif ckpt_path is not None and ckpt_path.exists():
        # A new run: a later resume must not find the previous run's checkpoint.
        _say(cfg, f"new run in {out}: removing the previous run's checkpoint")
        ckpt_path.unlink()
    if out:
        _write_json(out / CONFIG_FILE, run_config)
    log = _MetricsLog(out / METRICS_FILE if out else None, keep_until=step if resumed else None)

    def evaluate(splits: Iterable[str], final: bool = False) -> Dict[str, Dict[str, float]]:
        model.eval()
        estimator.eval()
        results = {}
        with torch.no_grad():
            for split in splits:
                gen = torch.Generator(device).manual_seed(eval_seed)
                metrics = {k: _number(v) for k, v in experiment.evaluate(split, gen).items()}
                row = {"step": step, "time": _round(clock()), "split": split, **metrics}
                log.write({**row, "final": True} if final else row)
                results[split] = metrics
        return results

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        state = {
            "format": _FORMAT,
            "step": step,
            "elapsed": clock(),
            "model": model.state_dict(),
            "estimator": estimator.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": {"noise": noise_gen.get_state(), "global": torch.get_rng_state()},
            "data": data.position(),
            "acc": acc,
            # A JSON string, so that the checkpoint loads with weights_only=True.
            "config": json.dumps(run_config, sort_keys=True, default=str),
        }
        save_checkpoint(state, ckpt_path)

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # Only the generators fork_rng restores (torch.manual_seed would reseed every GPU).
        torch.random.default_generator.manual_seed(global_seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(global_seed)
        if global_state is not None:
            torch.set_rng_state(global_state)
        try:
            data = _DataStream(experiment, cfg.batch_size, data_gen, data_pos)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {ckpt_path}: {exc}") from None
        start = time.perf_counter() - elapsed

        def clock() -> float:
            return time.perf_counter() - start

        bar = _progress(cfg, step)
        while step < cfg.steps:
            batch = _to_device(data.next(), device)
            model.train()
            estimator.train()
            loss, metrics = experiment.loss(batch, step, generator=noise_gen)
            if not bool(torch.isfinite(loss.detach()).all()):
                msg = (
                    f"loss is {float(loss.detach())} at step {step + 1}: stopping early "
                    f"(parameters are those after step {step}"
                    + (f"; last checkpoint in {ckpt_path})" if ckpt_path else ")")
                )
                stop_row = {"step": step + 1, "time": _round(clock()), "event": "stopped"}
                log.write({**stop_row, "reason": msg})
                bar.close()
                raise NonFiniteLossError(msg)
            logging = (cfg.log_every and (step + 1) % cfg.log_every == 0) or step + 1 == cfg.steps
            if logging:
                info = _estimator_info(estimator)  # the temperature this step used
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], cfg.grad_clip)
            optimizer.step()
            if callable(getattr(estimator, "step", None)):
                estimator.step()  # temperature schedules count optimizer steps
            step += 1

            # Log the loss terms averaged over the steps since the last row.
            metrics = {"loss": loss.detach(), **metrics}
            for key, value in metrics.items():
                acc[key] = acc.get(key, 0.0) + _number(value)
            acc["_n"] = acc.get("_n", 0) + 1
            bar.update(1)
            if logging:
                n = acc.pop("_n")
                row = {"step": step, "time": _round(clock()), "split": "train"}
                row.update({k: v / n for k, v in acc.items()})
                row.update(info)
                log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
                acc = {}
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                evaluate(cfg.eval_splits)
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                checkpoint()
        bar.close()
        checkpoint()
        final = evaluate(cfg.final_splits, final=True)
    return FitResult(step=step, final=final, elapsed=clock(), out_dir=cfg.out_dir)


# ---------------------------------------------------------------------------------------------
# Helpers of the loop.


class _DataStream:
    """Endless batches, epoch after epoch, with a position a checkpoint can store and restore.

    The position is (epoch, batches taken in that epoch, data generator state at the epoch's
    start): restoring sets the generator back to the epoch's start and replays the batches
    already taken, which leaves the generator exactly where it was.
    """

    def __init__(
        self, experiment: Experiment, batch_size: int, gen: torch.Generator, pos: Optional[dict]
    ) -> None:
        self.experiment, self.batch_size, self.gen = experiment, batch_size, gen
        self.epoch, self.index = 0, 0
        if pos is not None:
            gen.set_state(pos["epoch_start"])
            self.epoch = pos["epoch"]
        self._start_epoch()
        for _ in range(pos["index"] if pos else 0):
            if next(self._it, None) is None:
                raise CheckpointError(
                    "the checkpoint's data position is past the end of the epoch: the data or "
                    "batch size differ from the checkpointed run"
                )
            self.index += 1
        if pos is not None and not torch.equal(gen.get_state(), pos["state"]):
            raise CheckpointError(
                "replaying the checkpoint's epoch did not reproduce its data generator state: "
                "experiment.batches() must draw its randomness from the generator it is given"
            )

    def _start_epoch(self) -> None:
        self.epoch_start = self.gen.get_state()
        self._it = iter(self.experiment.batches(self.batch_size, self.gen))

    def next(self) -> Any:
        batch = next(self._it, None)
        if batch is None:
            self.epoch, self.index = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._it, None)
            if batch is None:
                raise ValueError("experiment.batches() yielded no batch: is the data empty?")
        self.index += 1
        return batch

    def position(self) -> Dict[str, Any]:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "epoch_start": self.epoch_start,
            "state": self.gen.get_state(),
        }


class _MetricsLog:
    """metrics.jsonl, one JSON object a line, flushed at every row.

    On resume it keeps the rows up to the checkpoint's step (dropping later rows, a torn last
    line, and a finished run's final evaluation), so the file reads as one uninterrupted run.
    """

    def __init__(self, path: Optional[Path], keep_until: Optional[int]) -> None:
        self.path = path
        if path is None:
            return
        kept: List[str] = []
        if keep_until is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("step", 0) <= keep_until and not row.get("final"):
                    kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: Dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def _progress(cfg: TrainConfig, initial: int):
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal.
    return tqdm(
        total=cfg.steps,
        initial=initial,
        disable=True if cfg.quiet else None,
        dynamic_ncols=True,
        desc="train",
    )


def _derive_seeds(seed: int) -> Tuple[int, ...]:
    # SeedSequence decorrelates the streams (seeds s and s + 1 share no stream).
    return tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(4))


def _unique_parameters(*modules: nn.Module) -> List[nn.Parameter]:
    seen, params = set(), []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    if not params:
        raise ValueError("the experiment's model and estimator have no parameters to train")
    return params


def _run_config(experiment: Experiment, cfg: TrainConfig) -> Dict[str, Any]:
    from discograd import __version__

    return {
        "train": dataclasses.asdict(cfg),
        "experiment": experiment.config_dict(),
        "versions": {"discograd": __version__, "torch": torch.__version__},
    }


# Settings that may change between a run and its resumption without changing the trajectory.
_RESUMABLE = {
    "steps", "resume", "quiet", "eval_every", "ckpt_every", "log_every", "out_dir",
    "eval_splits", "final_splits", "device",
}  # fmt: skip


def _check_same_run(saved: Dict[str, Any], current: Dict[str, Any], path: Path) -> None:
    # Through JSON, as the saved one went: tuples become lists.
    current = json.loads(json.dumps(current, sort_keys=True, default=str))
    diffs = []
    for section in ("train", "experiment"):
        old, new = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key) and not (section == "train" and key in _RESUMABLE):
                diffs.append(f"{section}.{key}")
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with other settings ({', '.join(diffs)}); "
            f"resume with the same settings or use another output folder"
        )


def _estimator_info(estimator: nn.Module) -> Dict[str, Any]:
    info: Dict[str, Any] = {"estimator": getattr(estimator, "name", "") or type(estimator).__name__}
    temperature = getattr(estimator, "temperature", None)
    if callable(temperature):
        info["temperature"] = _number(temperature())
    return info


def _number(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().item() if value.numel() == 1 else value.detach().tolist()
    return value


def _round(t: float) -> float:
    return round(t, 3)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _write_json(path: Path, obj: Dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _say(cfg: TrainConfig, message: str) -> None:
    if not cfg.quiet:
        print(message, file=sys.stdout, flush=True)
