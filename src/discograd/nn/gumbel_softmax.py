r"""The Gumbel-softmax sampler as a layer, with its temperature as module state.

.. math:: y = \mathrm{softmax}((\theta + G)/\tau_t),\qquad G_i \sim \mathrm{Gumbel}(0, 1),

with :math:`\tau_t` a float, a tensor (a buffer; an ``nn.Parameter`` to learn it directly), or a
schedule from :mod:`discograd.schedules` read at the module's step count ``num_steps`` (a
buffer, so it survives ``state_dict`` round trips; the schedule reads its host-side mirror, so a
step on a GPU does not wait for a device-to-host copy, see
:class:`~discograd.estimators.base.StepCounter`). ``hard=True`` gives the exact one-hot
:math:`\mathrm{onehot}(\arg\max(\theta + G))` forward and the gradient of y backward
(straight-through Gumbel-softmax). Eager calls go through :func:`discograd.gumbel_softmax`
(generator support, ``-inf`` masks, fast kernels where available).

TorchScript: ``torch.jit.script(GumbelSoftmax(...))`` scripts a frozen copy
(:class:`ScriptedGumbelSoftmax`) holding the temperature in force when it was scripted; a
schedule does not advance in TorchScript, and the scripted ``forward`` takes no ``generator``
(it draws from torch's global generator). An ``nn.Parameter`` temperature stays shared with
the scripted copy; a learned temperature module (e.g.
:class:`~discograd.schedules.LearnedTemperature`) cannot be scripted: use ``torch.compile``.
PyTorch deprecates TorchScript (2.13 warns at every ``torch.jit.script``); ``torch.compile``
is the supported path for new code.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import Tensor, nn

from discograd._validation import check_tau
from discograd.estimators.base import StepCounter
from discograd.ops import gumbel_softmax
from discograd.schedules import Schedule, at_step

__all__ = ["GumbelSoftmax", "ScriptedGumbelSoftmax"]

TauArg = Union[float, Tensor, Schedule]


class GumbelSoftmax(StepCounter):
    r"""Relaxed one-hot samples :math:`\mathrm{softmax}((\theta + G)/\tau)` along ``dim``.

    Args:
        tau: temperature > 0: a float; a tensor broadcastable to the batch shape (the logits'
            shape without ``dim``), stored as a buffer, or as a parameter when it is an
            ``nn.Parameter``; or a schedule ``step -> tau`` (:mod:`discograd.schedules`), read
            at ``num_steps``. A schedule that is an ``nn.Module`` (a learned temperature) is a
            submodule, so its parameters train with the model.
        hard: exact one-hot forward, relaxed gradient backward (straight-through).
        dim: the category dimension.

    ``forward(logits, generator=None)``: logits (..., K, ...) -> samples of the same shape and
    dtype. The layer samples in ``eval()`` mode too (unlike ``nn.Dropout``, which turns itself
    off there): for a deterministic output at test time take the arg max of the logits, or
    pass a seeded ``generator``. Call :meth:`step` once per optimizer step to advance a
    schedule (the step counter ``num_steps`` and its host-side mirror come from
    :class:`~discograd.estimators.base.StepCounter`; restore it with ``load_state_dict``).
    """

    def __init__(self, tau: TauArg = 1.0, hard: bool = False, dim: int = -1) -> None:
        super().__init__()
        if not isinstance(hard, bool):
            raise ValueError(f"hard must be a bool, got {type(hard).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"dim must be an int, got {type(dim).__name__}")
        self.hard, self.dim = hard, dim
        self._schedule: Optional[Schedule] = None
        self._tau_float: Optional[float] = None
        if isinstance(tau, nn.Parameter):
            check_tau(tau.detach())
            self.tau = tau
        elif isinstance(tau, Tensor):
            if tau.requires_grad:
                # A buffer would silently cut the graph to whatever produced tau.
                raise ValueError(
                    "tau: a tensor that requires grad must be an nn.Parameter (registered and "
                    "trained with the module); pass tau.detach() for a fixed temperature"
                )
            check_tau(tau)
            self.register_buffer("tau", tau.clone())
        elif isinstance(tau, nn.Module):
            self.schedule = tau  # registered: a learned temperature's parameters train
        elif callable(tau):
            self._schedule = tau
        else:
            check_tau(tau)
            self._tau_float = float(tau)

    def temperature(self) -> Union[float, Tensor]:
        """The temperature at the current step."""
        if "tau" in self._parameters or "tau" in self._buffers:
            return self.tau
        if "schedule" in self._modules:
            # The host mirror: no sync (traced code: the counter tensor, see at_step).
            return at_step(self.schedule, lambda: self.step_count, lambda: self.num_steps)
        if self._schedule is not None:
            return at_step(self._schedule, lambda: self.step_count, lambda: self.num_steps)
        assert self._tau_float is not None
        return self._tau_float

    def forward(self, logits: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return gumbel_softmax(
            logits, self.temperature(), hard=self.hard, dim=self.dim, generator=generator
        )

    def __prepare_scriptable__(self) -> ScriptedGumbelSoftmax:
        # torch.jit.script calls this hook and scripts what it returns: the Python schedule and
        # discograd.ops (generators, custom autograd) are not TorchScript.
        if "schedule" in self._modules:
            raise TypeError(
                "GumbelSoftmax with a learned temperature module cannot be scripted (its "
                "temperature is Python code); use torch.compile, or a tau nn.Parameter"
            )
        tau = self.temperature()
        if not isinstance(tau, Tensor):
            tau = torch.tensor(float(tau), device=self.num_steps.device)
        return ScriptedGumbelSoftmax(tau, self.hard, self.dim)

    def extra_repr(self) -> str:
        if self._schedule is not None:
            tau = repr(self._schedule)
        elif self._tau_float is not None:
            tau = repr(self._tau_float)
        else:
            tau = "see submodule" if "schedule" in self._modules else "tensor"
        return f"tau={tau}, hard={self.hard}, dim={self.dim}"


class ScriptedGumbelSoftmax(nn.Module):
    """TorchScript form of :class:`GumbelSoftmax` at a fixed temperature (see the module doc).

    The noise is drawn as in :mod:`discograd.ops` (the uniform at the midpoint of its grid cell,
    ``log1p`` above 1/2), so it is finite for every draw; straight-through keeps the forward
    value exactly one-hot (``onehot + (y - stop(y))``).
    """

    def __init__(self, tau: Tensor, hard: bool = False, dim: int = -1) -> None:
        super().__init__()
        if isinstance(tau, nn.Parameter):
            self.tau = tau
        else:
            self.register_buffer("tau", tau.detach().clone())
        self.hard, self.dim = hard, dim

    def forward(self, logits: Tensor) -> Tensor:
        return _scriptable_gumbel_softmax(logits, self.tau, self.hard, self.dim)


def _scriptable_gumbel_softmax(logits: Tensor, tau: Tensor, hard: bool, dim: int) -> Tensor:
    """Gumbel-softmax in TorchScript-compatible torch operations (no generator)."""
    if not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor")
    d = dim + logits.dim() if dim < 0 else dim
    work = logits.double() if logits.dtype == torch.float64 else logits.float()
    r = torch.rand_like(work)
    half_cell = 2.0**-54 if logits.dtype == torch.float64 else 2.0**-25
    e = torch.where(r < 0.5, -torch.log(r + half_cell), -torch.log1p(-((1.0 - r) - half_cell)))
    scores = work - torch.log(e)
    t = tau.to(work.dtype)
    if t.dim() > 0:
        shape: List[int] = list(logits.shape)
        batch = shape[:d] + shape[d + 1 :]
        t = t.expand(batch).unsqueeze(d)
    # Masked (-inf) scores divide a finite stand-in, so a learned tau gets no 0 * inf = NaN.
    masked = torch.isneginf(scores)
    tempered = torch.where(masked, scores, torch.where(masked, 0.0, scores) / t)
    y = torch.softmax(tempered, d)
    if hard:
        one_hot = torch.zeros_like(y).scatter_(d, scores.argmax(d, keepdim=True), 1.0)
        y = one_hot + (y - y.detach())  # exactly one-hot in value, y's gradient
    return y.to(logits.dtype)
