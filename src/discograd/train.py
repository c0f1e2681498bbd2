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
  the caller's global stream is left as it was; forked again around each evaluation, so that
  an evaluation drawing from it leaves training's stream as it was (``eval_every`` does not
  change the trajectory).

Files in ``out_dir``: ``config.json`` (the run's configuration), ``metrics.jsonl`` (one JSON
object a line: training rows every ``log_every`` steps with the loss terms averaged over those
steps (a vector metric: its latest value), evaluation rows with a ``"split"`` key, and the
final evaluation with ``"final": true``; strict JSON, a non-finite number is written as the
string ``"nan"``, ``"inf"`` or ``"-inf"``, which :func:`read_metrics` reads back) and
``checkpoint.pt``, written atomically (temporary file, fsync, ``os.replace``) every
``ckpt_every`` steps and at the end. A checkpoint holds the model, the optimizer, the
estimator (baselines, control variates, temperature step counters), the state of every
generator and the position in the data, so that ``resume=True`` continues the run exactly: on
CPU, an interrupted and resumed run ends with the same parameters, bit for bit, as an
uninterrupted one.

Several processes. Started by torchrun (``WORLD_SIZE`` > 1 in the environment) or inside a
process group the caller initialised, :func:`fit` trains with DistributedDataParallel:
``batch_size`` stays the GLOBAL batch, each rank trains on its share of it with its own
estimator noise, gradients and logged numbers are averaged over the ranks, and only rank 0
evaluates and writes files (see :mod:`discograd.distributed` for the arithmetic). Checkpoints
hold every rank's random state, and a resumed run continues exactly with the same number of
processes (with another number, the data order still continues exactly; the new ranks' noise
is reseeded).

Numerics. ``precision="bf16"`` or ``"fp16"`` runs the experiment's loss under torch.autocast
(fp16 with a GradScaler, whose state the checkpoint keeps); evaluation stays in full precision.
``compile=True`` hands the training step (the experiment's loss through the model and the
estimator, and its backward) to torch.compile. Dynamo cannot trace a ``torch.Generator``, so the
compiled step is called without one and draws from the global generator, loaded with the noise
stream's state for the call (the stream stays the run's: per rank, checkpointed, resumed
exactly). Estimators with ``compilable = False`` (those that differentiate inside their call)
are refused with :class:`ConfigError` before anything runs.
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
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Protocol,
    Tuple,
)

import numpy as np
import torch
from torch import Tensor, nn

from discograd import distributed
from discograd._fs import fsync_dir
from discograd._json import dumps as json_dumps
from discograd._json import numbers
from discograd._validation import check_positive_int
from discograd.distributed import Context

