r"""Stochastic layers: discrete samples in an ordinary ``forward``, with an estimator's gradient.

A *pathwise* estimator (relaxations and straight-through) puts its gradient on the sample
itself: it calls ``f`` once at a tensor ``z`` that is the sample in value and whose graph back
to the logits is the estimator's backward rule. These layers obtain that ``z`` by calling the
estimator with a loss that captures its input::

    def capture(z):              # z: (S, ..., K), carries the estimator's gradient path
        captured.append(z)
        return zeros(S)          # a zero loss of the right shape; the surrogate is discarded
    estimator(capture, logits)
    return captured[0]

so ``z`` has, for gumbel-softmax: the relaxed sample and its reparameterization gradient;
st-gumbel-softmax: the exact one-hot with the relaxed sample's gradient; st: the exact sample
with the gradient of :math:`\pi = \mathrm{softmax}(\theta)`; gumbel-rao: the exact sample with
the ST-GS Jacobian averaged over conditional Gumbels; reinmax: the exact sample with ReinMax's
second-order gradient. Downstream layers then backpropagate through ``z`` as through any
activation, and the estimator's formula holds with f = the rest of the network.

Score-function estimators (reinforce, rloo, nvil, muprop, darn, arm, disarm, rebar, relax) and
exact enumeration do not put their gradient on the sample: they need the loss itself, as
``surrogate = est(f, logits)``. These layers reject them with an error saying so.

Temperatures: the estimator's schedule reads its step counter, advanced by ``layer.step()``
(which steps the estimator), by ``estimator.step()`` (e.g. the trainer's, when the same
estimator object is given to the layer), or for a whole model by :func:`step_schedules`.

TorchScript: the layers call an estimator with a Python closure, which TorchScript cannot
compile; ``torch.jit.script`` raises a ``TypeError`` saying so. ``torch.compile`` works.
"""

from __future__ import annotations

from typing import ClassVar, List, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from discograd.estimators import GumbelRao, ReinMax, StraightThrough
from discograd.estimators import GumbelSoftmax as GumbelSoftmaxEstimator
from discograd.estimators.base import Estimator, get

__all__ = ["StochasticBernoulli", "StochasticCategorical", "step_schedules", "PATHWISE"]

# Estimators whose gradient is carried by the sample they pass to f (ST-GS subclasses GS).
PATHWISE: Tuple[Type[Estimator], ...] = (
    GumbelSoftmaxEstimator,
    StraightThrough,
    GumbelRao,
    ReinMax,
)


def _is_pathwise(estimator: Estimator) -> bool:
    # Third-party estimators may opt in with a class attribute ``pathwise = True``.
    return isinstance(estimator, PATHWISE) or bool(getattr(type(estimator), "pathwise", False))


class _Stochastic(nn.Module):
    distribution: ClassVar[str] = ""

    def __init__(self, estimator: Union[str, Estimator] = "st-gumbel-softmax", **options) -> None:
        super().__init__()
        est = get(estimator, **options)
        if not _is_pathwise(est):
            raise ValueError(
                f"estimator {est.name or type(est).__name__!r} does not carry its gradient on "
                "the sample (a score-function, control-variate or enumeration estimator), so it "
                "cannot act as a layer: use the surrogate interface, surrogate = est(f, logits, "
                f"distribution={self.distribution!r}), with f computing the loss from the "
                "samples. Layer estimators: gumbel-softmax, st-gumbel-softmax, st, gumbel-rao, "
                "reinmax"
            )
        self.estimator = est

    def forward(self, logits: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        captured: List[Tensor] = []

        def capture(z: Tensor) -> Tensor:
            captured.append(z)
            return z.new_zeros(z.shape[:1])

        self.estimator(capture, logits, distribution=self.distribution, generator=generator)
        if len(captured) != 1:
            raise RuntimeError(
                f"estimator {self.estimator.name!r} evaluated f {len(captured)} times; a layer "
                "needs a pathwise estimator that evaluates it once"
            )
        z = captured[0]
        # n_samples = S > 1 keeps the leading sample dimension; one sample is shaped like logits.
        return z[0] if getattr(self.estimator, "n_samples", 1) == 1 else z

    def step(self) -> None:
        """Advance the estimator's step counter (its temperature schedule); once per update."""
        self.estimator.step()

    def __prepare_scriptable__(self) -> nn.Module:
        raise TypeError(
            f"{type(self).__name__} cannot be scripted: it calls its estimator with a Python "
            "closure that captures the sample. Use torch.compile, or discograd.nn.GumbelSoftmax "
            "(which scripts) for a relaxed categorical"
        )


class StochasticCategorical(_Stochastic):
    """One-hot (or relaxed) categorical samples of ``logits`` (..., K), gradient by ``estimator``.

    Args:
        estimator: a name (``"st-gumbel-softmax"`` by default, ``"gumbel-softmax"``, ``"st"``,
            ``"gumbel-rao"``, ``"reinmax"``) or an :class:`~discograd.estimators.Estimator`
            instance (shared with a trainer that steps it, for instance).
        **options: the estimator's options when given by name (``tau``, ``k``, ...).

    ``forward(logits, generator=None)`` returns samples shaped like ``logits`` ((S, ...) with
    the estimator's ``n_samples = S > 1``). It samples in ``eval()`` mode too (unlike
    ``nn.Dropout``): for a deterministic output take the arg max of the logits, or pass a
    seeded ``generator``.
    """

    distribution = "categorical"


class StochasticBernoulli(_Stochastic):
    """0/1 (or relaxed) Bernoulli samples with P(1) = sigmoid(logits), gradient by ``estimator``.

    ``logits`` may have any shape; samples have the same shape. Arguments as
    :class:`StochasticCategorical` (relaxations use the binary Concrete, i.e. the two-class
    view [0, logit]).
    """

    distribution = "bernoulli"


def step_schedules(module: nn.Module) -> int:
    """Call ``step()`` once on every estimator and :class:`~discograd.nn.GumbelSoftmax` in
    ``module`` (an estimator shared by several layers is stepped once). Returns how many."""
    from discograd.nn.gumbel_softmax import GumbelSoftmax

    seen = set()
    for m in module.modules():
        if isinstance(m, (Estimator, GumbelSoftmax)) and id(m) not in seen:
            seen.add(id(m))
            m.step()
    return len(seen)
