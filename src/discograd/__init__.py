"""discograd: sampling, relaxing and differentiating through discrete random variables."""

from discograd import distributions, estimators, nn, schedules
from discograd._validation import set_validate_args
from discograd._version import __version__
from discograd.ops import (
    gumbel_max,
    gumbel_noise,
    gumbel_softmax,
    gumbel_topk,
    relaxed_topk,
    straight_through,
)

__all__ = [
    "__version__",
    "distributions",
    "estimators",
    "nn",
    "schedules",
    "gumbel_max",
    "gumbel_noise",
    "gumbel_softmax",
    "gumbel_topk",
    "relaxed_topk",
    "straight_through",
    "set_validate_args",
]
