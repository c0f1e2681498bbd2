r"""Temperature schedules: small callables ``step -> tau`` used by every relaxation.

A schedule is any callable taking the estimator's step count (an ``int``) and returning a
positive float or tensor. Estimators hold their schedule and a step counter that
``Estimator.step()`` (or the trainer) advances once per optimizer step; the counter is a buffer,
so it is saved in ``state_dict`` and restored on resume. A schedule that ignores the count may
say so with a class attribute ``depends_on_step = False`` (:class:`Constant` and
:class:`LearnedTemperature` do): it is then called with 0 (:func:`at_step`), so that code
traced by torch.compile does not read the count (a graph break). One that can compute from
the counter tensor itself says ``tensor_step = True`` (:class:`ExponentialDecay` does): traced
code then gets a tensor temperature, computed in the graph.

- :class:`Constant`: :math:`\tau_t = \tau`.
- :class:`ExponentialDecay`: Jang et al. (2016),
  :math:`\tau_t = \max(\tau_{\min}, \tau_0 \exp(-r \cdot N \lfloor t / N \rfloor))`, updated every
  N steps.
- :class:`LearnedTemperature`: :math:`\tau = \tau_{\min} + \exp(s)` with :math:`s` a parameter,
  trained by whatever loss the relaxed samples feed (Jang et al. learn :math:`1/\tau`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from discograd._validation import check_positive_int, check_tau

__all__ = [
    "Constant",
    "ExponentialDecay",
    "LearnedTemperature",
    "as_schedule",
    "at_step",
    "Schedule",
]

Schedule = Callable[[int], Union[float, Tensor]]


class Constant:
    """tau_t = tau for every step."""

    depends_on_step = False

    def __init__(self, tau: Union[float, Tensor] = 1.0) -> None:
        check_tau(tau)
        self.tau = tau

    def __call__(self, step: int) -> Union[float, Tensor]:
        return self.tau

    def __repr__(self) -> str:
        return f"Constant({self.tau})"


class ExponentialDecay:
    """tau_t = max(tau_min, tau0 * exp(-rate * N * floor(t / N))), N = ``every``."""

    def __init__(
        self, tau0: float = 1.0, rate: float = 1e-4, tau_min: float = 0.5, every: int = 1000
    ) -> None:
        check_tau(tau0, name="tau0")
        check_tau(tau_min, name="tau_min")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise TypeError(f"rate must be a number, got {rate!r}")
        # Finite: the tensor path computes exp(-rate * t) with t = 0 first, and inf * 0 is NaN.
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be finite and >= 0, got {rate}")
        # An int: a float (2.5) or a bool would make the update steps N * floor(t / N) odd.
        check_positive_int(every, name="every")
        self.tau0, self.rate, self.tau_min, self.every = float(tau0), float(rate), tau_min, every

    tensor_step = True  # takes the counter tensor itself (see at_step)

    def __call__(self, step: Union[int, Tensor]) -> Union[float, Tensor]:
        if isinstance(step, Tensor):  # the counter buffer: a float64 0-d tensor, never < 0
            t = (step // self.every * self.every).double()
            return (self.tau0 * torch.exp(-self.rate * t)).clamp_min(self.tau_min)
        if step < 0:  # would give a temperature above tau0: a caller's off-by-one, say so
            raise ValueError(f"step must be >= 0, got {step}")
        t_int = (step // self.every) * self.every
        return max(self.tau_min, self.tau0 * math.exp(-self.rate * t_int))

    def __repr__(self) -> str:
        return (
            f"ExponentialDecay(tau0={self.tau0}, rate={self.rate}, "
            f"tau_min={self.tau_min}, every={self.every})"
        )


class LearnedTemperature(nn.Module):
    """A trainable temperature tau = tau_min + exp(s), initialised at ``init``."""

    depends_on_step = False

    def __init__(self, init: float = 1.0, tau_min: float = 0.0) -> None:
        super().__init__()
        check_tau(init, name="init")
        if tau_min < 0 or tau_min >= init:
            raise ValueError(f"tau_min must be in [0, init), got {tau_min}")
        # exp(s) must be a normal float32: a smaller one rounds to 0 (tau = 0 when tau_min = 0)
        # or to a subnormal, and its gradient d tau / d s = exp(s) vanishes with it.
        tiny = torch.finfo(torch.float32).tiny
        if init - tau_min < tiny:
            raise ValueError(
                f"init must exceed tau_min by at least {tiny:.4g} (float32's smallest normal "
                f"number) for a positive, trainable float32 temperature; got init={init!r}, "
                f"tau_min={tau_min!r}"
            )
        self.tau_min = float(tau_min)
        self.log_excess = nn.Parameter(torch.tensor(math.log(init - tau_min)))

    def forward(self, step: int = 0) -> Tensor:
        return self.tau_min + self.log_excess.exp()


def at_step(
    schedule: Schedule, step: Callable[[], int], counter: Optional[Callable[[], Tensor]] = None
) -> Union[float, Tensor]:
    """``schedule(step())``. Not called: ``step`` when the schedule declares
    ``depends_on_step = False`` (0 is passed); and under torch.compile, when the schedule
    declares ``tensor_step = True`` and ``counter`` (the step counter tensor) is given, the
    schedule gets ``counter()`` instead, so that the traced code computes the temperature
    from the tensor rather than reading it as an int (a graph break)."""
    if not getattr(schedule, "depends_on_step", True):
        return schedule(0)
    traced = torch.compiler.is_compiling()
    if counter is not None and traced and getattr(schedule, "tensor_step", False):
        return schedule(counter())  # type: ignore[arg-type]
    return schedule(step())


def as_schedule(tau: Union[float, Tensor, Schedule]) -> Schedule:
    """A float or tensor becomes :class:`Constant`; a callable is taken as a schedule."""
    if callable(tau):
        return tau
    return Constant(tau)
