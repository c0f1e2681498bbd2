"""Temperature schedules: Constant, ExponentialDecay (Jang et al., 2016), LearnedTemperature,
as_schedule, and their argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from discograd.schedules import Constant, ExponentialDecay, LearnedTemperature, as_schedule


def test_constant_returns_its_value_at_every_step():
    sched = Constant(0.7)
    assert [sched(t) for t in (0, 1, 10**6)] == [0.7, 0.7, 0.7]
    tau = torch.tensor([0.5, 2.0])
    assert Constant(tau)(3) is tau
    assert "0.7" in repr(sched)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([1.0, 0.0])])
def test_constant_rejects_non_positive_temperatures(bad):
    with pytest.raises(ValueError, match="tau"):
        Constant(bad)


def test_exponential_decay_follows_jang_et_al():
    """tau_t = max(tau_min, tau0 exp(-r t')) with t' = N floor(t / N): updated every N steps."""
    tau0, rate, tau_min, every = 2.0, 1e-3, 0.5, 100
    sched = ExponentialDecay(tau0=tau0, rate=rate, tau_min=tau_min, every=every)
    assert sched(0) == tau0
    assert sched(every - 1) == tau0  # not updated before step N
    assert sched(every) == pytest.approx(tau0 * math.exp(-rate * every), rel=1e-12)
    assert sched(2 * every + 37) == pytest.approx(tau0 * math.exp(-rate * 2 * every), rel=1e-12)
    assert sched(10**6) == tau_min  # the floor
    values = [sched(t) for t in range(0, 3000, 7)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    # rate 0 keeps tau0; every = 1 updates at each step
    assert ExponentialDecay(tau0=1.5, rate=0.0, tau_min=0.1, every=1)(10**5) == 1.5
    assert ExponentialDecay(tau0=1.0, rate=0.1, tau_min=0.01, every=1)(3) == pytest.approx(
        math.exp(-0.3), rel=1e-12
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"tau0": 0.0}, "tau0"),
        ({"tau0": -2.0}, "tau0"),
        ({"tau_min": 0.0}, "tau_min"),
        ({"tau_min": float("nan")}, "tau_min"),
        ({"rate": -1e-3}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"every": 0}, "every"),
    ],
)
def test_exponential_decay_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ExponentialDecay(**kwargs)


def test_learned_temperature_is_positive_trainable_and_above_its_floor():
    sched = LearnedTemperature(init=2.0, tau_min=0.25)
    assert isinstance(sched, nn.Module)
    params = list(sched.parameters())
    assert len(params) == 1 and params[0].requires_grad
    tau = sched(0)
    assert tau.item() == pytest.approx(2.0, rel=1e-6)
    assert sched(123).item() == tau.item()  # learned, not scheduled: the step is ignored
    # d tau / d s = tau - tau_min, so it is trainable from any starting point.
    (grad,) = torch.autograd.grad(tau, params[0])
    assert grad.item() == pytest.approx(2.0 - 0.25, rel=1e-6)
    # Training pushes tau down towards, but never below, tau_min.
    opt = torch.optim.SGD(sched.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        sched().backward()
        opt.step()
    final = sched().item()
    assert 0.25 < final < 0.3
    # and up, when the loss asks for it
    opt = torch.optim.SGD(sched.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        (-sched()).backward()
        opt.step()
    assert sched().item() > final
    assert LearnedTemperature()().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"init": 0.0}, "init"),
        ({"init": -1.0}, "init"),
        ({"init": 1.0, "tau_min": -0.1}, "tau_min"),
        ({"init": 1.0, "tau_min": 1.0}, "tau_min"),
        ({"init": 1.0, "tau_min": 2.0}, "tau_min"),
    ],
)
def test_learned_temperature_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LearnedTemperature(**kwargs)


def test_as_schedule_wraps_values_and_passes_callables_through():
    sched = as_schedule(0.3)
    assert isinstance(sched, Constant) and sched(5) == 0.3
    tau = torch.tensor(0.8)
    assert as_schedule(tau)(5) is tau
    decay = ExponentialDecay()
    assert as_schedule(decay) is decay
    learned = LearnedTemperature()
    assert as_schedule(learned) is learned
    fn = lambda step: 1.0 / (1 + step)  # noqa: E731
    assert as_schedule(fn) is fn
    with pytest.raises(ValueError, match="tau"):
        as_schedule(0.0)
    with pytest.raises(TypeError, match="tau"):
        as_schedule("hot")
