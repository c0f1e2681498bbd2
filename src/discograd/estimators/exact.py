r"""Exact enumeration: the reference every other estimator is tested against.

.. math:: \mathbb{E}[f(z)] = \sum_{c} q(c)\, f(c), \qquad
          \nabla \mathbb{E}[f(z)] = \sum_c \nabla q(c)\, f(c) + q(c)\, \nabla f(c)

over every joint configuration c of the rows under one output entry of f (K^N for N
categorical rows of K classes, 2^D for D Bernoullis). Unbiased and exact, zero variance.
Cost: K^N evaluations of f, in one call on a stack of configurations, plus one probe call of
f at the mode to learn which row dims its output keeps (none when ``batch_dims`` is given); an
error above ``max_configurations``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from discograd.estimators._family import Family
from discograd.estimators.base import Estimator, LossFn, evaluate, register, sum_rows


@register("exact")
class Exact(Estimator):
    """Enumerate all configurations.

    Args:
        max_configurations: refuse (``ValueError``) to enumerate more configurations than this.
        batch_dims: how many leading row dims f's output keeps (its batch dims). ``None``
            finds out by calling f once, without gradient, on the most likely configuration.
    """

    unbiased = True
    evaluations = "K^N (+ 1 probe of f unless batch_dims is given)"

    def __init__(self, max_configurations: int = 2**16, batch_dims: Optional[int] = None) -> None:
        super().__init__()
        if max_configurations < 1:
            raise ValueError(f"max_configurations must be >= 1, got {max_configurations}")
        self.max_configurations = max_configurations
        self.batch_dims = batch_dims

    def _out_ndim(self, f: LossFn, family: Family) -> int:
        if self.batch_dims is not None:
            return self.batch_dims
        # The mode, a valid value from no random stream: the probe must not move the user's
        # stream, and torch.compile traces it (a private generator was a graph break).
        with torch.no_grad():
            return evaluate(f, family.mode(), family).dim() - 1

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        out_ndim = self._out_ndim(f, family)
        count = family.num_configurations(out_ndim)
        if count > self.max_configurations:
            raise ValueError(
                f"exact enumeration needs {count} configurations, above max_configurations="
                f"{self.max_configurations}; raise it or choose a sampling estimator"
            )
        z = family.enumerate(out_ndim)
        fz = evaluate(f, z, family)
        if fz.dim() - 1 != out_ndim:
            raise ValueError(f"f returned {fz.dim() - 1} batch dims, expected {out_ndim}")
        log_q = sum_rows(family.log_prob(z), out_ndim)
        return (log_q.exp() * fz).sum(0)
