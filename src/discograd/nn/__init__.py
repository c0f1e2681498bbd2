"""PyTorch modules: discrete sampling layers for ordinary ``nn.Module`` models.

- :class:`GumbelSoftmax`: the Gumbel-softmax sampler (soft or straight-through) with its
  temperature (float, tensor, parameter or schedule) as module state; scripts with TorchScript.
- :class:`StochasticCategorical`, :class:`StochasticBernoulli`: samples whose gradient follows
  a pathwise estimator (gumbel-softmax, st-gumbel-softmax, st, gumbel-rao, reinmax) inside a
  ``forward`` pass; see :mod:`discograd.nn.stochastic` for how the sample is obtained.
- :func:`step_schedules`: advance every temperature schedule in a model once.

Example::

    model = nn.Sequential(nn.Linear(8, 4 * 10), nn.Unflatten(-1, (4, 10)),
                          discograd.nn.StochasticCategorical("reinmax", tau=1.5),
                          nn.Flatten(), nn.Linear(40, 1))
    model(x).mean().backward()
"""

from discograd.nn.gumbel_softmax import GumbelSoftmax, ScriptedGumbelSoftmax
from discograd.nn.stochastic import (
    PATHWISE,
    StochasticBernoulli,
    StochasticCategorical,
    step_schedules,
)

__all__ = [
    "GumbelSoftmax",
    "PATHWISE",
    "ScriptedGumbelSoftmax",
    "StochasticBernoulli",
    "StochasticCategorical",
    "step_schedules",
]
