"""``TrainConfig(compile=True)``: the compiled step draws the trainer's noise stream without
passing Dynamo a generator, reproducibly and with exact resume; settings it cannot train are
refused before anything runs."""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch
import torch._dynamo

from discograd.estimators import get
from discograd.schedules import ExponentialDecay
from discograd.train import (
    ConfigError,
    _derive_seeds,
    _global_rng_from,
    fit,
    load_checkpoint,
    seeded,
)
from tests.test_train import ESTIMATORS, Crash, Toy, config, params, rows


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_global_rng_from_runs_the_block_on_the_generators_stream():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    with _global_rng_from(gen):
        inside = torch.rand(5)
    reference = torch.Generator().manual_seed(1)
    assert torch.equal(inside, torch.rand(5, generator=reference))
    # The generator continues where the block stopped; the global one is as it was.
    assert torch.equal(gen.get_state(), reference.get_state())
    assert torch.equal(torch.get_rng_state(), before)
    # Also when the block fails.
    with pytest.raises(RuntimeError):
        with _global_rng_from(gen):
            torch.rand(2)
            raise RuntimeError
    torch.rand(2, generator=reference)
    assert torch.equal(gen.get_state(), reference.get_state())
    assert torch.equal(torch.get_rng_state(), before)


@pytest.fixture
def quick_compile(monkeypatch):
    """torch.compile with the aot_eager backend (Dynamo and AOTAutograd, no C++ build), and
    Dynamo's counters and caches fresh."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_training_is_reproducible_and_resumes_exactly(tmp_path, quick_compile):
    make = ESTIMATORS["reinforce-ema"]
    full = Toy(make())
    fit(full, config(tmp_path / "full", compile=True))
    # No graph break: Dynamo never met the noise generator, nor a data-dependent branch (the
    # logits' content checks, the EMA baseline's first update) ...
    assert not dict(torch._dynamo.utils.counters["graph_break"])

    again = Toy(make())
    fit(again, config(tmp_path / "again", compile=True))
    assert same(params(full), params(again))
    # ... yet the noise is the trainer's stream, which the steps advanced (it was drawn from),
    # and another seed trains differently.
    drawn = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["rng"]["noise"]
    assert not torch.equal(drawn, torch.Generator().manual_seed(_derive_seeds(0)[1]).get_state())
    other = Toy(make())
    fit(other, config(tmp_path / "other", compile=True, seed=1))
    assert not same(params(full), params(other))
    # A compiled run killed at step 10 and resumed from its checkpoint at step 8 ends where the
    # uninterrupted one does, with the same metrics file.
    with pytest.raises(Crash):
        fit(Toy(make(), crash_at=10), config(tmp_path / "cut", compile=True))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 8
    resumed = Toy(make())
    fit(resumed, config(tmp_path / "cut", compile=True, resume=True))
    assert same(params(full), params(resumed))
    assert rows(tmp_path / "full") == rows(tmp_path / "cut")


def test_an_annealed_temperature_traces_into_one_graph_for_every_step(quick_compile):
    # The schedule gets the step counter tensor in traced code (no int read, no graph break,
    # no recompile as the step changes) and gives the eager temperature.
    est = get("gumbel-softmax", tau=ExponentialDecay(1.0, 0.1, 0.2, every=2))
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

    def loss(x):
        return est(lambda z: (z * torch.arange(5.0)).sum(-1), x).mean()

    compiled = torch.compile(loss, fullgraph=True)
    taus = []
    for step in range(6):
        taus.append(est.temperature())
        torch.manual_seed(step)
        got = torch.autograd.grad(compiled(x), x)[0]
        torch.manual_seed(step)
        want = torch.autograd.grad(loss(x), x)[0]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        est.step()
    assert taus == [1.0, 1.0, math.exp(-0.2), math.exp(-0.2), math.exp(-0.4), math.exp(-0.4)]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("name", ["darn", "muprop", "rebar", "relax"])
def test_compile_refuses_estimators_that_differentiate_inside_their_call(tmp_path, name):
    assert get(name).compilable is False
    with pytest.raises(ConfigError, match=f"compile=True cannot train estimator '{name}'"):
        fit(Toy(get(name)), config(tmp_path / name, compile=True))
    assert not (tmp_path / name / "metrics.jsonl").exists()  # refused before it started


@pytest.mark.skipif(
    not os.environ.get("DISCOGRAD_SLOW_TESTS"),
    reason="slow (Inductor compiles C++; a minute on 2 cores): set DISCOGRAD_SLOW_TESTS=1",
)
@pytest.mark.parametrize("name", ["gumbel-softmax", "nvil"])
def test_compiled_training_with_inductor_is_reproducible_and_resumes_exactly(tmp_path, name):
    # Inductor draws random numbers its own way (seeded from the global generator, which the
    # step loads with the noise stream): still one stream, the same for the same seed. NVIL's
    # running averages are read in the step and updated after: its backward must still find
    # the values it read (an in-place update failed here, at the first backward).
    def run(out, crash_at=None, resume=False):
        # As in a fresh process: the graphs a run compiles depend on what is cached (a graph
        # for step 0 then one for any step, or the latter from the start), and different
        # graphs may round differently.
        torch._dynamo.reset()
        with seeded(0):  # NVIL's baseline network
            exp = Toy(get(name), crash_at=crash_at)
        fit(exp, config(tmp_path / out, compile=True, steps=6, eval_every=0, resume=resume))
        return params(exp)

    full = run("a")
    assert same(full, run("b"))
    with pytest.raises(Crash):
        run("cut", crash_at=5)
    assert same(full, run("cut", resume=True))  # from the checkpoint at step 4
    torch._dynamo.reset()
