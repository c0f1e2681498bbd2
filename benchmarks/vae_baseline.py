r"""Steps per second of ``discograd vae`` against the same VAE written in plain PyTorch.

    python benchmarks/vae_baseline.py                      # the command's defaults, 1 thread
    python benchmarks/vae_baseline.py --threads 2 --repeats 7
    python benchmarks/vae_baseline.py --threads 2 --compiled   # also discograd vae --compile

The plain implementation (:class:`PlainVAE`, :func:`st_gumbel_softmax`, :func:`plain_train`)
imports nothing from discograd: it is what a user would write by hand for the model and the
estimator ``discograd vae`` trains by default (see ``discograd.cli.vae.DEFAULTS``): N = 8
categorical latents of K = 8 classes, an MLP encoder 64-256-64 and its mirror as decoder,
Bernoulli pixels, the negative ELBO with an analytic KL to the uniform prior, the
straight-through Gumbel-softmax estimator at tau = 0.5 (Jang et al., 2016),

.. math:: y = \mathrm{softmax}((\theta + G)/\tau),\quad D = \mathrm{onehot}(\arg\max y),
          \quad z = D + y - \mathrm{stop}(y),

Adam at lr 2e-3, batches of 256 dynamically binarized digits (a new Bernoulli draw and a new
order every epoch), the decoder's output bias set to logit(mean pixel), float32.

The harness runs both in the same process, on the same data tensor, device, dtype and number
of torch threads, alternating the two (plain first in even repeats, library first in odd ones)
so that load from other processes hits both alike. The library side is the ``discograd vae``
command itself, called in process with evaluation off until the end (``--eval-every 0``,
``--iw-samples 0``, ``--no-plots``); its rate is read from the times of the training rows
``fit`` writes to metrics.jsonl, so the final evaluation and checkpoint are excluded. Both
rates are training steps per second between step ``--warmup`` and the last step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# The plain PyTorch implementation (no discograd below this line until the harness).


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class PlainVAE(nn.Module):
    """Categorical VAE: encoder MLP -> (B, N, K) logits, decoder MLP -> (B, D) pixel logits.

    Built in the same order as ``discograd.models.DiscreteVAE`` (encoder, then decoder), so the
    same seed gives the same initial weights.
    """

    def __init__(self, x_dim: int, n_latent: int, n_classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.n_latent, self.n_classes = n_latent, n_classes
        code = n_latent * n_classes
        self.encoder = _mlp((x_dim, *hidden, code))
        self.decoder = _mlp((code, *reversed(hidden), x_dim))

    def init_output_bias(self, mean: Tensor) -> None:
        p = mean.clamp(1e-3, 1 - 1e-3)
        last = self.decoder[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.bias.copy_(torch.log(p) - torch.log1p(-p))

    def loss(
        self, x: Tensor, tau: float, generator: Optional[torch.Generator]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """(mean negative ELBO, mean reconstruction term, mean KL) of the batch x (B, D)."""
        logits = self.encoder(x).unflatten(-1, (self.n_latent, self.n_classes))
        z = st_gumbel_softmax(logits, tau, generator)
        rec = F.binary_cross_entropy_with_logits(
            self.decoder(z.flatten(-2)), x, reduction="none"
        ).sum(-1)
        log_q = torch.log_softmax(logits, -1)
        kl = (log_q.exp() * log_q).sum((-2, -1)) + self.n_latent * math.log(self.n_classes)
        return rec.mean() + kl.mean(), rec.mean(), kl.mean()


def st_gumbel_softmax(logits: Tensor, tau: float, generator: Optional[torch.Generator]) -> Tensor:
    """Straight-through Gumbel-softmax: the exact one-hot forward, the relaxed sample's gradient."""
    # G = -log E, E ~ Exp(1): as torch.nn.functional.gumbel_softmax draws it.
    gumbel = -torch.empty_like(logits).exponential_(generator=generator).log()
    y = torch.softmax((logits + gumbel) / tau, -1)
    hard = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return hard + y - y.detach()


