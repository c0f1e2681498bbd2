"""Gradient estimators for discrete random variables, behind one interface.

``get(name, **options)`` builds one; ``available()`` lists the names. Every estimator is a
``torch.nn.Module`` called as ``surrogate = est(f, logits, distribution=..., generator=...)``;
see :mod:`discograd.estimators.base` for the contract.
"""

from discograd.estimators import (  # noqa: F401  (registration)
    arm,
    darn,
    disarm,
    exact,
    gumbel_rao,
    gumbel_softmax,
    muprop,
    nvil,
    rebar,
    reinforce,
    reinmax,
    relax,
    reparam,
    rloo,
    st,
)
from discograd.estimators.arm import ARM
from discograd.estimators.base import (
    Estimator,
    Relaxed,
    available,
    check_registered,
    estimator_class,
    get,
    register,
)
from discograd.estimators.baselines import Baseline, EMABaseline, NetworkBaseline
from discograd.estimators.darn import DARN
from discograd.estimators.disarm import DisARM
from discograd.estimators.exact import Exact
from discograd.estimators.gumbel_rao import GumbelRao
from discograd.estimators.gumbel_softmax import GumbelSoftmax, STGumbelSoftmax
from discograd.estimators.muprop import MuProp
from discograd.estimators.nvil import NVIL
from discograd.estimators.rebar import REBAR
from discograd.estimators.reinforce import Reinforce
from discograd.estimators.reinmax import ReinMax
from discograd.estimators.relax import RELAX
from discograd.estimators.reparam import Reparam
from discograd.estimators.rloo import RLOO
from discograd.estimators.st import StraightThrough

__all__ = [
    "Estimator",
    "Relaxed",
    "available",
    "check_registered",
    "estimator_class",
    "get",
    "register",
    "Baseline",
    "EMABaseline",
    "NetworkBaseline",
    "Exact",
    "GumbelRao",
    "GumbelSoftmax",
    "STGumbelSoftmax",
    "Reinforce",
    "ReinMax",
    "Reparam",
    "StraightThrough",
    "DARN",
    "MuProp",
    "NVIL",
    "RLOO",
    "ARM",
    "DisARM",
    "REBAR",
    "RELAX",
]
