r"""Training on several processes: the pieces :func:`discograd.train.fit` needs for DDP.

A multi-process run is N copies of the same command started by ``torchrun`` (or by
``discograd COMMAND --nproc N``, which starts torchrun itself, see :func:`launch`). Each copy
finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its
environment, and :func:`setup` joins them into one process group: gloo on CPU, nccl on GPU.
Then, at every step of :func:`~discograd.train.fit`:

- every rank draws the same global batch of B examples from the same seeded data stream and
  keeps its contiguous share (:func:`shard`): the shares are disjoint and their union is the
  batch a single process would train on, so ``batch_size`` means the same for any N;
- rank r's loss is weighted by :math:`w_r = N n_r / B` (:math:`n_r` its rows), so that the
  average DistributedDataParallel takes of the gradients,

  .. math:: \frac{1}{N} \sum_r w_r \nabla L_r = \sum_r \frac{n_r}{B} \nabla L_r,

  is the gradient of the mean loss over the whole batch, also when the shares are unequal;
- the estimator's noise and torch's global generator are seeded per rank (:func:`rank_seed`):
  ranks draw different noise, rank 0 draws what a single process would, and a run with the same
  seed and N is reproducible;
- logged numbers are averaged over the ranks, weighted by their rows (:func:`all_reduce_sum`);
  only rank 0 evaluates and writes files; checkpoints hold every rank's random state.

Nothing here touches torch's global state at import; a single process (no ``WORLD_SIZE``, or
``WORLD_SIZE=1``) never creates a process group.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, NoReturn, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "Context",
    "all_reduce_gradients",
    "all_reduce_sum",
    "backend_for",
    "broadcast_object",
    "exit_process",
    "gather_objects",
    "is_main",
    "launch",
    "rank",
    "rank_seed",
    "setup",
    "shard",
    "teardown",
    "timeout",
    "under_launcher",
    "world_size",
]

# Long enough for rank 0's evaluations and checkpoints while the other ranks wait; short enough
# that a rank lost without torchrun noticing fails the run instead of hanging it for hours.
TIMEOUT = datetime.timedelta(minutes=30)
TIMEOUT_ENV = "DISCOGRAD_DIST_TIMEOUT_S"


def timeout() -> datetime.timedelta:
    """The process group's timeout: ``$DISCOGRAD_DIST_TIMEOUT_S`` seconds when set, else
    :data:`TIMEOUT`. It also bounds a rendezvous that never completes (after a restart by
    ``torchrun --max-restarts``, torch's ``init_process_group`` can hang; shorter than the
    30 minutes lets torchrun retry sooner)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and seconds < float("inf")):
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


@dataclass(frozen=True)
class Context:
    """Where this process stands in the run: ``rank`` of ``world_size``, its device, and
    whether :func:`setup` created the process group (and :func:`teardown` must end it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_launcher() -> bool:
    """True in a process started by torchrun (its environment names a world size)."""
    return "WORLD_SIZE" in os.environ


def rank() -> int:
    """This process's rank: the process group's, else torchrun's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Number of processes: the process group's, else torchrun's ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Whether this is rank 0, the process that prints and writes files."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def setup(device: str = "cpu") -> Tuple[Context, torch.device]:
    """Join the run's process group and pick this rank's device.

    Uses a process group that already exists (e.g. one the caller initialised); otherwise,
    when torchrun's ``WORLD_SIZE`` exceeds 1, initialises one from the environment with
    :func:`backend_for`. On CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    dev = torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", 0))
    owns = False
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
            return Context(), dev
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this build of torch has no torch.distributed")
        if dev.type == "cuda":
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"device 'cuda': process LOCAL_RANK={local} has no GPU of its own (this "
                    f"machine has {torch.cuda.device_count()}); start at most that many "
                    f"processes per machine"
                )
            torch.cuda.set_device(local)
        dist.init_process_group(backend_for(dev), timeout=timeout())
        owns = True
    ctx = Context(dist.get_rank(), dist.get_world_size(), local, dist.get_backend(), owns)
    if ctx.distributed and dev.type == "cuda":
        if dev.index not in (None, local):
            raise ValueError(
                f"device {device!r} on rank {ctx.rank}: with several processes each one takes "
                f"cuda:LOCAL_RANK; pass device='cuda'"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return ctx, dev


def teardown(ctx: Context) -> None:
    """End the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End this process with exit status ``code``, as the command-line entry points do.

    A process that joined a process group of several ranks (``WORLD_SIZE`` > 1) flushes its
    standard streams and leaves with :func:`os._exit`, skipping the interpreter's shutdown;
    any other process raises :class:`SystemExit` as usual. Why: gloo's worker threads drop
    their references to a collective's tensors a moment after the collective completes, and
    dropping a tensor that Python has seen takes the GIL. If the main thread has begun
    finalising the interpreter by then, the worker thread is made to exit inside a C++
    destructor and the process aborts ("terminate called without an active exception",
    SIGABRT; pytorch/pytorch#190489). :func:`teardown` cannot prevent it:
    ``destroy_process_group`` leaves those threads running. Files are closed by then: the
    trainer closes everything it writes.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream has nothing left to say
                pass
        os._exit(code)
    raise SystemExit(code)


def rank_seed(seed: int, rank: int, *salt: int) -> int:
    """The seed of rank ``rank``'s stream derived from ``seed``: ``seed`` itself on rank 0 (a
    one-process run is unchanged), else a SeedSequence mix of (seed, rank, *salt)."""
    if rank == 0 and not salt:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank), *map(int, salt)]).generate_state(1)[0])