def plain_train(
    train: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    tau: float,
    n_latent: int,
    n_classes: int,
    hidden: Sequence[int],
    seed: int = 0,
    device: str = "cpu",
    log_every: int = 50,
    on_step: Optional[Callable[[int], None]] = None,
) -> Dict[str, float]:
    """Train :class:`PlainVAE` on ``train`` (n, D) intensities; ``on_step(step)`` after each
    optimizer step (the harness reads its clock there). Returns the last logged losses."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = PlainVAE(train.shape[1], n_latent, n_classes, hidden)
    model.init_output_bias(train.mean(0))
    model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    data_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator(dev).manual_seed(seed + 2)
    logged: Dict[str, float] = {}
    step = 0
    while step < steps:
        order = torch.randperm(train.shape[0], generator=data_gen)
        for start in range(0, train.shape[0], batch_size):
            if step == steps:
                break
            x = torch.bernoulli(train[order[start : start + batch_size]], generator=data_gen)
            loss, rec, kl = model.loss(x.to(dev), tau, noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % log_every == 0 or step == steps:
                logged = {"step": step, "loss": loss.item(), "rec": rec.item(), "kl": kl.item()}
            if on_step is not None:
                on_step(step)
    return logged


# ---------------------------------------------------------------------------------------------
# The harness.


class _Clock:
    """Wall and CPU time (this process, all threads) after chosen optimizer steps."""

    def __init__(self, device: str, at: Tuple[int, int]) -> None:
        self.device, self.at = device, at
        self.marks: Dict[int, Tuple[float, float]] = {}

    def __call__(self, step: int) -> None:
        if step in self.at:
            if torch.device(self.device).type == "cuda":
                torch.cuda.synchronize(self.device)  # time the work, not its queueing
            self.marks[step] = (time.perf_counter(), time.process_time())

    def rates(self) -> Tuple[float, float]:
        """(steps per wall second, steps per CPU second) between the two marks."""
        (w0, c0), (w1, c1) = self.marks[self.at[0]], self.marks[self.at[1]]
        n = self.at[1] - self.at[0]
        return n / (w1 - w0), n / max(c1 - c0, 1e-9)


Run = Tuple[float, float, float]  # steps per wall second, per CPU second, final loss


def plain_rate(train: Tensor, args: argparse.Namespace) -> Run:
    """The plain loop, timed from the end of step ``warmup`` to the end of the last step."""
    clock = _Clock(args.device, (args.warmup, args.steps))
    logged = plain_train(
        train,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        tau=args.tau,
        n_latent=args.n_latent,
        n_classes=args.n_classes,
        hidden=args.hidden,
        seed=args.seed,
        device=args.device,
        log_every=args.log_every,
        on_step=clock,
    )
    return (*clock.rates(), logged["loss"])


def library_argv(args: argparse.Namespace, out: str) -> List[str]:
    """``discograd vae`` with the harness's settings, evaluating only at the end."""
    return [
        "vae",
        "--steps", str(args.steps),
        "--batch-size", str(args.batch_size),
        "--lr", str(args.lr),
        "--tau", str(args.tau),
        "--n-latent", str(args.n_latent),
        "--n-classes", str(args.n_classes),
        "--hidden", ",".join(map(str, args.hidden)),
        "--seed", str(args.seed),
        "--device", args.device,
        "--threads", str(args.threads),
        "--log-every", str(args.log_every),
        "--eval-every", "0",
        "--iw-samples", "0",
        "--out", out,
        "--no-plots",
        "--quiet",
    ]  # fmt: skip


def library_rate(args: argparse.Namespace, extra: Sequence[str] = ()) -> Run:
    """``discograd vae`` (the command, in process, with the options ``extra`` added), timed like
    :func:`plain_rate`.

    The clock is read after each optimizer step through ``Estimator.step``, which ``fit`` calls
    once per update, right after ``optimizer.step()`` (as the plain loop's ``on_step``); the
    final evaluation and checkpoint come after the last mark.
    """
    from discograd.cli import main
    from discograd.estimators.base import Estimator

    clock = _Clock(args.device, (args.warmup, args.steps))
    original = Estimator.step
    updates = [0]

    def step(self: Estimator) -> None:
        original(self)
        updates[0] += 1
        clock(updates[0])

    Estimator.step = step  # type: ignore[method-assign]
    # The command prints its final line; the harness prints its own.
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        with tempfile.TemporaryDirectory() as out:
            code = main([*library_argv(args, out), *extra])
            rows = (Path(out) / "metrics.jsonl").read_text().splitlines()
    finally:
        Estimator.step = original  # type: ignore[method-assign]
        sys.stdout.close()
        sys.stdout = stdout
    if code != 0:
        raise RuntimeError(f"discograd vae exited with status {code}")
    train_rows = [r for r in map(json.loads, rows) if r.get("split") == "train"]
    return (*clock.rates(), train_rows[-1]["loss"])


