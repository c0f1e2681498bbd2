"""Bernoulli latents: the closed-form conditional draws against the two-class categorical route.

    python benchmarks/bernoulli.py                 # logits (100, 200), 5 rounds x 20 calls
    python benchmarks/bernoulli.py --shape 64 30 --rounds 7

Gumbel-Rao, REBAR and RELAX need, for each hard sample b, relaxed noise drawn conditionally
on b. For ``distribution="bernoulli"`` they draw it in closed form (a logistic truncated at
-a, :func:`discograd.estimators._conditional.conditional_logistic`; REBAR and RELAX by
default in the paper's coupled form, which also saves one evaluation of f per sample). The
same estimator can be run on the same Bernoulli variables written as two-class categorical
rows (logits ``[0, a]``, f reading the one-hot's second column), which goes through the
K-class conditional Gumbel sampler: that route is the baseline here.

Both routes run in one process with one torch thread, interleaved round by round; the time of
a call is forward + backward, the median over the rounds of the per-round median is kept.
Prints a markdown table of milliseconds per call and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from discograd import estimators

NAMES = ("gumbel-rao", "rebar", "relax")


def _calls(
    est: torch.nn.Module,
    f: Callable[[Tensor], Tensor],
    logits: Tensor,
    dist: str,
    n: int,
    seed: int,
) -> float:
    gen = torch.Generator().manual_seed(seed)
    times: List[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        est(f, logits, distribution=dist, generator=gen).mean().backward()
        times.append(time.perf_counter() - t0)
        logits.grad = None
        for p in est.parameters():
            p.grad = None
    return statistics.median(times) * 1e3


def measure(shape: Sequence[int], rounds: int, calls: int) -> Dict[str, Dict[str, float]]:
    torch.manual_seed(0)
    a = torch.randn(*shape)
    target = torch.rand(*shape)

    def f_bernoulli(z: Tensor) -> Tensor:  # z: (S, *shape)
        return ((z - target) ** 2).flatten(2).sum(-1)

    def f_categorical(z: Tensor) -> Tensor:  # z: (S, *shape, 2); column 1 is "b = 1"
        return ((z[..., 1] - target) ** 2).flatten(2).sum(-1)

    bern = a.clone().requires_grad_()
    cat = torch.stack([torch.zeros_like(a), a], -1).requires_grad_()
    out: Dict[str, Dict[str, float]] = {}
    for name in NAMES:
        est_b, est_c = estimators.get(name), estimators.get(name)
        est_c.load_state_dict(est_b.state_dict())
        _calls(est_b, f_bernoulli, bern, "bernoulli", 2, 0)  # warm-up
        _calls(est_c, f_categorical, cat, "categorical", 2, 0)
        tb: List[float] = []
        tc: List[float] = []
        for r in range(rounds):
            tb.append(_calls(est_b, f_bernoulli, bern, "bernoulli", calls, r))
            tc.append(_calls(est_c, f_categorical, cat, "categorical", calls, r))
        out[name] = {"bernoulli": statistics.median(tb), "categorical": statistics.median(tc)}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    res = measure(args.shape, args.rounds, args.calls)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = platform.processor() or platform.machine()
    print(
        f"Bernoulli logits {tuple(args.shape)}, 1 thread, {cpu}, "
        f"torch {torch.__version__}, load average {load:.2f}"
    )
    print()
    print("| estimator | closed form (bernoulli) ms | two-class categorical ms | speed-up |")
    print("|---|---|---|---|")
    for name, r in res.items():
        print(
            f"| {name} | {r['bernoulli']:.2f} | {r['categorical']:.2f} | "
            f"{r['categorical'] / r['bernoulli']:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