def shard(batch: Any, rank: int, world_size: int) -> Tuple[Any, float]:
    """Rank ``rank``'s contiguous share of ``batch`` and the weight of its loss.

    Every tensor in ``batch`` (a tensor, or lists, tuples and dicts of them) is split along
    dim 0 into ``world_size`` nearly equal parts (``torch.tensor_split``); non-tensors are kept
    whole. The weight is :math:`N n_r / n` for the largest tensor (n rows, n_r of them here),
    so that averaging the ranks' weighted gradients gives the batch mean's gradient.

    A share with no rows (a batch smaller than N, e.g. the last of an epoch) is returned as
    the whole batch with weight 0: the rank then runs its forward and backward, which the
    collective gradient average needs, but contributes nothing.
    """
    if world_size == 1:
        return batch, 1.0
    sizes = [t.shape[0] for t in _tensors(batch) if t.dim() > 0]
    if not sizes:
        raise ValueError("batch: holds no tensor with a batch dimension to share among ranks")
    n = max(sizes)
    n_r = len(range(n)[_bounds(n, rank, world_size)])
    if n_r == 0:
        return batch, 0.0
    return _split(batch, rank, world_size), world_size * n_r / n


def all_reduce_sum(values: Tensor, ctx: Context) -> Tensor:
    """Sum of ``values`` over the ranks (a copy; ``values`` itself on one process)."""
    if not ctx.distributed:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_gradients(parameters: Iterable[nn.Parameter], ctx: Optional[Context] = None) -> None:
    """Average the ``.grad`` of ``parameters`` over the ranks, in place.

    For what DistributedDataParallel does not see: a second optimizer an experiment steps
    inside its ``loss`` (a GAN's discriminator) must call this between its backward and its
    step, or the ranks' copies of that network drift apart.
    """
    n = ctx.world_size if ctx is not None else world_size()
    if n == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_object(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small things: results, checkpoints)."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: Context) -> List[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def launch(args: argparse.Namespace, nproc: int) -> int:
    """Run ``args.func(args)`` in ``nproc`` processes on this machine under torchrun.

    The parsed arguments travel pickled in a private temporary folder (so any command, called
    from the shell or from Python, relaunches unchanged); each worker unpickles them and calls
    ``args.func`` with torchrun's environment set, where :func:`discograd.train.fit` joins the
    process group. Returns torchrun's exit status (non-zero when any worker failed; torchrun
    then stops the others).
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    with tempfile.TemporaryDirectory(prefix="discograd-launch-") as tmp:
        path = Path(tmp) / "args.pkl"
        with open(path, "wb") as fh:
            pickle.dump(args, fh)
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "discograd.distributed", str(path),
        ]  # fmt: skip
        return subprocess.run(cmd).returncode


# ---------------------------------------------------------------------------------------------


def _bounds(n: int, rank: int, world_size: int) -> slice:
    # torch.tensor_split's rule: the first n % N shares get one row more.
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def _split(batch: Any, rank: int, world_size: int) -> Any:
    if isinstance(batch, Tensor):
        if batch.dim() == 0:
            return batch
        return batch[_bounds(batch.shape[0], rank, world_size)]
    if isinstance(batch, (list, tuple)):
        return type(batch)(_split(b, rank, world_size) for b in batch)
    if isinstance(batch, dict):
        return {k: _split(v, rank, world_size) for k, v in batch.items()}
    return batch


def _tensors(batch: Any) -> List[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)):
        return [t for b in batch for t in _tensors(b)]
    if isinstance(batch, dict):
        return [t for b in batch.values() for t in _tensors(b)]
    return []


def _worker(path: str) -> int:
    with open(path, "rb") as fh:
        args = pickle.load(fh)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # a worker started by launch()
    exit_process(_worker(sys.argv[1]))
