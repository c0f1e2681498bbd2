"""Gradient estimators for discrete random variables, behind one interface.

``get(name, **options)`` builds one; ``available()`` lists the names. Every estimator is a
``torch.nn.Module`` called as ``surrogate = est(f, logits, distribution=..., generator=...)``;
see :mod:`discograd.estimators.base` for the contract.
"""

from discograd.estimators import (  # noqa: F401  (registration)
    exact,
    gumbel_softmax,
    reinforce,
    reparam,
    st,
)
from discograd.estimators.base import Estimator, Relaxed, available, get, register
from discograd.estimators.baselines import Baseline, EMABaseline, NetworkBaseline
from discograd.estimators.exact import Exact
from discograd.estimators.gumbel_softmax import GumbelSoftmax, STGumbelSoftmax
from discograd.estimators.reinforce import Reinforce
from discograd.estimators.reparam import Reparam
from discograd.estimators.st import StraightThrough

__all__ = [
    "Estimator",
    "Relaxed",
    "available",
    "get",
    "register",
    "Baseline",
    "EMABaseline",
    "NetworkBaseline",
    "Exact",
    "GumbelSoftmax",
    "STGumbelSoftmax",
    "Reinforce",
    "Reparam",
    "StraightThrough",
]
