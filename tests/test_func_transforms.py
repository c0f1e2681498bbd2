"""torch.func transforms over the samplers: grad and jvp through straight-through samples, vmap
with its own random slices, and input checks that still run (and name the argument) under vmap.

Before, ``torch.func.grad`` refused ``gumbel_softmax(hard=True)`` (an autograd.Function without
``setup_context``), and every sampler failed under vmap while validation was on (the checks read
values with ``float()``, which a vmapped tensor refuses).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, jvp, vmap

import discograd
from discograd.kernels import DISABLE_ENV
from discograd.ops import gumbel_softmax, relaxed_topk, straight_through
from tests.stats import chi_square_pvalue


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


W = torch.arange(5.0)


def test_func_grad_through_a_hard_sample_equals_autograd_for_the_same_noise(monkeypatch):
    x = torch.randn(4, 5, generator=gen(0))
    got = grad(lambda x: (gumbel_softmax(x, 0.5, hard=True, generator=gen(1)) * W).sum())(x)
    # torch.func takes the reference path (the fused kernels have no transform rules): the
    # same noise in eager mode comes from the reference path too.
    monkeypatch.setenv(DISABLE_ENV, "1")
    leaf = x.clone().requires_grad_()
    (gumbel_softmax(leaf, 0.5, hard=True, generator=gen(1)) * W).sum().backward()
    assert leaf.grad is not None
    torch.testing.assert_close(got, leaf.grad, rtol=0, atol=0)
    assert got.abs().sum() > 0


def test_jvp_of_straight_through_is_the_soft_tangent():
    soft = torch.softmax(torch.randn(3, 4, generator=gen(2)), -1)
    hard = torch.nn.functional.one_hot(soft.argmax(-1), 4).to(soft.dtype)
    tangent = torch.randn(3, 4, generator=gen(3))
    value, out = jvp(lambda s: straight_through(hard, s), (soft,), (tangent,))
    assert torch.equal(value, hard) and torch.equal(out, tangent)


@pytest.mark.parametrize("hard", [False, True])
def test_vmap_draws_each_slice_from_the_right_distribution(hard):
    # 20000 slices of the same logits: the arg max frequencies are softmax(logits) (chi-square),
    # so the slices are independent draws, not one draw repeated; "same" repeats one draw.
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5, -2.0])
    batch = logits.expand(20000, 5)
    y = vmap(lambda r: gumbel_softmax(r, 0.5, hard=hard), randomness="different")(batch)
    assert y.shape == batch.shape and torch.allclose(y.sum(-1), torch.ones(20000))
    counts = np.bincount(y.argmax(-1).numpy(), minlength=5)
    assert chi_square_pvalue(counts, torch.softmax(logits, -1).double().numpy()) > 1e-3
    same = vmap(lambda r: gumbel_softmax(r, 0.5, hard=hard), randomness="same")(batch[:50])
    assert (same == same[0]).all()
    # Negative control: the same test rejects the frequencies of the tempered logits.
    wrong = torch.softmax(logits / 0.5, -1).double().numpy()
    assert chi_square_pvalue(counts, wrong) < 1e-6


def test_vmap_of_relaxed_topk_and_noise():
    x = torch.randn(6, 8, generator=gen(4))
    khot = vmap(lambda r: relaxed_topk(r, 3, 0.5, hard=True), randomness="different")(x)
    assert torch.equal(khot.sum(-1), torch.full((6,), 3.0))
    x[2, 1:] = float("-inf")  # one live category where 3 are needed
    with pytest.raises(ValueError, match="k=3 is larger than the number of unmasked"):
        vmap(lambda r: relaxed_topk(r, 3, 0.5), randomness="different")(x)
    noise = vmap(lambda r: discograd.gumbel_noise(r), randomness="different")(x)
    assert noise.shape == x.shape and torch.isfinite(noise).all()
    assert len(set(noise[:, 0].tolist())) == 6  # each slice its own draw


def test_vmap_runs_no_operator_once_per_slice(capfd):
    # The fast noise operator has no batching rule: under vmap torch would loop over the
    # slices (and print a warning), so the reference path draws the noise instead.
    vmap(lambda r: gumbel_softmax(r, 0.5), randomness="different")(torch.randn(4, 5))
    assert "batching rule" not in capfd.readouterr().err


def test_checks_under_vmap_name_the_argument():
    x = torch.randn(4, 5, generator=gen(5))
    soft = lambda r: gumbel_softmax(r, 0.5)  # noqa: E731
    masked = x.clone()
    masked[1] = float("-inf")
    with pytest.raises(ValueError, match="all categories are masked"):
        vmap(soft, randomness="different")(masked)
    nan = x.clone()
    nan[2, 3] = float("nan")
    with pytest.raises(ValueError, match="contains NaN"):
        vmap(soft, randomness="different")(nan)
    tau = torch.tensor([0.5, 0.5, -1.0, 0.5])
    with pytest.raises(ValueError, match="tau must be > 0"):
        vmap(lambda r, t: gumbel_softmax(r, t), randomness="different")(x, tau)
    # The checked dim follows vmap's batch dim: slices are columns here, dim=0 runs along
    # each column, and row 1 masked leaves every column with live entries.
    cols = vmap(lambda c: gumbel_softmax(c, 0.5, dim=0), in_dims=1, randomness="different")
    assert torch.allclose(cols(masked).sum(-1), torch.ones(5))
    column = x.clone()
    column[:, 2] = float("-inf")
    with pytest.raises(ValueError, match="all categories are masked"):
        cols(column)
