"""discograd.nn: the GumbelSoftmax layer, stochastic layers, their temperatures and state,
TorchScript, torch.compile and dtype/device moves.

The stochastic layers are checked against the estimators themselves: with the same generator
state, the gradient a layer delivers must equal the gradient of ``est(f, logits)``.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import discograd
from discograd import estimators
from discograd import nn as dnn
from discograd.schedules import ExponentialDecay, LearnedTemperature
from tests.stats import chi_square_pvalue

# torch 2.13 deprecates TorchScript (DeprecationWarning on every call); it still works.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

PATHWISE = ["gumbel-softmax", "st-gumbel-softmax", "st", "gumbel-rao", "reinmax"]
HARD = ["st-gumbel-softmax", "st", "gumbel-rao", "reinmax"]


def _argmax_pvalue(samples: Tensor, probs: Tensor) -> float:
    """Chi-square p-value of the arg max counts of (n, K) samples against probs (K,)."""
    k = probs.shape[-1]
    counts = np.bincount(samples.argmax(-1).numpy(), minlength=k)
    return chi_square_pvalue(counts, probs.double().numpy())


# ---------------------------------------------------------------------------------------------
# GumbelSoftmax layer


def test_gumbel_softmax_layer_equals_the_functional_sampler():
    logits = torch.randn(5, 4)
    for hard in (False, True):
        layer = dnn.GumbelSoftmax(tau=0.7, hard=hard)
        got = layer(logits, generator=torch.Generator().manual_seed(3))
        want = discograd.gumbel_softmax(
            logits, 0.7, hard=hard, generator=torch.Generator().manual_seed(3)
        )
        assert torch.equal(got, want)


def test_gumbel_softmax_layer_dim_and_hard_samples_follow_softmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20_000
    # Categories along dim 0, n draws along dim 1.
    logits = probs.log().unsqueeze(1).expand(4, n)
    y = dnn.GumbelSoftmax(tau=0.5, hard=True, dim=0)(
        logits, generator=torch.Generator().manual_seed(0)
    )
    assert set(y.unique().tolist()) == {0.0, 1.0} and torch.equal(y.sum(0), torch.ones(n))
    assert _argmax_pvalue(y.T, probs) > 1e-3
    # Negative control: the same counts are rejected against other probabilities.
    assert _argmax_pvalue(y.T, torch.softmax(probs.log() / 2, -1)) < 1e-3


def test_gumbel_softmax_layer_temperatures():
    logits = torch.randn(3, 5, requires_grad=True)
    # A tensor temperature is a buffer (saved, moved with the module), one per row here.
    layer = dnn.GumbelSoftmax(tau=torch.tensor([0.5, 1.0, 2.0]))
    assert "tau" in dict(layer.named_buffers()) and "tau" in layer.state_dict()
    assert layer(logits).shape == (3, 5)
    # An nn.Parameter temperature is trained.
    tau = nn.Parameter(torch.tensor(0.8))
    layer = dnn.GumbelSoftmax(tau=tau)
    assert list(layer.parameters()) == [tau]
    (layer(logits)[:, 0]).sum().backward()
    assert tau.grad is not None and tau.grad != 0
    # A learned temperature module is a submodule whose parameter gets a gradient.
    layer = dnn.GumbelSoftmax(tau=LearnedTemperature(1.5, tau_min=0.1))
    (layer(logits)[:, 0]).sum().backward()
    assert layer.schedule.log_excess.grad is not None
    # A schedule reads the step counter, which step() advances.
    layer = dnn.GumbelSoftmax(tau=ExponentialDecay(2.0, rate=0.5, tau_min=0.1, every=1))
    assert layer.temperature() == 2.0
    layer.step()
    layer.step()
    assert layer.temperature() == pytest.approx(2.0 * np.exp(-1.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": float("nan")}, "tau"),
        ({"tau": torch.tensor([1.0, -1.0])}, "tau"),
        ({"tau": torch.tensor(1.0, requires_grad=True)}, "nn.Parameter"),
        ({"hard": 1}, "hard"),
        ({"dim": 1.0}, "dim"),
    ],
)
def test_gumbel_softmax_layer_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dnn.GumbelSoftmax(**kwargs)


def test_gumbel_softmax_layer_state_dict_round_trip():
    layer = dnn.GumbelSoftmax(tau=LearnedTemperature(2.0, tau_min=0.1))
    with torch.no_grad():
        layer.schedule.log_excess.fill_(-0.3)
    for _ in range(7):
        layer.step()
    fresh = dnn.GumbelSoftmax(tau=LearnedTemperature(2.0, tau_min=0.1))
    fresh.load_state_dict(layer.state_dict())
    assert int(fresh.num_steps) == 7
    assert torch.equal(fresh.temperature(), layer.temperature())


def test_gumbel_softmax_layer_to_dtype():
    layer = dnn.GumbelSoftmax(tau=torch.tensor([0.5, 2.0])).to(torch.float64)
    assert layer.tau.dtype == torch.float64 and layer.num_steps.dtype == torch.long
    logits = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = layer(logits)
    assert y.dtype == torch.float64
    y[:, 0].sum().backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------------------------
# TorchScript (GumbelSoftmax only; the stochastic layers say they do not script)


def test_scripted_gumbel_softmax_samples_and_gradient():
    probs = torch.tensor([0.1, 0.2, 0.7])
    scripted = torch.jit.script(dnn.GumbelSoftmax(tau=0.5, hard=True))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)  # it serializes, and the loaded copy samples
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.manual_seed(0)
    y = loaded(probs.log().expand(20_000, 3))
    assert set(y.unique().tolist()) == {0.0, 1.0} and torch.equal(y.sum(-1), torch.ones(20_000))
    assert _argmax_pvalue(y, probs) > 1e-3
    assert _argmax_pvalue(y, torch.tensor([0.2, 0.2, 0.6])) < 1e-3  # negative control

    # Soft samples: the gradient of w . y in theta is the softmax Jacobian at y, over tau.
    tau = 0.7
    soft = torch.jit.script(dnn.GumbelSoftmax(tau=tau))
    theta = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64)
    y = soft(theta)
    assert y.dtype == torch.float64
    (grad,) = torch.autograd.grad((y * w).sum(), theta)
    y = y.detach()
    want = y * (w - (y * w).sum(-1, keepdim=True)) / tau
    torch.testing.assert_close(grad, want)


def test_scripted_gumbel_softmax_freezes_the_current_temperature():
    layer = dnn.GumbelSoftmax(tau=ExponentialDecay(2.0, rate=0.1, tau_min=0.1, every=1))
    for _ in range(3):
        layer.step()
    scripted = torch.jit.script(layer)
    assert float(scripted.tau) == pytest.approx(2.0 * np.exp(-0.3))
    # A per-row tensor temperature and masked categories work in the scripted form too.
    scripted = torch.jit.script(dnn.GumbelSoftmax(tau=torch.tensor([0.5, 1.0]), dim=0))
    logits = torch.tensor([[0.0, float("-inf")], [0.0, 1.0], [0.0, 2.0]])
    y = scripted(logits)
    assert y[0, 1] == 0 and torch.allclose(y.sum(0), torch.ones(2))


def test_scripted_gumbel_softmax_shares_a_parameter_temperature():
    tau = nn.Parameter(torch.tensor(0.9))
    scripted = torch.jit.script(dnn.GumbelSoftmax(tau=tau))
    y = scripted(torch.randn(4, 3))
    y[:, 0].sum().backward()
    assert tau.grad is not None and tau.grad != 0


def test_what_does_not_script_says_so():
    with pytest.raises(TypeError, match="learned temperature"):
        torch.jit.script(dnn.GumbelSoftmax(tau=LearnedTemperature(1.0)))
    with pytest.raises(TypeError, match="torch.compile"):
        torch.jit.script(dnn.StochasticCategorical("st"))


# ---------------------------------------------------------------------------------------------
# Stochastic layers


def _layer_and_estimator_grads(name: str, distribution: str, logits: Tensor, seed: int):
    """Gradient of a nonlinear loss through the layer, and through est(f, logits)."""
    w = torch.linspace(-1.0, 2.0, logits.shape[-1], dtype=logits.dtype)

    def loss(z: Tensor) -> Tensor:  # per-sample (leading dim) losses, nonlinear in z
        return ((z * w).sum(-1) ** 2).sum(-1)

    est = estimators.get(name, **({} if name == "st" else {"tau": 0.8}))
    cls = dnn.StochasticCategorical if distribution == "categorical" else dnn.StochasticBernoulli
    layer = cls(est)
    a = logits.detach().clone().requires_grad_(True)
    z = layer(a, generator=torch.Generator().manual_seed(seed))
    assert z.shape == logits.shape
    (g_layer,) = torch.autograd.grad(loss(z.unsqueeze(0)).sum(), a)
    b = logits.detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    surrogate = est(loss, b, distribution=distribution, generator=g)
    (g_est,) = torch.autograd.grad(surrogate.sum(), b)
    return z, g_layer, g_est


@pytest.mark.parametrize("name", PATHWISE)
@pytest.mark.parametrize("distribution", ["categorical", "bernoulli"])
def test_layer_gradient_is_the_estimators_gradient(name, distribution):
    logits = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z, g_layer, g_est = _layer_and_estimator_grads(name, distribution, logits, seed=11)
    assert g_layer.abs().sum() > 0
    torch.testing.assert_close(g_layer, g_est, rtol=1e-12, atol=1e-12)
    if name in HARD:  # exact samples forward
        if distribution == "categorical":
            assert torch.equal(z.sum(-1), torch.ones(8, dtype=z.dtype))
        assert set(z.unique().tolist()) <= {0.0, 1.0}
    # Control: another draw (8 rows: a repeat of all 8 samples is unlikely) gives another
    # gradient, so the equality above is not vacuous.
    _, g_other, _ = _layer_and_estimator_grads(name, distribution, logits, seed=12)
    assert not torch.allclose(g_layer, g_other)


def test_layer_samples_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    z = dnn.StochasticCategorical("reinmax")(
        probs.log().expand(20_000, 3), generator=torch.Generator().manual_seed(0)
    )
    assert _argmax_pvalue(z.detach(), probs) > 1e-3
    assert _argmax_pvalue(z.detach(), torch.tensor([0.5, 0.35, 0.15])) < 1e-3
    p = torch.tensor([0.2, 0.9])
    zb = dnn.StochasticBernoulli("st")(
        torch.logit(p).expand(20_000, 2), generator=torch.Generator().manual_seed(1)
    )
    ones = zb.detach().sum(0)
    se = (20_000 * p * (1 - p)).sqrt()
    assert ((ones - 20_000 * p).abs() < 4 * se).all()


def test_n_samples_keeps_a_leading_sample_dim():
    z = dnn.StochasticCategorical("gumbel-softmax", n_samples=5)(torch.randn(2, 3))
    assert z.shape == (5, 2, 3)


@pytest.mark.parametrize(
    "name", sorted(set(estimators.available()) - set(PATHWISE)), ids=lambda n: n
)
def test_surrogate_only_estimators_are_rejected_with_a_pointer(name):
    for cls in (dnn.StochasticCategorical, dnn.StochasticBernoulli):
        with pytest.raises(ValueError, match=r"surrogate = est\(f, logits"):
            cls(name)


def test_layer_schedules_step_from_layer_trainer_or_model():
    decay = ExponentialDecay(1.0, rate=0.1, tau_min=0.01, every=1)
    est = estimators.get("gumbel-softmax", tau=decay)
    model = nn.Sequential(dnn.StochasticCategorical(est), dnn.StochasticCategorical(est))
    gs = dnn.GumbelSoftmax(tau=ExponentialDecay(1.0, rate=0.1, tau_min=0.01, every=1))
    model.append(gs)
    model[0].step()  # the user, through the layer
    est.step()  # a trainer holding the same estimator object
    assert int(est.num_steps) == 2
    # step_schedules steps each estimator once, even when two layers share it.
    assert dnn.step_schedules(model) == 2
    assert int(est.num_steps) == 3 and int(gs.num_steps) == 1
    assert est.temperature() == pytest.approx(np.exp(-0.3))


def test_layer_state_dict_round_trip_and_dtype():
    def build() -> nn.Module:
        return nn.Sequential(
            nn.Linear(4, 6),
            nn.Unflatten(-1, (2, 3)),
            dnn.StochasticCategorical("gumbel-softmax", tau=LearnedTemperature(1.0, 0.05)),
            nn.Flatten(),
            nn.Linear(6, 1),
        )

    model = build()
    for _ in range(4):
        model[2].step()
    with torch.no_grad():
        model[2].estimator.schedule.log_excess.fill_(0.25)
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    assert int(fresh[2].estimator.num_steps) == 4
    assert torch.equal(fresh[2].estimator.temperature(), model[2].estimator.temperature())

    fresh = fresh.to(torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    out = fresh(x)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert fresh[0].weight.grad.dtype == torch.float64
    assert fresh[2].estimator.schedule.log_excess.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_layers_on_cuda():
    model = nn.Sequential(
        nn.Linear(4, 6),
        nn.Unflatten(-1, (2, 3)),
        dnn.StochasticCategorical("reinmax"),
        dnn.GumbelSoftmax(tau=torch.tensor(0.5)),
        nn.Flatten(),
        nn.Linear(6, 1),
    ).to("cuda", torch.float64)
    assert model[3].tau.device.type == "cuda"
    out = model(torch.randn(3, 4, device="cuda", dtype=torch.float64))
    out.sum().backward()
    assert out.device.type == "cuda" and torch.isfinite(model[0].weight.grad).all()


# ---------------------------------------------------------------------------------------------
# torch.compile


def _compile_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(6, 12),
        nn.Unflatten(-1, (4, 3)),
        dnn.StochasticCategorical("st-gumbel-softmax", tau=0.7),
        dnn.GumbelSoftmax(tau=0.5),
        nn.Flatten(),
        nn.Linear(12, 1),
    )


def _compiled_matches_eager(backend: str) -> None:
    model = _compile_model()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))

    def run(m):
        torch.manual_seed(5)  # the layers draw from the global generator
        out = m(x)
        grads = torch.autograd.grad(out.sum(), list(model.parameters()))
        return out.detach(), grads

    ref_out, ref_grads = run(model)
    torch._logging.set_logs(dynamo=logging.ERROR)  # graph-break warnings are expected
    try:
        out, grads = run(torch.compile(model, backend=backend, fullgraph=False))
    finally:
        torch._logging.set_logs()
        torch._dynamo.reset()
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_torch_compile_aot_autograd_matches_eager():
    # aot_eager traces forward and backward through AOTAutograd like the default backend, without
    # Inductor's code generation (minutes of C++ compiles on a 2-core CI machine).
    _compiled_matches_eager("aot_eager")


@pytest.mark.skipif(
    not os.environ.get("DISCOGRAD_SLOW_TESTS"),
    reason="slow (Inductor compiles C++; minutes on 2 cores): set DISCOGRAD_SLOW_TESTS=1",
)
def test_torch_compile_inductor_matches_eager():
    with torch._inductor.config.patch(fallback_random=True):  # eager's random stream
        _compiled_matches_eager("inductor")


def test_torch_compile_reference_path_at_a_second_shape(monkeypatch):
    monkeypatch.setenv("DISCOGRAD_DISABLE_KERNELS", "1")  # the pure-PyTorch sampler
    compiled = torch.compile(dnn.GumbelSoftmax(tau=0.5), backend="eager")
    torch._logging.set_logs(dynamo=logging.ERROR)
    try:
        for shape in [(2, 3), (4, 5)]:
            assert compiled(torch.zeros(shape)).shape == shape
    finally:
        torch._logging.set_logs()
        torch._dynamo.reset()
