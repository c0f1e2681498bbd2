r"""The estimator interface and the pieces every estimator shares.

An estimator turns a loss ``f`` of a discrete random variable into a *surrogate*: a tensor whose
value is a Monte Carlo estimate of :math:`\mathbb{E}[f(z)]` and whose gradient, from
``surrogate.mean().backward()``, is the estimator's gradient estimate, delivered to ``logits``
(and on to whatever produced them) and to every parameter ``f`` depends on::

    est = discograd.estimators.get("reinmax", tau=1.0)
    surrogate = est(f, logits)              # logits: (..., K); f(z): (S, ...) per-sample losses
    surrogate.mean().backward()

The surrogates are built with the "magic box" of DiCE (Foerster et al., 2018): a term
:math:`x - \mathrm{stop}(x)` is zero in value and carries the gradient of :math:`x`, so one
tensor holds both the estimate and the gradient.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from discograd._validation import check_positive_int
from discograd.estimators._family import Family, make_family
from discograd.schedules import Schedule, as_schedule, at_step

LossFn = Callable[[Tensor], Tensor]
LogitsLike = Union[Tensor, Distribution]

_REGISTRY: Dict[str, Type[Estimator]] = {}


def register(name: str) -> Callable[[Type[Estimator]], Type[Estimator]]:
    """Class decorator adding an estimator to the registry under ``name``."""

    def deco(cls: Type[Estimator]) -> Type[Estimator]:
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> List[str]:
    """Names of all registered estimators, sorted."""
    return sorted(_REGISTRY)


def check_registered(names: Sequence[str], what: str) -> None:
    """ValueError naming ``what`` (the argument or option) and every name of ``names`` that is
    not a registered estimator, with the registered ones."""
    registered = available()
    unknown = [name for name in names if name not in registered]
    if unknown:
        raise ValueError(
            f"{what}: unknown estimator {', '.join(map(repr, unknown))}; available: "
            f"{', '.join(registered)}"
        )


def estimator_class(name: str) -> Type[Estimator]:
    """The class registered as ``name``, without building it."""
    key = str(name).lower().replace("_", "-")
    if key not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; available: {', '.join(available())}")
    return _REGISTRY[key]


def get(name: Union[str, Estimator], **options) -> Estimator:
    """Build the estimator registered as ``name`` with ``options`` (an Estimator passes through)."""
    if isinstance(name, Estimator):
        if options:
            raise ValueError("options cannot be given together with an Estimator instance")
        return name
    cls = estimator_class(name)
    key = cls.name
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in options if k not in params or k == "self"]
    if unknown:
        valid = [p for p in params if p != "self"]
        raise ValueError(
            f"estimator {key!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(valid) or '(none)'}"
        )
    return cls(**options)


class StepCounter(nn.Module):
    """A module with the step counter that temperature schedules read (estimators, layers).

    The count is kept twice. The buffer ``num_steps`` is the saved state: it is in
    ``state_dict`` (checkpoints resume their schedule, old checkpoints load unchanged) and moves
    with ``.to()``. A Python ``int`` mirror of it, :attr:`step_count`, is what schedules read:
    ``int(num_steps)`` of a tensor on a GPU is a device-to-host copy that waits for every queued
    kernel, and a schedule read at each call would stall the training loop once per step.

    :meth:`step` advances both. The mirror is re-read from the buffer, once and lazily, after
    ``load_state_dict`` and after ``num_steps`` is assigned a new tensor; those (and
    :meth:`step`) are the supported ways to change the count. Writes into the buffer behind the
    module's back (``num_steps.fill_(...)``, ``num_steps.copy_(...)``) are not seen. Code traced
    by ``torch.compile`` reads the buffer instead (a changing int attribute would recompile).
    """

    num_steps: Tensor  # the step counter buffer registered below

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        # The host mirror of num_steps; None: stale, read the buffer at the next use.
        self._step_count: Optional[int] = 0

    @property
    def step_count(self) -> int:
        """The number of :meth:`step` calls so far (``num_steps`` as a host-side int)."""
        if torch.compiler.is_compiling():
            # torch.compile guards on a module's int attributes: the mirror, new at every step,
            # would recompile the graph at every step. Traced code reads the buffer as before.
            return int(self.num_steps)
        if self._step_count is None:
            self._step_count = int(self.num_steps)  # one sync after a load, not one per step
        return self._step_count

    def step(self) -> None:
        """Advance the step counter that schedules (temperatures) read; call once per update."""
        count = self.step_count  # before the buffer changes: a stale mirror reads the old value
        # In place: `+=` would also re-assign the buffer through nn.Module.__setattr__.
        self.num_steps.add_(1)
        self._step_count = count + 1

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "num_steps":  # a new counter tensor: its value is read at the next use
            self.__dict__["_step_count"] = None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # The loaded buffer is the truth (also when its key was missing: then it is unchanged).
        self._step_count = None


class Estimator(StepCounter):
    """Base class: subclasses implement :meth:`estimate`.

    Class attributes document the estimator and are checked by the tests: ``distributions``
    (which inputs it accepts), ``unbiased``, ``evaluations`` (evaluations of f per call; S is
    ``n_samples``) and ``compilable`` (False for the estimators that take derivatives inside a
    call with ``torch.autograd.grad`` and keep the graph, which torch.compile's compiled
    backward does not support; ``TrainConfig(compile=True)`` refuses them). The step counter
    (``num_steps``, :meth:`step`) comes from :class:`StepCounter`.
    """

    name: ClassVar[str] = ""
    distributions: ClassVar[Tuple[str, ...]] = ("categorical", "bernoulli")
    unbiased: ClassVar[bool] = False
    evaluations: ClassVar[str] = "1"
    compilable: ClassVar[bool] = True

    def forward(
        self,
        f: LossFn,
        logits: LogitsLike,
        *,
        distribution: str = "categorical",
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        family = make_family(logits, distribution, supported=self.distributions, name=self.name)
        return self.estimate(f, family, generator)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class Relaxed(Estimator):
    """Base of estimators with a temperature: holds the schedule and reads it at each call."""

    def __init__(self, tau: Union[float, Tensor, Schedule] = 1.0) -> None:
        super().__init__()
        schedule = as_schedule(tau)
        if isinstance(schedule, nn.Module):
            self.schedule = schedule  # registered, so a learned temperature is a parameter
        else:
            self._schedule = schedule

    @property
    def tau_schedule(self) -> Schedule:
        return self.schedule if "schedule" in self._modules else self._schedule

    def temperature(self) -> Union[float, Tensor]:
        """The temperature for the current step (read from the host-side step count: no sync)."""
        return at_step(self.tau_schedule, lambda: self.step_count, lambda: self.num_steps)


# ---------------------------------------------------------------------------------------------
# Shared pieces. An estimator file should contain only what makes that estimator different.


def zero_value(x: Tensor) -> Tensor:
    """x - stop(x): exactly zero in value, with the gradient of x (DiCE's magic box minus one)."""
    return x - x.detach()


def evaluate(f: LossFn, z: Tensor, family: Family, what: str = "f") -> Tensor:
    """Call f on a stack of n samples and check it returned (n, *out_shape) per-sample losses.

    out_shape must be a prefix of the rows' shape: an entry of f's output is the loss of the
    rows under it.
    """
    out = f(z)
    n = z.shape[0]
    rows = tuple(family.row_shape)
    if not isinstance(out, Tensor):
        raise TypeError(f"{what} must return a tensor, got {type(out).__name__}")
    ok = out.dim() >= 1 and out.shape[0] == n and tuple(out.shape[1:]) == rows[: out.dim() - 1]
    if not ok:
        raise ValueError(
            f"{what} returned shape {tuple(out.shape)} for samples of shape {tuple(z.shape)}; "
            f"expected per-sample losses of shape ({n}, *batch) where batch is a prefix of "
            f"{rows} (f must keep the leading sample dimension)"
        )
    if not out.is_floating_point():
        raise ValueError(f"{what} must return floating-point losses, got {out.dtype}")
    return out


def sum_rows(x: Tensor, out_ndim: int) -> Tensor:
    """Sum (n, *row_shape) over the rows beyond the first ``out_ndim``: (n, *out_shape)."""
    dims = tuple(range(1 + out_ndim, x.dim()))
    return x.sum(dims) if dims else x


def score_surrogate(fz: Tensor, log_q: Tensor, baseline: Union[Tensor, float] = 0.0) -> Tensor:
    r"""Per-sample surrogate :math:`f + \mathrm{stop}(f - b)\,(\log q - \mathrm{stop}(\log q))`.

    Value f; gradient :math:`\nabla f + (f - b)\nabla \log q`. ``log_q`` must already be summed
    to f's shape.
    """
    return fz + (fz - baseline).detach() * zero_value(log_q)


def score_draws(
    f: LossFn, family: Family, n_samples: int, generator: Optional[torch.Generator]
) -> Tuple[Tensor, Tensor, Tensor]:
    """The draw every score-function estimator starts from.

    Returns samples z (n, *value_shape), their losses f(z) (n, *out_shape) and
    log q(z) summed over the rows under each output entry, (n, *out_shape).
    """
    z = family.sample(n_samples, generator)
    fz = evaluate(f, z, family)
    log_q = sum_rows(family.log_prob(z), fz.dim() - 1)
    return z, fz, log_q


def value_and_grad(
    f: LossFn, x: Tensor, family: Family, *, what: str, keep_graph: bool
) -> Tuple[Tensor, Tensor]:
    """f at the points x (n, *value_shape) and df/dx, for estimators built on f's derivative.

    ``keep_graph``: keep the value's graph to f's parameters (the value then enters the
    surrogate); otherwise both come back detached.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():  # f'(x) is part of the estimate, even under no_grad
        fx = evaluate(f, x, family, what=what)
        dfx = None
        if fx.requires_grad:
            (dfx,) = torch.autograd.grad(fx.sum(), x, retain_graph=keep_graph, allow_unused=True)
    if dfx is None:
        raise ValueError(
            f"{what}: f must be differentiable in its input (its output does not depend on z "
            "through differentiable operations); this estimator uses f's derivative"
        )
    return (fx if keep_graph else fx.detach()), dfx


def check_n_samples(n_samples: int, minimum: int = 1) -> int:
    check_positive_int(n_samples, name="n_samples", minimum=minimum)
    return n_samples


def categorical_view(family: Family) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Categorical logits (..., K) for the family, and the map from a (relaxed) one-hot back to
    the family's samples. Bernoulli(sigmoid(a)) is the two-class categorical with logits [0, a],
    so every categorical relaxation serves Bernoulli variables too."""
    if family.kind == "bernoulli":
        return family.as_categorical()  # type: ignore[attr-defined]
    return family.logits, lambda y: y  # type: ignore[attr-defined]
