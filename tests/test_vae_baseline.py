"""benchmarks/vae_baseline.py: the plain-PyTorch VAE is the model and estimator that
``discograd vae`` trains (same initial weights, same loss, same gradient in expectation), and
the timing harness runs end to end."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from discograd import estimators
from discograd.models import DiscreteVAE
from discograd.train import seeded
from tests.scripts import benchmark_script

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "vae_baseline.py"


@pytest.fixture(scope="module")
def vb():
    with benchmark_script("vae_baseline") as module:
        yield module


def test_the_plain_part_does_not_import_discograd():
    plain = PATH.read_text().split("# The harness.")[0]
    tree = ast.parse(plain)
    names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert names and not [n for n in names if n.split(".")[0] == "discograd"], names


def _pair(vb, hidden=(16,), n_latent=2, n_classes=3):
    with seeded(0):
        lib = DiscreteVAE(64, n_latent, n_classes, hidden)
    torch.manual_seed(0)
    plain = vb.PlainVAE(64, n_latent, n_classes, hidden)
    return lib.double(), plain.double()


def test_same_architecture_and_initial_weights(vb):
    lib, plain = _pair(vb, hidden=(256,), n_latent=8, n_classes=8)  # the command's defaults
    a, b = lib.state_dict(), plain.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _draws(loss_fn, params, n):
    """n independent (loss, gradient projected on 4 fixed directions) pairs."""
    dirs = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype)
            for i, p in enumerate(params)]  # fmt: skip
    out = []
    for _ in range(n):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params)
        proj = [sum(float((g * d.roll(j, 0)).sum()) for g, d in zip(grads, dirs)) for j in range(4)]
        out.append([float(loss.detach())] + proj)
    return torch.tensor(out, dtype=torch.float64)


def _agree(x, y, n_se=4.0) -> bool:
    se = (x.var(0) / x.shape[0] + y.var(0) / y.shape[0]).sqrt()
    return bool(((x.mean(0) - y.mean(0)).abs() <= n_se * se).all())


def _relaxed_only(logits, tau, generator):
    gumbel = -torch.empty_like(logits).exponential_(generator=generator).log()
    return torch.softmax((logits + gumbel) / tau, -1)


def test_same_loss_and_gradient_in_expectation(vb, monkeypatch):
    """The negative ELBO and its ST-Gumbel-softmax gradient (loss value and 4 projections of
    the parameter gradient): plain vs DiscreteVAE.loss with discograd's estimator, within 4
    combined SE over 1500 draws each. Negative control: the plain loop with the relaxed sample
    forward (Gumbel-softmax without straight-through) is rejected by the same test."""
    lib, plain = _pair(vb)
    x = torch.bernoulli(torch.full((8, 64), 0.3), generator=torch.Generator().manual_seed(1))
    x = x.double()
    est = estimators.get("st-gumbel-softmax", tau=0.5)
    g_lib, g_plain = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    n = 1500
    ours = _draws(lambda: lib.loss(x, est, g_lib)[0], list(lib.parameters()), n)
    theirs = _draws(lambda: plain.loss(x, 0.5, g_plain)[0], list(plain.parameters()), n)
    assert _agree(ours, theirs), (ours.mean(0), theirs.mean(0))
    monkeypatch.setattr(vb, "st_gumbel_softmax", _relaxed_only)
    other = _draws(lambda: plain.loss(x, 0.5, g_plain)[0], list(plain.parameters()), n)
    assert not _agree(ours, other), (ours.mean(0), other.mean(0))


def test_harness_runs_and_reports_both(vb, tmp_path, capsys):
    out = tmp_path / "numbers.json"
    argv = ["--steps", "20", "--warmup", "10", "--log-every", "10", "--repeats", "1",
            "--hidden", "16", "--threads", "0", "--json", str(out)]  # fmt: skip
    assert vb.main(argv) == 0
    text = capsys.readouterr().out
    assert "| plain |" in text and "| library |" in text
    numbers = json.loads(out.read_text())
    for name in ("plain", "library"):
        assert numbers[name]["wall_median"] > 0 and numbers[name]["cpu_median"] > 0
    assert numbers["plain"]["wall_ratio"] == 1.0