def _library_reference_rate(args: argparse.Namespace) -> Run:
    """:func:`library_rate` with discograd's fused kernels off (its pure-PyTorch samplers)."""
    key, before = "DISCOGRAD_DISABLE_KERNELS", os.environ.get("DISCOGRAD_DISABLE_KERNELS")
    os.environ[key] = "1"
    try:
        return library_rate(args)
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def measure(args: argparse.Namespace) -> Dict[str, object]:
    """Interleaved repeats of each variant; medians and the ratios to the plain loop.

    Variants: ``plain`` (this file's loop), ``library`` (``discograd vae`` as shipped),
    with ``--reference`` ``library-reference`` (the command with its fused kernels off, to
    separate the training loop's overhead from the kernels' gain), and with ``--compiled``
    ``library-compiled`` (the command with ``--compile``; its compilation falls in the warmup
    steps, and a later repeat reuses torch.compile's caches of the same process).
    """
    from discograd.cli.vae import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_dataset("digits").train.float()  # the same tensor for every variant
    runs: Dict[str, Callable[[], Run]] = {
        "plain": lambda: plain_rate(train, args),
        "library": lambda: library_rate(args),
    }
    if args.reference:
        runs["library-reference"] = lambda: _library_reference_rate(args)
    if args.compiled:
        runs["library-compiled"] = lambda: library_rate(args, ["--compile"])
    names = list(runs)
    wall: Dict[str, List[float]] = {name: [] for name in names}
    cpu: Dict[str, List[float]] = {name: [] for name in names}
    losses: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        # Each variant goes first as often as the others: drifting load hits them alike.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c, loss = runs[name]()
            wall[name].append(w)
            cpu[name].append(c)
            losses[name].append(loss)
            if args.verbose:
                print(
                    f"repeat {r} {name}: {w:.1f} steps/s (wall), {c:.1f} steps/s (CPU time), "
                    f"final training loss {loss:.3f}",
                    flush=True,
                )
    out: Dict[str, object] = {"wall": wall, "cpu": cpu, "final_loss": losses}
    for name in names:
        paired = [v / p for v, p in zip(wall[name], wall["plain"])]
        out[name] = {
            "wall_median": statistics.median(wall[name]),
            "wall_ratio": statistics.median(wall[name]) / statistics.median(wall["plain"]),
            "paired_ratio_median": statistics.median(paired),
            "paired_ratio_range": [min(paired), max(paired)],
            "cpu_median": statistics.median(cpu[name]),
            "cpu_ratio": statistics.median(cpu[name]) / statistics.median(cpu["plain"]),
            "final_loss_median": statistics.median(losses[name]),
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Defaults: those of `discograd vae` (discograd.cli.vae.DEFAULTS and its parser).
    p.add_argument("--steps", type=int, default=1000, help="steps of each run")
    p.add_argument("--warmup", type=int, default=200, help="steps not timed at the start")
    p.add_argument("--repeats", type=int, default=5, help="runs of each, interleaved")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--n-latent", type=int, default=8)
    p.add_argument("--n-classes", type=int, default=8)
    p.add_argument("--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), default=(256,))
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads of both (0: torch's)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also time discograd vae with its fused kernels off (DISCOGRAD_DISABLE_KERNELS=1)",
    )
    p.add_argument(
        "--compiled",
        action="store_true",
        help="also time discograd vae --compile (torch.compile of the training step)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    p.add_argument("--verbose", action="store_true", help="print every run")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.warmup < args.steps or args.warmup % args.log_every:
        print("error: need 0 < --warmup < --steps, --warmup a multiple of --log-every")
        return 2
    load = os.getloadavg()
    result = measure(args)
    result.update(
        threads=torch.get_num_threads(),
        device=args.device,
        load_average_before=[round(v, 2) for v in load],
        load_average_after=[round(v, 2) for v in os.getloadavg()],
        torch=torch.__version__,
        cpus=os.cpu_count(),
    )
    print(
        f"{args.repeats} interleaved repeats of {args.steps} steps (timed from step "
        f"{args.warmup}); {result['threads']} torch thread(s), {args.device}; load average "
        f"{result['load_average_before']} -> {result['load_average_after']}"
    )
    print(
        "| variant | steps/s, wall (median) | / plain | paired ratio / plain: median [range] "
        "| steps/s, CPU time (median) | / plain | final training loss (median) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in result["wall"]:  # type: ignore[union-attr]
        row: Dict = result[name]  # type: ignore[assignment]
        lo, hi = row["paired_ratio_range"]
        print(
            f"| {name} | {row['wall_median']:.1f} | {row['wall_ratio']:.3f} | "
            f"{row['paired_ratio_median']:.3f} [{lo:.3f}, {hi:.3f}] | {row['cpu_median']:.1f} | "
            f"{row['cpu_ratio']:.3f} | {row['final_loss_median']:.3f} |"
        )
    for name, rates in result["wall"].items():  # type: ignore[union-attr]
        print(f"per run, {name}, wall (steps/s): {[round(v, 1) for v in rates]}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
