"""Temperature schedules: Constant, ExponentialDecay (Jang et al., 2016), LearnedTemperature,
as_schedule, their argument checks, and the step counter they read (a saved buffer with a
host-side mirror, so that reading a schedule does not synchronise with a GPU)."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import discograd.nn as dnn
from discograd import estimators
from discograd.schedules import (
    Constant,
    ExponentialDecay,
    LearnedTemperature,
    as_schedule,
    at_step,
)


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
        # inf was accepted: the tensor path computed inf * 0 = NaN at step 0.
        ({"rate": float("inf")}, "rate"),
    ],
)
def test_exponential_decay_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ExponentialDecay(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"every": 2.5}, "every"), ({"every": True}, "every"), ({"rate": "0.1"}, "rate")],
)
def test_exponential_decay_arguments_of_the_wrong_type_name_the_argument(kwargs, name):
    with pytest.raises(TypeError, match=name):
        ExponentialDecay(**kwargs)


def test_exponential_decay_refuses_negative_steps():
    sched = ExponentialDecay(tau0=1.0, rate=0.1, tau_min=0.2, every=3)
    for step in (-1, -4):  # gave exp(+0.3) and exp(+0.6): temperatures above tau0
        with pytest.raises(ValueError, match="step"):
            sched(step)
    assert sched(0) == 1.0 and float(sched(torch.tensor(0.0, dtype=torch.float64))) == 1.0
    # The largest finite rate is fine on both paths (exp underflows to 0: tau_min).
    big = ExponentialDecay(tau0=1.0, rate=1e300, tau_min=0.2, every=1)
    assert big(0) == 1.0 and big(1) == 0.2
    assert float(big(torch.tensor(0.0, dtype=torch.float64))) == 1.0
    assert float(big(torch.tensor(1.0, dtype=torch.float64))) == 0.2


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
        # exp(log 1e-50) is 0.0 in float32: the temperature was exactly 0.
        ({"init": 1e-50}, "init"),
        ({"init": 1e-40}, "init"),  # a float32 subnormal: no longer a normal number
    ],
)
def test_learned_temperature_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LearnedTemperature(**kwargs)


def test_small_learned_temperatures_that_float32_holds_are_accepted_and_positive():
    for init in (1e-30, 2 * torch.finfo(torch.float32).tiny):
        tau = LearnedTemperature(init=init)()
        assert tau.dtype == torch.float32 and tau.item() > 0
        assert tau.item() == pytest.approx(init, rel=1e-5)


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


# ---------------------------------------------------------------------------------------------
# The step counter schedules read: a buffer (saved) with a host-side int mirror (read).


class _HostReads(TorchDispatchMode):
    """Counts tensor -> Python number reads (``aten._local_scalar_dense``: what ``int(t)`` and
    ``t.item()`` run), each a device-to-host copy and synchronisation on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _harmonic(step: int) -> float:
    return 1.0 / (1 + step)  # a new temperature at every step


_COUNTED = {
    "estimator": lambda: estimators.get("gumbel-softmax", tau=_harmonic),
    "layer": lambda: dnn.GumbelSoftmax(tau=_harmonic),
}


@pytest.mark.parametrize("kind", sorted(_COUNTED))
def test_schedule_follows_the_steps_through_a_checkpoint(kind):
    module = _COUNTED[kind]()
    for k in range(5):
        assert module.temperature() == _harmonic(k)
        module.step()
    assert int(module.num_steps) == 5 and module.step_count == 5
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    fresh = _COUNTED[kind]()
    fresh.temperature()  # a fresh module's mirror, in use, must still be replaced by the load
    fresh.load_state_dict(torch.load(buf))
    assert fresh.temperature() == _harmonic(5)
    fresh.step()
    assert fresh.temperature() == _harmonic(6) and int(fresh.num_steps) == 6
    # Loading into a module that has run ahead goes back to the checkpoint's count.
    fresh.load_state_dict({"num_steps": torch.tensor(2)})  # the format every version saved
    assert fresh.temperature() == _harmonic(2) and fresh.step_count == 2
    # Loading through a parent module reaches the counter too.
    parent = nn.Sequential(_COUNTED[kind]())
    parent.load_state_dict({"0.num_steps": torch.tensor(9)})
    assert parent[0].temperature() == _harmonic(9)


def test_schedules_that_ignore_the_step_are_not_given_one():
    # So that code traced by torch.compile never reads the counter for them (a graph break).
    def count():
        calls.append(1)
        return 7

    calls: list = []
    assert at_step(Constant(0.3), count) == 0.3 and calls == []
    assert at_step(LearnedTemperature(0.9), count).item() == pytest.approx(0.9) and calls == []
    decay = ExponentialDecay(1.0, 0.1, 0.01, every=1)
    assert at_step(decay, count) == decay(7) and calls == [1]
    # Given the counter tensor (what traced code passes), the same temperature as a tensor,
    # floor included.
    for step in (0, 7, 13, 1000):
        tau = decay(torch.tensor(step))
        assert isinstance(tau, torch.Tensor) and tau.item() == pytest.approx(decay(step), 1e-15)
    assert ExponentialDecay(2.0, 0.5, 0.3, every=4)(torch.tensor(9)).item() == pytest.approx(
        max(0.3, 2.0 * math.exp(-0.5 * 8)), 1e-15
    )
    assert at_step(lambda step: 1.0 / (1 + step), count) == 1 / 8 and calls == [1, 1]
    # An estimator with a constant temperature reads no counter, even a stale one.
    est = estimators.get("gumbel-softmax", tau=0.4)
    est.num_steps = torch.tensor(5)  # marks the host mirror stale
    with _HostReads() as reads:
        assert est.temperature() == 0.4
    assert reads.count == 0


@pytest.mark.parametrize("kind", sorted(_COUNTED))
def test_schedule_reads_the_host_mirror_not_the_buffer(kind):
    """No device sync per step: after the one read that follows a load, stepping and reading
    the temperature never turn the counter tensor into a Python int."""
    module = _COUNTED[kind]()
    module.load_state_dict({"num_steps": torch.tensor(3)})
    with _HostReads() as reads:
        taus = []
        for _ in range(10):
            taus.append(module.temperature())
            module.step()
    assert taus == [_harmonic(k) for k in range(3, 13)]
    assert reads.count == 1  # the lazy re-read after load_state_dict, then none
    with _HostReads() as reads:
        module.temperature()
        module.step()
    assert reads.count == 0
    # Hence writes into the buffer behind the module's back are not seen (documented): the
    # supported ways to set the count are load_state_dict and assigning a new tensor.
    with torch.no_grad():
        module.num_steps.fill_(1000)
    assert module.temperature() == _harmonic(14)
    module.num_steps = torch.tensor(20)
    assert module.temperature() == _harmonic(20)
    module.step()
    assert module.temperature() == _harmonic(21) and int(module.num_steps) == 21


def test_step_counter_moves_with_the_module():
    module = dnn.GumbelSoftmax(tau=_harmonic)
    module.step()
    moved = module.to(torch.float64)  # buffers keep their value; the mirror stays valid
    assert moved.temperature() == _harmonic(1) and moved.num_steps.dtype == torch.long
    copy = pickle.loads(pickle.dumps(module))
    copy.step()
    assert copy.temperature() == _harmonic(2) and int(copy.num_steps) == 2
    assert module.temperature() == _harmonic(1)