__all__ = [
    "PRECISIONS",
    "CheckpointError",
    "ConfigError",
    "Experiment",
    "FitResult",
    "NonFiniteLossError",
    "TrainConfig",
    "check_device",
    "epoch_batches",
    "fit",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "seeded",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
_FORMAT = 1  # checkpoint layout version (later keys are optional: old checkpoints still load)
PRECISIONS = ("fp32", "bf16", "fp16")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another run."""


class ConfigError(ValueError):
    """Settings that cannot train together, found before anything is trained or written."""


class NonFiniteLossError(FloatingPointError):
    """Training stopped early because the loss, or the parameters, became NaN or infinite."""


def _stop_early(
    what: str, step: int, ckpt_path: Optional[Path], now: float, log: Any, bar: Any
) -> NonFiniteLossError:
    """Log the early stop at step + 1 (``what`` went non-finite) and return the error to raise."""
    msg = (
        f"{what} at step {step + 1}: stopping early (parameters are those after step {step}"
        + (f"; last checkpoint in {ckpt_path}" if ckpt_path else "")
        + "); a lower learning rate or gradient clipping may help"
    )
    log.write({"step": step + 1, "time": _round(now), "event": "stopped", "reason": msg})
    bar.close()
    return NonFiniteLossError(msg)


@dataclass
class TrainConfig:
    """Settings of the loop (the experiment holds its own: model sizes, estimator, ...).

    ``eval_every`` / ``ckpt_every`` / ``log_every`` of 0 mean: only at the end. ``batch_size``
    is the global batch, shared among the processes of a multi-process run. ``precision``:
    ``"fp32"``, or ``"bf16"`` / ``"fp16"`` for mixed precision (torch.autocast; fp16 with a
    GradScaler). ``compile``: torch.compile the training step. ``eval_splits`` /
    ``final_splits``: the splits evaluated periodically / at the end (a str names one split).
    ``seed``: an integer >= 0; ``device``: a torch device this machine has.
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
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        # Each check names the field: a wrong type would otherwise surface as a TypeError from
        # a comparison (or numpy's seeding) far from the setting that caused it.
        for name in ("steps", "eval_every", "ckpt_every", "log_every", "seed"):
            check_positive_int(getattr(self, name), name=name, minimum=0)
        check_positive_int(self.batch_size, name="batch_size")
        for name, low in (("lr", None), ("grad_clip", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or (value <= 0 if low is None else value < low):
                rule = "> 0" if low is None else f">= {low:g}"
                raise ValueError(f"{name} must be finite and {rule}, got {value!r}")
        if self.resume and not self.out_dir:
            raise ValueError("resume=True needs out_dir (where the checkpoint is)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        self.eval_splits = _splits("eval_splits", self.eval_splits)
        self.final_splits = _splits("final_splits", self.final_splits)
        check_device(self.device)


def _splits(name: str, value: Any) -> Tuple[str, ...]:
    """A split name or a sequence of them, as a tuple (a str is ONE split, not its letters)."""
    try:
        splits = (value,) if isinstance(value, str) else tuple(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a split name or a sequence of them, got {value!r}"
        ) from None
    bad = [s for s in splits if not isinstance(s, str)]
    if bad:
        raise TypeError(f"{name} must be split names (str), got {bad[0]!r} in {value!r}")
    return splits


def check_device(device: Any, name: str = "device", cpu_hint: str = "device='cpu'") -> None:
    """ValueError naming ``name`` for a malformed device or one this torch cannot use (cuda
    without a GPU fails later with torch's AssertionError "Torch not compiled with CUDA"), or
    an index past the devices present. ``cpu_hint``: how the caller's user asks for the CPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"{name} {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps): {exc}"
        ) from None
    if dev.type == "cpu":
        return
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if not callable(available) or not available():
        raise ValueError(
            f"{name} {device!r}: no {dev.type} device is available to this torch "
            f"({torch.__version__}); use {cpu_hint}"
        )
    count = getattr(backend, "device_count", None)
    present = count() if callable(count) else None
    if dev.index is not None and isinstance(present, int) and dev.index >= present:
        raise ValueError(
            f"{name} {device!r}: this machine has {present} {dev.type} device(s), numbered from 0"
        )


class Experiment(Protocol):
    """What :func:`fit` needs from an experiment.

    ``model`` and ``estimator`` are modules whose parameters Adam optimizes together (the
    estimator's: learned baselines, control variates, temperatures). ``batches`` gives the
    batches of ONE epoch, drawing all its randomness (order, binarization) from ``generator``;
    ``loss`` gives a scalar to minimize and a dict of numbers to log; ``evaluate`` gives a dict
    of numbers for a split; ``config_dict`` a JSON-serialisable description of the experiment.

    Several processes: ``loss`` should be a MEAN over the batch's examples (each rank's is
    weighted by its share of the rows). An experiment may define ``shard_batch(batch, rank,
    world_size) -> (share, weight)`` to split its batches otherwise than
    :func:`discograd.distributed.shard`. A second optimizer stepped inside ``loss`` (a GAN's
    discriminator) must average its gradients with
    :func:`discograd.distributed.all_reduce_gradients` before its step, and the experiment
    must name its parameters in ``separately_optimized() -> Iterable[Parameter]`` so that
    DistributedDataParallel leaves them alone.
    """

    # Read-only properties, not plain attributes: fit never reassigns them, and a protocol
    # attribute would be invariant, refusing an experiment whose model is a subclass.
    @property
    def model(self) -> nn.Module: ...

    @property
    def estimator(self) -> nn.Module: ...

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterable[Any]: ...

    # Mapping (covariant): the logged values may be numbers or tensors (see _number). Numbers
    # and one-element tensors are averaged over the steps between two rows; a larger tensor
    # is logged as a list, the latest step's (see _accumulate).
    def loss(
        self, batch: Any, step: int, generator: torch.Generator
    ) -> Tuple[Tensor, Mapping[str, Any]]: ...

    def evaluate(self, split: str, generator: torch.Generator) -> Mapping[str, float]: ...

    def config_dict(self) -> Dict[str, Any]: ...


@dataclass
class FitResult:
    """What :func:`fit` returns: the step reached and the final evaluation, by split.

    ``elapsed`` is the run's wall time (a resumed run's includes the time before the
    interruption); ``eval_seconds`` the part of this call spent in ``experiment.evaluate``
    (periodic and final evaluations, on rank 0), so ``elapsed - eval_seconds`` is training.
    """

    step: int
    final: Dict[str, Dict[str, float]]
    elapsed: float
    out_dir: Optional[str] = None
    world_size: int = 1
    eval_seconds: float = 0.0


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
        torch.default_generator.manual_seed(seed)
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
    fsync_dir(path.parent)


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


def read_metrics(path: os.PathLike) -> List[Dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` written by :func:`fit`, with the numbers it wrote as
    strings (``"nan"``, ``"inf"``, ``"-inf"``: strict JSON has no token for them) read back as
    floats, in lists too. Lines that do not parse (a torn last line) are skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(numbers(row))
    return rows


# ---------------------------------------------------------------------------------------------
# The loop.


def fit(experiment: Experiment, config: TrainConfig) -> FitResult:
    """Train ``experiment`` for ``config.steps`` optimizer steps (see the module docstring)."""
    ctx, device = distributed.setup(config.device)
    try:
        return _fit(experiment, config, ctx, device)
    finally:
        distributed.teardown(ctx)


def _fit(experiment: Experiment, cfg: TrainConfig, ctx: Context, device: torch.device) -> FitResult:
    main = ctx.is_main  # rank 0: the only process that evaluates and writes files
    if cfg.batch_size < ctx.world_size:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) is the global batch: it must be at least the number "
            f"of processes ({ctx.world_size})"
        )
    if cfg.compile and not getattr(experiment.estimator, "compilable", True):
        raise ConfigError(
            f"compile=True cannot train estimator {experiment.estimator.name!r}: it takes "
            f"derivatives inside its call (torch.autograd.grad, keeping the graph), which "
            f"torch.compile's compiled backward does not support; train it without compile"
        )
    model = experiment.model.to(device)
    estimator = experiment.estimator.to(device)
    optimizer = torch.optim.Adam(_unique_parameters(model, estimator), lr=cfg.lr)
    amp = _Precision(cfg.precision, device)
    if cfg.precision == "fp16" and device.type == "cpu":
        _say(cfg, "precision fp16 on CPU: most processors lack fast fp16 kernels, so expect it "
                  "to be slower than fp32 (bf16 is the CPU's mixed precision)")  # fmt: skip
    run_config = _run_config(experiment, cfg, ctx)

    # Generators: data order/binarization (shared by the ranks, which split each batch),
    # estimator noise and torch's global one (per rank), evaluation.
    data_seed, noise_seed, eval_seed, global_seed = _derive_seeds(cfg.seed)
    noise_seed = distributed.rank_seed(noise_seed, ctx.rank)
    global_seed = distributed.rank_seed(global_seed, ctx.rank)
    data_gen = torch.Generator().manual_seed(data_seed)
    noise_gen = torch.Generator(device).manual_seed(noise_seed)

    out = Path(cfg.out_dir) if cfg.out_dir else None
    ckpt_path = out / CHECKPOINT_FILE if out else None
    step, elapsed, data_pos, acc, rng_state, resumed = 0, 0.0, None, {}, None, False
    if out and main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = _read_for_resume(ckpt_path, run_config, ctx) if cfg.resume else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        estimator.load_state_dict(ckpt["estimator"])
        optimizer.load_state_dict(ckpt["optimizer"])
        amp.load_state_dict(ckpt.get("scaler"))
        step, elapsed, data_pos, acc = ckpt["step"], ckpt["elapsed"], ckpt["data"], ckpt["acc"]
        rng_state = _rank_rng_state(ckpt, ctx, (noise_seed, global_seed), device)
        try:
            noise_gen.set_state(rng_state["noise"])
        except RuntimeError:  # a state saved on another kind of device (--device changed)
            noise_gen.manual_seed(distributed.rank_seed(noise_seed, ctx.rank, step))
            _say(cfg, "the checkpoint's noise generator is another device's: reseeded")
        resumed = True
        _say(cfg, f"resuming from step {step} ({ckpt_path})")
        saved_world = ckpt.get("world_size", 1)
        if saved_world != ctx.world_size:
            _say(
                cfg,
                f"the checkpoint is from {saved_world} process(es), this run has "
                f"{ctx.world_size}: the data order continues exactly, the estimator noise of "
                f"ranks without a saved state is reseeded (not bit-identical to an "
                f"uninterrupted run)",
            )
    elif cfg.resume:
        _say(cfg, f"no checkpoint in {out}; starting from step 0")
    elif main and ckpt_path is not None and ckpt_path.exists():
        # A new run: a later resume must not find the previous run's checkpoint.
        _say(cfg, f"new run in {out}: removing the previous run's checkpoint")
        ckpt_path.unlink()
    if out and main:
        _write_json(out / CONFIG_FILE, run_config)
    log = _MetricsLog(
        out / METRICS_FILE if out and main else None, keep_until=step if resumed else None
    )

    # The training step as one module (the experiment's loss through the model and the
    # estimator), so that DistributedDataParallel can hook every parameter's gradient and
    # torch.compile can trace it.
    step_module: nn.Module = _LossModule(experiment)
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        own: Optional[Callable[[], Iterable[Tensor]]]
        own = getattr(experiment, "separately_optimized", None)
        if callable(own):  # stepped inside loss, averaged by the experiment itself
            ids = {id(p) for p in own()}
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                step_module, [n for n, p in step_module.named_parameters() if id(p) in ids]
            )
        step_module = DistributedDataParallel(
            step_module,
            device_ids=[device] if device.type == "cuda" else None,
            # Some parameters may get no gradient (an estimator's unused learned part), the
            # same ones at every step: DDP learns which at the first step instead of
            # searching the graph at every step.
            static_graph=True,
        )
    step_fn: Callable[..., Tuple[Tensor, Mapping[str, Any]]] = step_module
    if cfg.compile:
        step_fn = _CompiledStep(step_module)
    shard_batch = getattr(experiment, "shard_batch", distributed.shard)

    eval_seconds = 0.0
    devices = [device] if device.type == "cuda" else []  # the generators fork_rng saves

    def evaluate(splits: Iterable[str], final: bool = False) -> Dict[str, Dict[str, float]]:
        nonlocal eval_seconds
        results: Dict[str, Dict[str, float]] = {}
        if main:
            model.eval()
            estimator.eval()
            # Forked: an evaluation that draws from the global generator (its own sampling,
            # a model's) must not move training's stream, which eval_every would then steer
            # (eval_every may change on resume). Saving and restoring it: ~4 us on CPU.
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                for split in splits:
                    gen = torch.Generator(device).manual_seed(eval_seed)
                    started = time.perf_counter()
                    values = experiment.evaluate(split, gen)
                    eval_seconds += time.perf_counter() - started
                    metrics = {k: _number(v) for k, v in values.items()}
                    row = {"step": step, "time": _round(clock()), "split": split, **metrics}
                    log.write({**row, "final": True} if final else row)
                    results[split] = metrics
        return distributed.broadcast_object(results, ctx) if final else results

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        rngs = distributed.gather_objects(_rng_state(noise_gen, device), ctx)
        if not main:
            return
        state = {
            "format": _FORMAT,
            "step": step,
            "elapsed": clock(),
            "model": model.state_dict(),
            "estimator": estimator.state_dict(),
            "optimizer": optimizer.state_dict(),
            # Rank 0's generators, then the other ranks' in rank order.
            "rng": {**rngs[0], "ranks": rngs[1:]},
            "data": data.position(),
            "acc": acc,
            "world_size": ctx.world_size,
            "scaler": amp.state_dict(),
            # A JSON string, so that the checkpoint loads with weights_only=True.
            "config": json.dumps(run_config, sort_keys=True, default=str),
        }
        save_checkpoint(state, ckpt_path)

    with torch.random.fork_rng(devices=devices):
        # Only the generators fork_rng restores (torch.manual_seed would reseed every GPU).
        torch.default_generator.manual_seed(global_seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(global_seed)
        if rng_state is not None:
            torch.set_rng_state(rng_state["global"])
            if device.type == "cuda" and "cuda" in rng_state:
                torch.cuda.set_rng_state(rng_state["cuda"], device)
        try:
            data = _DataStream(experiment, cfg.batch_size, data_gen, data_pos)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {ckpt_path}: {exc}") from None
        start = time.perf_counter() - elapsed

        def clock() -> float:
            return time.perf_counter() - start

        bar = _progress(cfg, step, main)
        # Training mode once, not at every step (about 20 us a step for a small model); an
        # evaluation switches to eval mode, so the loop switches back after each.
        model.train()
        estimator.train()
        while step < cfg.steps:
            # The global batch, identical on every rank; this rank's share and its weight.
            batch, weight = shard_batch(data.next(), ctx.rank, ctx.world_size)
            batch = _to_device(batch, device)
            try:
                with amp.autocast():
                    loss, metrics = step_fn(batch, step, noise_gen)
            except ValueError as exc:
                # A diverged model's NaN reaches an input check (the estimator's logits) before
                # the loss: that is the same early stop. Valid parameters: a real error.
                if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    raise
                what = f"the parameters are not finite ({exc})"
                raise _stop_early(what, step, ckpt_path, clock(), log, bar) from None
            metrics = {"loss": loss.detach(), **metrics}
            finite, metrics = _reduce_metrics(loss, metrics, weight, ctx, device)
            if not finite:
                what = f"loss is {metrics['loss']}"
                raise _stop_early(what, step, ckpt_path, clock(), log, bar)
            logging = (cfg.log_every and (step + 1) % cfg.log_every == 0) or step + 1 == cfg.steps
            if logging:
                info = _estimator_info(estimator)  # the temperature this step used
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients: weighting makes that the batch mean's gradient.
            amp.backward(loss if weight == 1.0 else loss * weight)
            if cfg.grad_clip:
                amp.unscale_(optimizer)
                nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], cfg.grad_clip)
            amp.step(optimizer)
            estimator_step = getattr(estimator, "step", None)
            if callable(estimator_step):
                estimator_step()  # temperature schedules count optimizer steps
            step += 1

            # Log the loss terms averaged over the steps since the last row.
            _accumulate(acc, metrics)
            bar.update(1)
            if logging:
                n = acc.pop("_n")
                row = {"step": step, "time": _round(clock()), "split": "train"}
                row.update({k: _mean(v, n) for k, v in acc.items()})
                row.update(info)
                row.update(amp.info())
                log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
                acc = {}
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                evaluate(cfg.eval_splits)
                model.train()
                estimator.train()
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                checkpoint()
        bar.close()
        checkpoint()
        final = evaluate(cfg.final_splits, final=True)
    return FitResult(
        step=step,
        final=final,
        elapsed=clock(),
        out_dir=cfg.out_dir,
        world_size=ctx.world_size,
        eval_seconds=eval_seconds,
    )


# ---------------------------------------------------------------------------------------------
# Helpers of the loop.


class _CompiledStep:
    """torch.compile of the training step, called without the noise generator.

    Dynamo cannot trace a ``torch.Generator``: each draw from one (every estimator's noise)
    is a graph break, which made the compiled VAE step slower than eager (2.85 against
    2.41 ms a step on 2 cores). The compiled step draws from the global generator of the
    generator's device instead, loaded with the noise generator's state before the call and
    read back after it: the noise stream is still the trainer's (per rank, checkpointed), and
    the global generator is left as it was. Random values may differ from the eager step's
    where Inductor generates them its own way (the kernels' seed draw is the same: a compiled
    VAE run logs the eager losses), reproducibly.
    """

    def __init__(self, module: nn.Module) -> None:
        self.fn = torch.compile(module)

    def __call__(
        self, batch: Any, step: int, generator: torch.Generator
    ) -> Tuple[Tensor, Mapping[str, Any]]:
        with _global_rng_from(generator):
            return self.fn(batch, step, None)


@contextlib.contextmanager
def _global_rng_from(generator: torch.Generator) -> Iterator[None]:
    """Run the block on the global generator of ``generator``'s device, set to its state; then
    store the advanced state back in ``generator`` and restore the global one."""
    device = generator.device
    if device.type == "cpu":
        get, put = torch.get_rng_state, torch.set_rng_state
    else:  # torch.cuda, torch.mps, torch.xpu: the same two functions, taking the device
        backend = getattr(torch, device.type)
        get = lambda: backend.get_rng_state(device)  # noqa: E731
        put = lambda state: backend.set_rng_state(state, device)  # noqa: E731
    saved = get()
    put(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(get())
        put(saved)


class _LossModule(nn.Module):
    """``experiment.loss`` as a module whose submodules are the model and the estimator."""

    def __init__(self, experiment: Experiment) -> None:
        super().__init__()
        self.model, self.estimator = experiment.model, experiment.estimator
        self._experiment = [experiment]  # in a list: not a submodule, not in the state dict

    def forward(
        self, batch: Any, step: int, generator: torch.Generator
    ) -> Tuple[Tensor, Mapping[str, Any]]:
        return self._experiment[0].loss(batch, step, generator=generator)


class _Precision:
    """torch.autocast around the loss, and for fp16 a GradScaler: the loss is multiplied by a
    scale S before backward (small fp16 gradients would underflow to 0), the gradients divided
    by S before the update, and S halved (the step skipped) when they overflow."""

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision, self.device = precision, device
        self.dtype = self.DTYPES[precision]
        if self.dtype is not None and not torch.amp.is_autocast_available(device.type):
            raise ValueError(
                f"precision {precision!r}: torch.autocast does not support device type "
                f"{device.type!r}; use precision 'fp32'"
            )
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"precision 'bf16': {torch.cuda.get_device_name(device)} has no bfloat16; "
                f"use 'fp16' or 'fp32'"
            )
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skipped when a gradient is inf/NaN
            self.scaler.update()

    def info(self) -> Dict[str, float]:
        return {"loss_scale": self.scaler.get_scale()} if self.scaler is not None else {}

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _read_for_resume(path: Optional[Path], run_config: Dict[str, Any], ctx: Context) -> Any:
    """The checkpoint to resume from (None: there is none), read on rank 0 and sent to every
    rank (no shared file system needed); a bad one raises CheckpointError on every rank."""
    payload: Any = None
    if ctx.is_main and path is not None and path.exists():
        try:
            payload = load_checkpoint(path)
            _check_same_run(json.loads(payload["config"]), run_config, path)
        except CheckpointError as exc:
            if not ctx.distributed:
                raise
            payload = exc
    payload = distributed.broadcast_object(payload, ctx)
    if isinstance(payload, CheckpointError):
        raise payload
    return payload


def _rng_state(noise_gen: torch.Generator, device: torch.device) -> Dict[str, Tensor]:
    state = {"noise": noise_gen.get_state(), "global": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _rank_rng_state(
    ckpt: Dict[str, Any], ctx: Context, seeds: Tuple[int, int], device: torch.device
) -> Dict[str, Tensor]:
    """This rank's saved generator states; fresh ones, seeded from (seed, rank, step), for a
    rank the checkpointed run did not have."""
    saved = [{k: v for k, v in ckpt["rng"].items() if k != "ranks"}]
    saved += list(ckpt["rng"].get("ranks", []))
    if ctx.rank < len(saved):
        return saved[ctx.rank]
    step = int(ckpt["step"])
    noise = torch.Generator(device).manual_seed(distributed.rank_seed(seeds[0], ctx.rank, step))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(distributed.rank_seed(seeds[1], ctx.rank, step))
        global_state = torch.get_rng_state()
    return {"noise": noise.get_state(), "global": global_state}


def _reduce_metrics(
    loss: Tensor, metrics: Dict[str, Any], weight: float, ctx: Context, device: torch.device
) -> Tuple[bool, Dict[str, Any]]:
    """(whether the loss is finite on every rank, the logged numbers averaged over the ranks
    weighted by their rows); one all-reduce of a few numbers a step."""
    finite, values = _read_metrics(loss, metrics)
    if not ctx.distributed:
        return finite, values
    scalars = sorted(k for k, v in values.items() if isinstance(v, (int, float)))
    local = [weight, float(finite)] + [weight * values[k] if weight else 0.0 for k in scalars]
    total = distributed.all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device), ctx)
    total = total.tolist()
    if total[1] < ctx.world_size:
        finite = False
    for i, key in enumerate(scalars):
        values[key] = total[2 + i] / total[0]
    return finite, values


_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _read_metrics(loss: Tensor, metrics: Mapping[str, Any]) -> Tuple[bool, Dict[str, Any]]:
    """(whether ``loss`` is finite, ``metrics`` as Python values, as :func:`_number` gives them:
    a number for a one-element tensor, a (nested) list for a larger one).

    On a GPU every ``.item()`` waits for the device: the loss and the one-element
    floating-point metrics on its device are stacked and copied to the host in ONE transfer.
    The values are those ``.item()`` gives: stacking promotes to a floating type that holds
    each of them exactly (float16 with bfloat16 goes to float32). Anything else (lists,
    integers, other devices) is read on its own.
    """
    loss = loss.detach()
    fused = loss.numel() == 1 and loss.dtype in _FUSED_DTYPES

    def fusable(v: Any) -> bool:
        return (
            fused
            and isinstance(v, Tensor)
            and v.numel() == 1
            and v.dtype in _FUSED_DTYPES
            and v.device == loss.device
        )

    keys = [k for k, v in metrics.items() if fusable(v)]
    values = {k: None if k in keys else _number(v) for k, v in metrics.items()}
    if not fused:
        return bool(torch.isfinite(loss).all()), values
    numbers = torch.stack([loss.reshape(())] + [metrics[k].detach().reshape(()) for k in keys])
    head, *rest = numbers.tolist()
    values.update(zip(keys, rest))
    return math.isfinite(head), values


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
    """metrics.jsonl, one JSON object a line, flushed at every row. The lines are strict JSON:
    a non-finite number is written as the string ``"nan"``, ``"inf"`` or ``"-inf"``.

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
        # Strict JSON: NaN and infinities become the strings "nan", "inf", "-inf" (as in
        # diagnostics' JSON; read_metrics reads them back); json.dumps would write NaN and
        # Infinity, which strict parsers (JavaScript's JSON.parse, jq) refuse.
        line = json_dumps(row)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def _progress(cfg: TrainConfig, initial: int, main: bool = True):
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal.
    return tqdm(
        total=cfg.steps,
        initial=initial,
        disable=True if cfg.quiet or not main else None,
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


def _run_config(experiment: Experiment, cfg: TrainConfig, ctx: Context) -> Dict[str, Any]:
    from discograd import __version__

    config = {
        "train": dataclasses.asdict(cfg),
        "experiment": experiment.config_dict(),
        "versions": {"discograd": __version__, "torch": torch.__version__},
    }
    if ctx.distributed:
        config["distributed"] = {"world_size": ctx.world_size, "backend": ctx.backend}
    return config


# Settings that may change between a run and its resumption without changing the trajectory
# (compile: but for rounding).
_RESUMABLE = {
    "steps", "resume", "quiet", "eval_every", "ckpt_every", "log_every", "out_dir",
    "eval_splits", "final_splits", "device", "compile",
}  # fmt: skip


def _check_same_run(saved: Dict[str, Any], current: Dict[str, Any], path: Path) -> None:
    # Through JSON, as the saved one went: tuples become lists.
    current = json.loads(json.dumps(current, sort_keys=True, default=str))
    # A setting added to TrainConfig after the checkpoint was written had its default then.
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig()), default=str))
    diffs = []
    for section in ("train", "experiment"):
        old, new = saved.get(section, {}), current.get(section, {})
        if section == "train":
            old = {**defaults, **old}
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


def _summable(value: Any) -> bool:
    return isinstance(value, (int, float))  # bool too: its mean is a fraction


def _accumulate(acc: Dict[str, Any], metrics: Mapping[str, Any]) -> None:
    """Add a step's metrics to ``acc``: numbers are summed (the row logs their mean over the
    steps since the last row); anything else (a vector's list) is not summable and is kept as
    the latest step's value, wrapped as ``{"last": value}`` for :func:`_mean`. Plain Python
    values only: ``acc`` goes into the checkpoint, which loads with weights_only=True."""
    for key, value in metrics.items():
        old = acc.get(key)
        if _summable(value) and (old is None or _summable(old)):
            acc[key] = (old or 0.0) + value
        else:
            acc[key] = {"last": value}
    acc["_n"] = acc.get("_n", 0) + 1


def _mean(value: Any, n: int) -> Any:
    return value["last"] if isinstance(value, dict) else value / n


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


def _say(cfg: TrainConfig, message: str) -> None:
    if not cfg.quiet and distributed.is_main():
        print(message, file=sys.stdout, flush=True)
