"""Small problems with exact answers by enumeration, shared by the estimator tests.

Every f broadcasts over leading dimensions: categorical f maps (..., N, K) -> (...), Bernoulli
f maps (..., D) -> (...), so tests can stack samples and replicas freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class Problem:
    name: str
    logits: Tensor
    f: Callable[[Tensor], Tensor]
    distribution: str


def _categorical(name: str, n: int, k: int, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    c = torch.randn(n, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)

    def f(z: Tensor) -> Tensor:
        # Nonlinear and coupling the rows: a square of a linear score plus a product term.
        s = (z * c).sum((-1, -2))
        return (s - 0.5) ** 2 + torch.sin((z * w).sum(-1)).prod(-1)

    return Problem(name, logits, f, "categorical")


def _bernoulli(name: str, d: int, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(d, generator=g, dtype=torch.float64)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    t = torch.rand(d, generator=g, dtype=torch.float64)

    def f(z: Tensor) -> Tensor:
        return ((z - t) ** 2).sum(-1) + torch.cos((z * c).sum(-1)) * (z * c).sum(-1)

    return Problem(name, logits, f, "bernoulli")


def categorical_problems() -> list:
    """N x K categorical with K^N <= 1000."""
    return [
        _categorical("cat-1x10", 1, 10, 0),
        _categorical("cat-2x3", 2, 3, 1),
        _categorical("cat-3x4", 3, 4, 2),
    ]


def bernoulli_problems() -> list:
    return [_bernoulli("bern-1", 1, 3), _bernoulli("bern-3", 3, 4), _bernoulli("bern-10", 10, 5)]


def rebar_toy(t: float = 0.45, d: int = 1) -> Problem:
    """REBAR's toy: E[(b - t)^2] summed over d Bernoulli variables."""
    logits = torch.zeros(d, dtype=torch.float64)
    return Problem(f"bitflip-{t}", logits, lambda z: ((z - t) ** 2).sum(-1), "bernoulli")
