"""Fast paths of discograd.kernels: the fused C++ CPU kernel (and Triton, where it runs).

The C++ kernel is built here on first use (CI builds it in this test run). It must give the
same distribution as the pure-PyTorch reference in discograd.ops (chi-square on arg max
frequencies, moments of soft samples, each with a negative control that the same test
rejects), the exact values of softmax((x + G) / tau) for its own noise G, whose Philox stream
is checked against an independent NumPy implementation anchored on the Random123 known-answer
vector, and exact gradients (gradcheck, and autograd of the composite on the same noise).
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import discograd
from discograd import kernels
from tests.stats import chi_square_pvalue

HALF = (torch.float16, torch.bfloat16)
ALL = (torch.float32, torch.float64) + HALF


@pytest.fixture(scope="module", autouse=True)
def fast_cpu():
    """The CPU kernel must build on CI's machine; every test here relies on it."""
    if kernels._disabled():
        pytest.skip(f"{kernels.DISABLE_ENV} is set for this whole run")
    state = kernels.status()["cpu"]
    assert state["path"] == "fast", state["reason"]
    return state


@pytest.fixture
def reference_path(monkeypatch):
    """Force the pure-PyTorch path for the duration of a test."""
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")


def seed_tensor(value: int) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64)


def acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def run_python(code: str, *argv: str, flags: tuple = (), cwd=None, **env: str) -> str:
    """``python [flags] -c code argv...`` in a fresh process (one OpenMP thread, ``env`` added
    to this one's); asserts that it succeeded and returns its stdout."""
    out = subprocess.run(
        [sys.executable, *flags, "-c", code, *argv],
        env=dict(os.environ, OMP_NUM_THREADS="1", **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout


# --------------------------------------------------------------------------------------------
# An independent Philox-4x32-10 and noise transform in NumPy.

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = np.uint64(0xFFFFFFFF)


def philox_np(counter: np.ndarray, key: tuple) -> np.ndarray:
    """counter: (n, 4) uint64 holding 32-bit words; key: (k0, k1). Returns (n, 4) words."""
    c = [counter[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0 = np.uint64(M0) * c[0]
        p1 = np.uint64(M1) * c[2]
        hi0, hi1 = p0 >> np.uint64(32), p1 >> np.uint64(32)
        c = [hi1 ^ c[1] ^ k0, p1 & MASK, hi0 ^ c[3] ^ k1, p0 & MASK]
        k0 = (k0 + np.uint64(W0)) & MASK
        k1 = (k1 + np.uint64(W1)) & MASK
    return np.stack(c, axis=1)


def test_numpy_philox_known_answer():
    # Random123 kat_vectors: philox4x32 10 rounds, counter 0 and key 0.
    out = philox_np(np.zeros((1, 4), dtype=np.uint64), (0, 0))[0]
    assert [f"{int(w):08x}" for w in out] == ["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]


def reference_noise(seed: int, rows: int, cols: int, double: bool) -> np.ndarray:
    """The kernel's documented noise for (seed, f = row * cols + column), in float64."""
    key64 = seed % 2**64
    key = (key64 & 0xFFFFFFFF, key64 >> 32)
    width = 32 if double else 64
    f = np.arange(rows * cols, dtype=np.uint64)
    w64 = np.uint64(width)
    word = ((f % w64) // np.uint64(16)).astype(np.int64)
    ctr = (f // w64) * np.uint64(16) + f % np.uint64(16)
    counter = np.zeros((f.size, 4), dtype=np.uint64)
    counter[:, 0], counter[:, 1] = ctr & MASK, ctr >> np.uint64(32)
    w = philox_np(counter, key)
    idx = np.arange(f.size)
    if double:
        hi, lo = w[idx, 2 * word], w[idx, 2 * word + 1]
        j = ((hi << np.uint64(32)) | lo) >> np.uint64(11)
        bits = 54
    else:
        j = w[idx, word] >> np.uint64(8)
        bits = 25
    j = j.astype(np.float64)
    low = j < 2.0 ** (bits - 2)
    u = (2 * j + 1) * 2.0**-bits  # exact; for the high branch 1 - u is exact too
    t = (2.0**bits - 2 * j - 1) * 2.0**-bits
    e = np.where(low, -np.log(u), -np.log1p(-t))
    return (-np.log(e)).reshape(rows, cols)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 64), (5, 100), (7, 3), (1, 200)])
def test_noise_matches_numpy_philox(dtype, shape):
    seed = -1234567890123456789
    got = torch.ops.discograd.gumbel_noise(seed_tensor(seed), *shape, dtype).double().numpy()
    want = reference_noise(seed, *shape, double=dtype == torch.float64)
    tol = 1e-13 if dtype == torch.float64 else 4e-7
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # Negative control: a neighbouring seed gives unrelated noise.
    other = reference_noise(seed + 1, *shape, double=dtype == torch.float64)
    assert not np.allclose(got, other, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# Exact values on the kernel's own noise.


@pytest.mark.parametrize("dtype", ALL)
# Rows of at most 16 entries take a one-vector path on AVX-512 (1, 3, 10, 16), longer ones
# the general path (17, 100).
@pytest.mark.parametrize("rows, cols", [(37, 100), (45, 3), (64, 1), (300, 10), (40, 16), (40, 17)])
def test_forward_is_softmax_of_perturbed_logits(dtype, rows, cols):
    x = (torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    x[0, 1 + cols // 2 :] = -math.inf  # masked entries
    seed = seed_tensor(99)
    noise = torch.ops.discograd.gumbel_noise(seed, rows, cols, acc(dtype))
    # The noise depends on the flat index only (rows of any length share one stream).
    flat = torch.ops.discograd.gumbel_noise(seed, 1, rows * cols, acc(dtype))
    assert torch.equal(noise.flatten(), flat.flatten())
    scores = x.to(acc(dtype)) + noise
    tau = 0.7
    y = torch.ops.discograd.gumbel_softmax(x, seed, tau, None)
    want = torch.softmax(scores / tau, -1).to(dtype)
    assert y.dtype == dtype
    tol = {torch.float32: 1e-6, torch.float64: 1e-14}.get(dtype, 1e-2)
    torch.testing.assert_close(y, want, rtol=tol, atol=tol)
    assert (y[0, 1 + cols // 2 :] == 0).all()
    hard, soft = torch.ops.discograd.gumbel_softmax_hard(x, seed, tau, None)
    assert torch.equal(soft, y)
    assert torch.equal(hard, F.one_hot(scores.argmax(-1), cols).to(dtype))
    index = torch.ops.discograd.gumbel_argmax(x, seed)
    assert torch.equal(index, scores.argmax(-1))


def test_long_rows_sum_to_one_as_accurately_as_short_ones():
    # Rows of 2^17 float32 entries: the softmax normalizer is summed in blocks, so a soft
    # sample's entries sum to 1 within about an ulp. Before, one accumulator per lane summed
    # 8192 terms: on these rows the median |sum - 1| was 3.1e-7 (now 6.6e-8), and over other
    # seeds up to 3e-5, past torch.distributions' 1e-6 simplex check.
    errors = []
    for seed in range(4):
        x = torch.randn(8, 2**17, generator=torch.Generator().manual_seed(seed))
        y = torch.ops.discograd.gumbel_softmax(x, seed_tensor(seed), 1.0, None)
        errors.append((y.double().sum(-1) - 1).abs())
    error = torch.cat(errors)
    assert error.median().item() < 1.5e-7 and error.max().item() < 1e-6, error


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_backward_matches_autograd_on_same_noise(dtype):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 70, generator=gen, dtype=torch.float64).to(dtype)
    x0[1, :3] = -math.inf
    tau0 = torch.rand(6, generator=gen, dtype=torch.float64) + 0.3
    w = torch.randn(6, 70, generator=gen, dtype=torch.float64).to(dtype)
    seed = seed_tensor(7)
    noise = torch.ops.discograd.gumbel_noise(seed, 6, 70, acc(dtype))

    x, tau = x0.clone().requires_grad_(), tau0.to(acc(dtype)).clone().requires_grad_()
    for hard in (False, True):
        x.grad = tau.grad = None
        if hard:
            out, _ = torch.ops.discograd.gumbel_softmax_hard(x, seed, 1.0, tau)
        else:
            out = torch.ops.discograd.gumbel_softmax(x, seed, 1.0, tau)
        (out * w).sum().backward()
        gx, gt = x.grad.clone(), tau.grad.clone()

        xr = x0.to(acc(dtype)).clone().requires_grad_()
        tr = tau0.to(acc(dtype)).clone().requires_grad_()
        scores = xr + noise
        masked = torch.isneginf(scores)
        tempered = torch.where(masked, scores, torch.where(masked, 0.0, scores) / tr[:, None])
        (torch.softmax(tempered, -1) * w.to(acc(dtype))).sum().backward()
        tol = {torch.float32: 2e-5, torch.float64: 1e-12}.get(dtype, 3e-2)
        torch.testing.assert_close(gx.to(acc(dtype)), xr.grad, rtol=tol, atol=tol)
        torch.testing.assert_close(gt, tr.grad, rtol=tol, atol=tol)
        assert torch.isfinite(gt).all()


def test_gradcheck_float64():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def f(x, tau):
        return discograd.gumbel_softmax(x, tau, generator=torch.Generator().manual_seed(3))

    assert torch.autograd.gradcheck(f, (x, tau))
    # Second order goes through the differentiable form of the backward.
    assert torch.autograd.gradgradcheck(f, (x, tau))

    def g(x):
        return discograd.gumbel_softmax(x, 0.3, dim=0, generator=torch.Generator().manual_seed(4))

    assert torch.autograd.gradcheck(g, (x,))


def test_hard_gradient_is_soft_gradient():
    x = torch.randn(4, 9, requires_grad=True)
    w = torch.randn(4, 9)
    grads = []
    for hard in (False, True):
        x.grad = None
        y = discograd.gumbel_softmax(x, 0.5, hard, generator=torch.Generator().manual_seed(5))
        (y * w).sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


# --------------------------------------------------------------------------------------------
# API behaviour: hard one-hots, dims, tau tensors, generators, validation.


@pytest.mark.parametrize("dtype", ALL)
def test_hard_is_exact_one_hot(dtype):
    x = torch.randn(50, 13).to(dtype)
    y = discograd.gumbel_softmax(x, 0.1, hard=True)
    assert y.dtype == dtype
    assert ((y == 0) | (y == 1)).all() and (y.sum(-1) == 1).all()


def test_dims_other_than_last():
    x = torch.randn(4, 7, 5)
    for dim in (0, 1, -2):
        y = discograd.gumbel_softmax(x, 0.5, dim=dim, generator=torch.Generator().manual_seed(2))
        moved = discograd.gumbel_softmax(
            x.movedim(dim, -1).contiguous(), 0.5, generator=torch.Generator().manual_seed(2)
        )
        assert torch.equal(y, moved.movedim(-1, dim))
        torch.testing.assert_close(y.sum(dim), torch.ones(()).expand(y.sum(dim).shape))
        i = discograd.gumbel_max(x, dim=dim, generator=torch.Generator().manual_seed(2))
        assert i.shape == y.sum(dim).shape and i.max() < x.shape[dim]
    # The last dim, named either way, of 1-d, 2-d (used as they are) and 3-d logits; gradients
    # reach the logits through every layout.
    for shape in ((9,), (6, 9), (2, 3, 9), (6, 9)):
        z = torch.randn(shape, requires_grad=True)
        for dim in (-1, len(shape) - 1):
            gen = torch.Generator().manual_seed(3)
            y = discograd.gumbel_softmax(z, 0.5, dim=dim, generator=gen)
            flat = discograd.gumbel_softmax(
                z.detach().reshape(-1, 9), 0.5, generator=torch.Generator().manual_seed(3)
            )
            assert y.shape == z.shape and torch.equal(y.detach(), flat.reshape(shape))
            (y * torch.arange(9.0)).sum().backward()
            assert z.grad is not None and torch.isfinite(z.grad).all()
            z.grad = None
    for bad in (3, -4):
        with pytest.raises(IndexError, match=f"dim={bad} is out of range"):
            discograd.gumbel_softmax(x, 0.5, dim=bad)
        with pytest.raises(IndexError, match=f"dim={bad} is out of range"):
            discograd.gumbel_max(x, dim=bad)


def test_tau_tensor_shapes_and_errors():
    x = torch.randn(2, 3, 6)
    for tau in (torch.tensor(0.5), torch.full((3,), 0.5), torch.full((2, 3), 0.5)):
        y = discograd.gumbel_softmax(x, tau, generator=torch.Generator().manual_seed(0))
        z = discograd.gumbel_softmax(x, 0.5, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(y, z)
    with pytest.raises(ValueError, match="tau"):
        discograd.gumbel_softmax(x, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="tau"):
        discograd.gumbel_softmax(x, torch.zeros(3))
    with pytest.raises(ValueError, match="tau"):
        discograd.gumbel_softmax(x, -1.0)


@pytest.mark.parametrize(
    "bad, message",
    [(float("nan"), "NaN"), (math.inf, r"\+inf"), (None, "masked")],
)
def test_invalid_logits_raise(bad, message):
    x = torch.randn(3, 4)
    if bad is None:
        x[1] = -math.inf
    else:
        x[2, 1] = bad
    for call in (
        lambda: discograd.gumbel_softmax(x),
        lambda: discograd.gumbel_max(x),
    ):
        with pytest.raises(ValueError, match=message):
            call()


def test_generator_determinism_and_global_stream():
    x = torch.randn(16, 10)
    a = discograd.gumbel_softmax(x, generator=torch.Generator().manual_seed(11))
    b = discograd.gumbel_softmax(x, generator=torch.Generator().manual_seed(11))
    c = discograd.gumbel_softmax(x, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    g = torch.Generator().manual_seed(11)
    first, second = discograd.gumbel_noise(x, generator=g), discograd.gumbel_noise(x, generator=g)
    assert not torch.equal(first, second)  # the generator advances
    torch.manual_seed(21)
    s1, s2 = discograd.gumbel_max(x), discograd.gumbel_max(x)
    torch.manual_seed(21)
    assert torch.equal(discograd.gumbel_max(x), s1)  # drawn from the global generator
    assert not torch.equal(s1, s2)


def test_forward_mode_ad_uses_the_reference_path():
    # The operators have no forward-mode formula: jvp goes through the reference path.
    x, tangent = torch.randn(4, 5), torch.randn(4, 5)

    def f(t):
        return discograd.gumbel_softmax(t, 0.5, generator=torch.Generator().manual_seed(1))

    y, jvp = torch.func.jvp(f, (x,), (tangent,))
    torch.testing.assert_close(jvp.sum(-1), torch.zeros(4), atol=1e-5, rtol=0)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, tangent)
        out = torch.autograd.forward_ad.unpack_dual(f(dual))
    torch.testing.assert_close(out.primal, y)
    torch.testing.assert_close(out.tangent, jvp)


def test_threads_do_not_change_samples():
    x = torch.randn(300, 200)
    previous = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(discograd.gumbel_softmax(x, generator=torch.Generator().manual_seed(1)))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------------------------------
# Distribution equivalence with the reference path.

LOGITS = torch.tensor([1.0, 0.0, -1.0, 2.0, -math.inf, 0.5, -0.5])


UNMASKED = torch.isfinite(LOGITS).numpy()


@pytest.mark.parametrize("dtype", ALL)
def test_argmax_frequencies_chi_square(dtype):
    probs = torch.softmax(LOGITS.double(), -1).numpy()
    g = torch.Generator().manual_seed(31)
    index = discograd.gumbel_max(LOGITS.to(dtype).expand(200_000, -1), generator=g)
    counts = np.bincount(index.numpy(), minlength=LOGITS.numel())
    assert counts[~UNMASKED].sum() == 0  # a masked category is never drawn
    assert chi_square_pvalue(counts[UNMASKED], probs[UNMASKED]) > 1e-4
    hard = discograd.gumbel_softmax(
        LOGITS.to(dtype).expand(100_000, -1), 0.3, hard=True, generator=g
    )
    hard_counts = hard.sum(0).double().numpy()
    assert chi_square_pvalue(hard_counts[UNMASKED], probs[UNMASKED]) > 1e-4
    # Negative control: a 0.05 shift of one logit is detected by the same test.
    shifted = torch.softmax(LOGITS.double() + torch.tensor([0.05, 0, 0, 0, 0, 0, 0]), -1)
    assert chi_square_pvalue(counts[UNMASKED], shifted.numpy()[UNMASKED]) < 1e-4


def two_sample_max_z(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt().clamp_min(1e-300)
    return float(((a.mean(0) - b.mean(0)).abs() / se).max())


def soft_moments(tau: float, n: int, seed: int) -> torch.Tensor:
    y = discograd.gumbel_softmax(
        LOGITS.expand(n, -1), tau, generator=torch.Generator().manual_seed(seed)
    )
    return torch.cat([y, y**2], -1)  # first and second moments of every component


def test_soft_sample_moments_match_reference(monkeypatch):
    n = 100_000
    fast = soft_moments(0.5, n, 41)
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    ref = soft_moments(0.5, n, 42)
    wrong_tau = soft_moments(0.45, n, 43)
    assert two_sample_max_z(fast, ref) < 4.0
    # Negative control: a 10% temperature change is rejected by the same test.
    assert two_sample_max_z(fast, wrong_tau) > 4.0


def test_reference_path_is_used_when_disabled(reference_path):
    x = torch.randn(5, 4)
    e = discograd.ops.standard_exponential((5, 4), generator=torch.Generator().manual_seed(0))
    y = discograd.gumbel_softmax(x, 0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, torch.softmax((x - torch.log(e)) / 0.5, -1))


# --------------------------------------------------------------------------------------------
# Finite noise and samples in every dtype.


@pytest.mark.parametrize("dtype", ALL)
def test_ten_million_draws_are_finite(dtype):
    gen = torch.Generator().manual_seed(8)
    g = discograd.gumbel_noise((10_000, 1000), generator=gen, dtype=dtype)
    assert g.dtype == dtype and torch.isfinite(g).all()
    lo, hi = (-3.6, 37.4) if dtype == torch.float64 else (-2.9, 17.4)
    assert g.min() >= lo and g.max() <= hi
    # Mean and variance of Gumbel(0, 1): Euler's gamma and pi^2 / 6.
    flat = g.double().flatten()
    assert abs(float(flat.mean()) - 0.5772156649) < 4 * math.pi / math.sqrt(6 * flat.numel())
    assert abs(float(flat.var()) - math.pi**2 / 6) < 0.01
    x = torch.tensor([[1e4, -1e4, 0.0, -math.inf]] * 1000).to(dtype)
    y = discograd.gumbel_softmax(x, 1e-3, generator=torch.Generator().manual_seed(9))
    assert torch.isfinite(y).all() and (y[:, 3] == 0).all()


# --------------------------------------------------------------------------------------------
# The switches: environment variable (in a fresh process) and torch.compile.


ISA_CHECK = """
import math, sys, torch
import torch.nn.functional as F
from discograd import kernels
state = kernels.status()["cpu"]
assert state["path"] == "fast" and "(" + sys.argv[1] + ")" in state["reason"], state
ops = torch.ops.discograd
seed = torch.tensor([2024])
gen = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-14), (torch.bfloat16, 1e-2)):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for cols in (1, 3, 10, 16, 17, 100):
        x = (torch.randn(70, cols, generator=gen) * 3).to(dtype)
        x[0, 1 + cols // 2:] = -math.inf
        scores = x.to(acc) + ops.gumbel_noise(seed, 70, cols, acc)
        y = ops.gumbel_softmax(x, seed, 0.7, None)
        torch.testing.assert_close(y, torch.softmax(scores / 0.7, -1).to(dtype), rtol=tol, atol=tol)
        hard, soft = ops.gumbel_softmax_hard(x, seed, 0.7, None)
        assert torch.equal(soft, y)
        assert torch.equal(hard, F.one_hot(scores.argmax(-1), cols).to(dtype))
        assert torch.equal(ops.gumbel_argmax(x, seed), scores.argmax(-1))
        g = torch.randn(70, cols, generator=gen).to(dtype)
        gx, _ = ops.gumbel_softmax_backward(g, y, 0.7, None, False)
        yy, gg = y.to(acc), g.to(acc)
        want = yy * (gg - (gg * yy).sum(-1, keepdim=True)) / 0.7
        torch.testing.assert_close(gx, want.to(dtype), rtol=10 * tol, atol=10 * tol)
    with_bad = torch.randn(5, 10).to(dtype)
    with_bad[2, 3] = math.nan
    try:
        ops.gumbel_softmax(with_bad, seed, 0.5, None, True)
    except ValueError as e:
        assert "normalizer" in str(e)
    else:
        raise AssertionError("NaN logits passed the check")
print("isa ok", state["reason"])
"""


@pytest.mark.parametrize("cap, name", [("avx2", "AVX2"), ("baseline", "baseline")])
def test_lower_instruction_set_variants(cap, name):
    """The AVX2 and baseline variants, which CPUs without AVX-512 run, forced through
    DISCOGRAD_CPU_ISA in a fresh process: exact values on their own noise, one-hots, arg max,
    backward and the fused check, over rows shorter than, equal to and longer than a vector."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the instruction-set variants exist on x86-64 only (one build elsewhere)")
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if cap == "avx2" and not {"avx2", "fma"} <= set(flags):
        pytest.skip("this CPU has no AVX2 + FMA (environment, not a missing feature)")
    assert "isa ok" in run_python(ISA_CHECK, name, DISCOGRAD_CPU_ISA=cap)


def test_unknown_instruction_set_cap_is_reported():
    code = (
        "from discograd import kernels\n"
        "s = kernels.status()['cpu']\n"
        "assert s['path'] == 'reference' and 'DISCOGRAD_CPU_ISA' in s['reason'], s\n"
        "print('reported')\n"
    )
    assert "reported" in run_python(code, DISCOGRAD_CPU_ISA="avx")


def test_env_var_forces_reference_path_in_subprocess():
    code = (
        "import torch, discograd\n"
        "from discograd import kernels\n"
        "s = kernels.status()\n"
        "assert s['cpu']['path'] == 'reference' and 'DISCOGRAD_DISABLE_KERNELS' in "
        "s['cpu']['reason'], s\n"
        "x = torch.randn(4, 6)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "e = discograd.ops.standard_exponential((4, 6), generator=g)\n"
        "y = discograd.gumbel_softmax(x, 0.5, generator=torch.Generator().manual_seed(0))\n"
        "torch.testing.assert_close(y, torch.softmax((x - torch.log(e)) / 0.5, -1))\n"
        "print('reference ok')\n"
    )
    assert "reference ok" in run_python(code, DISCOGRAD_DISABLE_KERNELS="1")


def test_torch_compile_fullgraph_traces_fast_path():
    x = torch.randn(8, 5, requires_grad=True)
    tau = torch.full((8,), 0.7, requires_grad=True)

    def f(x, tau):
        soft = discograd.gumbel_softmax(x, tau)
        hard = discograd.gumbel_softmax(x, 0.5, hard=True)
        index = discograd.gumbel_max(x.detach())
        noise = discograd.gumbel_noise(x.detach())
        return soft, hard, index, noise

    torch._dynamo.reset()
    soft, hard, index, noise = torch.compile(f, fullgraph=True, backend="aot_eager")(x, tau)
    (soft.pow(2).sum() + (hard * torch.arange(5.0)).sum()).backward()
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()
    torch.testing.assert_close(soft.sum(-1), torch.ones(8))
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert tau.grad is not None and torch.isfinite(tau.grad).all()
    assert index.shape == (8,) and noise.shape == x.shape
    # Inductor compiles the same graph (the operators are opaque calls in its code).
    y = torch.compile(lambda x: discograd.gumbel_softmax(x, 0.5), fullgraph=True)(x)
    y.sum().backward()
    torch.testing.assert_close(y.sum(-1), torch.ones(8))


# --------------------------------------------------------------------------------------------
# Triton kernels: on a GPU when there is one, else through Triton's CPU interpreter.

TRITON_MISSING = importlib.util.find_spec("triton") is None


def noise_log_checks(triton_gs) -> None:
    """The kernel's own log (``_log_noise``) is within 1 ulp of the correctly rounded log on
    every input the inner log of the noise can get (each grid uniform u < 1/2, each 1 - t for
    u >= 1/2) and on a million outer-log inputs E in [2^-25, 18); a log with a dropped
    polynomial term is rejected by the same check (negative control)."""
    import triton
    import triton.language as tl

    # @triton.jit resolves names in the module's globals, not in closures
    globals()["_log_noise"] = triton_gs._log_noise

    @triton.jit
    def apply(x_ptr, out_ptr, BLOCK: tl.constexpr, DROP: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets)
        y = _log_noise(x)  # noqa: F821
        if DROP:  # the f^10-order term missing: a cruder log
            f = ((x.to(tl.int32, bitcast=True) - 0x3F2AAAAB) & 0x7FFFFF) + 0x3F2AAAAB
            f = f.to(tl.float32, bitcast=True) - 1.0
            y = y + 0.10902266949415207 * f * f * f * f * f * f * f * f * f * f
        tl.store(out_ptr + offsets, y)

    j = np.arange(1 << 23, dtype=np.float64)
    u = ((2 * j + 1) * 2.0**-25).astype(np.float32)
    rng = np.random.default_rng(0)
    outer = np.exp2(rng.uniform(-25, math.log2(18), 1 << 20)).astype(np.float32)
    for drop in (False, True):
        worst = 0.0
        for x in (u, (np.float32(1) - u).astype(np.float32), outer):
            x = np.unique(x)
            x = np.concatenate([x, np.full((1 << 23) - x.size, x[0], np.float32)])
            out = torch.empty(x.size, dtype=torch.float32)
            apply[(8,)](torch.from_numpy(x), out, BLOCK=x.size // 8, DROP=drop)
            ref = np.log(x.astype(np.float64))
            ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
            worst = max(worst, float((np.abs(out.numpy().astype(np.float64) - ref) / ulp).max()))
        assert (worst <= 1.0) != drop, (drop, worst)


def triton_interpreter_checks() -> None:
    """Compare the Triton kernels (run by TRITON_INTERPRET=1 on CPU) with the C++ kernel."""
    from discograd.kernels import triton_gs

    assert triton_gs.interpreter() and triton_gs.triton is not None, triton_gs._IMPORT_ERROR
    kernels.status()
    seed = seed_tensor(-123456789012345)
    same = torch.ops.discograd
    noise_log_checks(triton_gs)
    got = triton_gs.noise(seed, 3, 150, torch.float32)
    torch.testing.assert_close(got, same.gumbel_noise(seed, 3, 150, torch.float32))
    # 300 columns in blocks of 128 (the online softmax), the first 200 masked in one row.
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    x[1, :200] = -math.inf
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        one_hot, y = triton_gs.forward(xd, seed, 0.7, None, True)
        want_hard, want = same.gumbel_softmax_hard(xd, seed, 0.7, None)
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(y, want, rtol=tol, atol=tol)
        assert torch.equal(one_hot, want_hard) and y.dtype == dtype
    assert torch.equal(triton_gs.argmax(x, seed), same.gumbel_argmax(x, seed))
    # Rows that fill their tiles exactly, so the kernel drops its masks: one pass (the whole
    # 128-column row in registers) and two passes (512 columns, four 128-column tiles).
    assert triton_gs._forward_plan(128)[:3] == (True, 2, True)
    assert triton_gs._forward_plan(512)[:3] == (False, 2, True)
    assert triton_gs._forward_plan(100)[:3] == (True, 4, False)
    for cols in (128, 512, 100):
        full = torch.randn(3, cols, generator=torch.Generator().manual_seed(cols))
        full[0, : cols // 2] = -math.inf
        for dtype in (torch.float32, torch.bfloat16):
            one_hot, y = triton_gs.forward(full.to(dtype), seed, 0.6, None, True)
            want_hard, want = same.gumbel_softmax_hard(full.to(dtype), seed, 0.6, None)
            tol = 1e-6 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(y, want, rtol=tol, atol=tol)
            assert torch.equal(one_hot, want_hard)
        rows_tau = torch.tensor([0.3, 1.0, 2.5])
        torch.testing.assert_close(
            triton_gs.forward(full, seed, 1.0, rows_tau, False)[1],
            same.gumbel_softmax(full, seed, 1.0, rows_tau),
            rtol=1e-6,
            atol=1e-6,
        )
    # The logits check fused into the forward (a flag per call), in both kernels' paths, and
    # the same rows through the C++ kernel.
    for bad in (math.nan, math.inf):
        for rows_ in (x, torch.randn(3, 128)):
            broken = rows_.clone()
            broken[-1, 5] = bad
            with pytest.raises(ValueError, match="normalizer is not finite"):
                triton_gs.forward(broken, seed, 0.7, None, False, True)
            with pytest.raises(ValueError, match="normalizer is not finite"):
                same.gumbel_softmax(broken, seed, 0.7, None, True)
    masked = x.clone()
    masked[3] = -math.inf
    with pytest.raises(ValueError, match="normalizer is not finite"):
        triton_gs.forward(masked, seed, 0.7, None, True, True)
    assert torch.isnan(triton_gs.forward(masked, seed, 0.7, None, False)[1][3]).all()
    assert torch.isfinite(triton_gs.forward(x, seed, 0.7, None, True, True)[1]).all()
    tau_rows = torch.rand(4, generator=torch.Generator().manual_seed(1)) + 0.5
    grad = torch.randn(4, 300, generator=torch.Generator().manual_seed(2))
    y = same.gumbel_softmax(x, seed, 1.0, tau_rows)
    gx, gt = triton_gs.backward(grad, y, 1.0, tau_rows, True)
    want_gx, want_gt = same.gumbel_softmax_backward(grad, y, 1.0, tau_rows, True)
    torch.testing.assert_close(gx, want_gx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gt, want_gt, rtol=1e-5, atol=1e-6)
    # Short rows (several rows share a 64-column chunk) and the one-pass backward (a row that
    # fits one block).
    small = torch.randn(9, 10, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        triton_gs.noise(seed, 9, 10, torch.float32), same.gumbel_noise(seed, 9, 10, torch.float32)
    )
    one_hot, y = triton_gs.forward(small, seed, 0.3, None, True)
    want_hard, want = same.gumbel_softmax_hard(small, seed, 0.3, None)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(one_hot, want_hard)
    gx, gt = triton_gs.backward(
        torch.ones_like(y) + y, y, 0.3, tau_rows[:1].expand(9).contiguous(), True
    )
    want_gx, want_gt = same.gumbel_softmax_backward(
        torch.ones_like(y) + y, y, 0.3, tau_rows[:1].expand(9).contiguous(), True
    )
    torch.testing.assert_close(gx, want_gx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gt, want_gt, rtol=1e-5, atol=1e-6)
    # Large logits are shifted before the noise is added (both paths of the forward and the
    # arg max kernel): x + 1e6 gives the samples of x (x on a grid where x + 1e6 is exact).
    # Unshifted, float32 would round the noise to multiples of 1/16.
    for cols in (100, 128, 512):
        grid = torch.round(torch.randn(3, cols, generator=torch.Generator().manual_seed(7)) * 16)
        grid = grid / 16
        for offset in (1e6, -3e5):  # 1/16 is a multiple of their ulp: grid + offset exact
            one_hot, y = triton_gs.forward(grid + offset, seed, 0.5, None, True)
            want_hard, want = triton_gs.forward(grid, seed, 0.5, None, True)
            torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-5)
            assert torch.equal(one_hot, want_hard), (cols, offset)
            assert torch.equal(triton_gs.argmax(grid + offset, seed), triton_gs.argmax(grid, seed))
    print("triton interpreter ok")


def triton_dispatch_checks() -> None:
    """The public API over the Triton kernels, as on a GPU but through the interpreter: the
    Triton functions registered as the operators' CPU kernels (in place of the C++ library,
    never loaded here) and the fast path allowed for CUDA's dtypes. What runs is what a CUDA
    call runs: the wrapper in discograd.kernels, torch's dispatch of the schema (which drops
    trailing arguments equal to their default), the registered autograd and fake kernels, and
    triton_gs's Python kernels."""
    from discograd.kernels import _library, triton_gs

    assert triton_gs.interpreter() and triton_gs.triton is not None, triton_gs._IMPORT_ERROR
    _library.define()
    for name, kernel in triton_gs.KERNELS.items():
        torch.library.register_kernel(f"{_library.NAMESPACE}::{name}", "cpu", kernel)
    kernels._cpu_ready = lambda: True
    kernels.CPU_DTYPES = kernels.CUDA_DTYPES
    gen = torch.Generator

    x = torch.randn(6, 5, 40, generator=gen().manual_seed(0))
    x[1, 2, :30] = -math.inf
    for checked in (True, False):  # unchecked: the call leaves out check=False
        discograd.set_validate_args(checked)
        try:
            for dtype in (torch.float32, torch.bfloat16):
                xd = x.to(dtype).requires_grad_(True)
                y = discograd.gumbel_softmax(xd, 0.6, generator=gen().manual_seed(1))
                g = discograd.gumbel_noise(xd, generator=gen().manual_seed(1))
                want = torch.softmax((x + g.float()) / 0.6, -1)
                tol = 1e-6 if dtype == torch.float32 else 1e-2
                torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol)
                assert y.dtype == dtype and (y[1, 2, :30] == 0).all()
                # Hard: the one-hot of the same scores, with the soft sample's gradient.
                hard = discograd.gumbel_softmax(xd, 0.6, hard=True, generator=gen().manual_seed(1))
                assert torch.equal(hard.detach().float().argmax(-1), want.argmax(-1))
                w = torch.randn(x.shape, generator=gen().manual_seed(2)).to(dtype)
                (gh,) = torch.autograd.grad((hard * w).sum(), xd)
                (gs,) = torch.autograd.grad((y * w).sum(), xd)
                assert torch.equal(gh, gs)
                index = discograd.gumbel_max(xd.detach(), generator=gen().manual_seed(1))
                assert torch.equal(index, want.argmax(-1))
        finally:
            discograd.set_validate_args(True)
    # The backward against float64 autograd through the formula on the same noise, with a
    # temperature per row and its gradient (unmasked rows: there the formula's tau gradient is
    # NaN, -inf * 0, where the kernel's is right); categories along another dim.
    xs = torch.randn(6, 5, 40, generator=gen().manual_seed(7))
    x32 = xs.clone().requires_grad_(True)
    tau = (torch.rand(6, 5, generator=gen().manual_seed(3)) + 0.3).requires_grad_(True)
    y = discograd.gumbel_softmax(x32, tau, generator=gen().manual_seed(4))
    g = discograd.gumbel_noise(xs, generator=gen().manual_seed(4)).double()
    xr, tr = xs.double().requires_grad_(True), tau.detach().double().requires_grad_(True)
    want = torch.softmax((xr + g) / tr.unsqueeze(-1), -1)
    torch.testing.assert_close(y, want.float(), rtol=1e-6, atol=1e-6)
    w = torch.randn(xs.shape, generator=gen().manual_seed(5))
    got = torch.autograd.grad((y * w).sum(), (x32, tau))
    ref = torch.autograd.grad((want * w.double()).sum(), (xr, tr))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)
    moved = discograd.gumbel_softmax(x.transpose(1, 2), 0.6, dim=1, generator=gen().manual_seed(1))
    again = discograd.gumbel_softmax(x, 0.6, generator=gen().manual_seed(1))
    torch.testing.assert_close(moved.transpose(1, 2), again, rtol=1e-6, atol=1e-7)
    # The fused check names the rule the logits break.
    for bad, message in ((math.nan, "NaN"), (math.inf, r"\+inf")):
        broken = x.clone()
        broken[0, 0, 3] = bad
        with pytest.raises(ValueError, match=message):
            discograd.gumbel_softmax(broken, 0.6)
    masked = x.clone()
    masked[2, 1] = -math.inf
    with pytest.raises(ValueError, match="all categories are masked"):
        discograd.gumbel_softmax(masked, 0.6, hard=True)
    # Traced by torch.compile without graph breaks, unchecked there, running the same kernels.
    compiled = torch.compile(
        lambda t: discograd.gumbel_softmax(t, 0.6, hard=True), fullgraph=True, backend="aot_eager"
    )
    torch.manual_seed(6)
    out = compiled(x)
    torch.manual_seed(6)
    assert torch.equal(out, discograd.gumbel_softmax(x, 0.6, hard=True))
    print("triton dispatch ok")


def run_interpreted(checks: str) -> str:
    """Run this file's function ``checks`` in a fresh process under TRITON_INTERPRET=1 (the
    variable is read when Triton is imported); returns its stdout."""
    code = f"from tests.test_kernels import {checks} as c; c()"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return run_python(code, flags=("-W", "ignore"), cwd=root, TRITON_INTERPRET="1")


@pytest.mark.skipif(TRITON_MISSING, reason="Triton is not installed (optional dependency)")
def test_the_cuda_path_runs_end_to_end_through_the_interpreter():
    assert "triton dispatch ok" in run_interpreted("triton_dispatch_checks")


@pytest.mark.skipif(TRITON_MISSING, reason="Triton is not installed (optional dependency)")
def test_triton_kernels_in_interpreter():
    assert "triton interpreter ok" in run_interpreted("triton_interpreter_checks")


@pytest.mark.skipif(TRITON_MISSING, reason="Triton is not installed (optional dependency)")
def test_triton_kernels_take_the_schemas_defaults():
    """torch calls a Python kernel without trailing arguments equal to their default (the
    unchecked forward on CUDA once failed with "missing 1 required positional argument:
    'check'"): each CUDA kernel's parameters must carry the schema's names and defaults."""
    import inspect

    from discograd.kernels import _library, triton_gs

    _library.define()
    assert set(triton_gs.KERNELS) == set(_library._SCHEMAS) - {"isa_level"}
    for name, kernel in triton_gs.KERNELS.items():
        schema = getattr(torch.ops.discograd, name).default._schema
        params = inspect.signature(kernel).parameters
        assert [a.name for a in schema.arguments] == list(params), name
        for arg in schema.arguments:
            default = params[arg.name].default
            if arg.has_default_value():
                assert default == arg.default_value, (name, arg.name)
            else:
                assert default is inspect.Parameter.empty, (name, arg.name)


def test_cuda_status_is_reported():
    state = kernels.status()["cuda"]
    assert state["path"] in ("fast", "reference") and state["reason"]
    if not torch.cuda.is_available():
        assert state["path"] == "reference"
        assert ("not installed" in state["reason"]) == TRITON_MISSING


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(TRITON_MISSING, reason="Triton is not installed (optional dependency)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_the_cpu_kernel_on_gpu(dtype):
    """The launch configurations used on a GPU (one pass over rows in registers, two passes
    for long rows, full tiles without masks) draw the C++ kernel's noise and sample."""
    from discograd.kernels import triton_gs

    seed = seed_tensor(987654321)
    same = torch.ops.discograd
    gen = torch.Generator().manual_seed(5)
    for shape in ((64, 32768), (8, 8192), (300, 1000), (4, 2**17), (3, 100_003)):
        x = (torch.randn(shape, generator=gen) * 3).to(dtype)
        x[0, : shape[1] // 3] = -math.inf
        want_hard, want = same.gumbel_softmax_hard(x, seed, 0.5, None)
        hard, y = triton_gs.forward(x.cuda(), seed.cuda(), 0.5, None, True)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(y.cpu(), want, rtol=tol, atol=tol)
        # float32 noise within a few ulp of the C++ kernel's: the arg max agrees on all but
        # near-ties (none expected among these few hundred rows)
        assert torch.equal(hard.cpu(), want_hard), shape
        assert torch.equal(
            triton_gs.argmax(x.cuda(), seed.cuda()).cpu(), same.gumbel_argmax(x, seed)
        )
    broken = torch.randn(64, 32768, device="cuda", dtype=dtype)
    broken[17, 3] = math.nan
    with pytest.raises(ValueError, match="contains NaN"):
        discograd.gumbel_softmax(broken, 0.5)
    # The check fused into the kernel (its flag), with and without check=, on the device.
    with pytest.raises(ValueError, match="normalizer is not finite"):
        triton_gs.forward(broken, seed.cuda(), 0.5, None, False, True)
    _, unchecked = triton_gs.forward(broken, seed.cuda(), 0.5, None, False, False)
    assert torch.isnan(unchecked[17]).all() and torch.isfinite(unchecked[:17]).all()
    masked = torch.randn(64, 32768, device="cuda", dtype=dtype)
    masked[40] = -math.inf
    with pytest.raises(ValueError, match="normalizer is not finite"):
        same.gumbel_softmax_hard(masked, seed.cuda(), 0.5, None, True)
    with pytest.raises(ValueError, match="masked"):
        discograd.gumbel_softmax(masked, 0.5, hard=True)
    torch.testing.assert_close(
        triton_gs.noise(seed.cuda(), 64, 4096, torch.float32).cpu(),
        same.gumbel_noise(seed, 64, 4096, torch.float32),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(TRITON_MISSING, reason="Triton is not installed (optional dependency)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_on_gpu(dtype):
    probs = torch.softmax(LOGITS.double(), -1).numpy()
    x = LOGITS.to(device="cuda", dtype=dtype).expand(200_000, -1)
    index = discograd.gumbel_max(x, generator=torch.Generator("cuda").manual_seed(0))
    counts = np.bincount(index.cpu().numpy(), minlength=LOGITS.numel())
    assert counts[~UNMASKED].sum() == 0
    assert chi_square_pvalue(counts[UNMASKED], probs[UNMASKED]) > 1e-4
    long_rows = torch.randn(4, 2**17, device="cuda", dtype=dtype, requires_grad=True)
    y = discograd.gumbel_softmax(long_rows, 0.5, hard=True)
    assert (y.sum(-1) == 1).all() and ((y == 0) | (y == 1)).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(long_rows.grad).all()


# --------------------------------------------------------------------------------------------
# Large logits: arg max and softmax of x + G are invariant to a per-row shift of x, so the kernel
# must give the same distribution whatever the rows' offset. Without the shift by the row's max
# the float32 sum x + G rounds the noise away (1e6: ulp 1/16; index 0 wins too often).

LARGE_ROWS = 200_000


@pytest.mark.parametrize(
    "dtype, offset",
    [(torch.float32, 1e6), (torch.float32, -1e8), (torch.float64, 1e300), (torch.bfloat16, 1e30)],
)
def test_equal_large_logits_draw_uniformly(dtype, offset):
    ops = torch.ops.discograd
    x = torch.full((LARGE_ROWS, 4), offset, dtype=torch.float64).to(dtype)
    uniform = np.full(4, 0.25)
    counts = np.bincount(ops.gumbel_argmax(x, seed_tensor(5)).numpy(), minlength=4)
    assert chi_square_pvalue(counts, uniform) > 1e-4, counts
    hard, soft = ops.gumbel_softmax_hard(x[: LARGE_ROWS // 2], seed_tensor(6), 0.5, None, True)
    hard_counts = hard.double().sum(0).numpy()
    assert chi_square_pvalue(hard_counts, uniform) > 1e-4, hard_counts
    assert torch.isfinite(soft).all()
    # Negative control: the same test rejects a 2% excess of index 0.
    assert chi_square_pvalue(counts, np.array([0.255, 0.745 / 3, 0.745 / 3, 0.745 / 3])) < 1e-4


def test_offset_logits_draw_their_softmax():
    ops = torch.ops.discograd
    base = torch.tensor([1.0, 0.0, -1.0, 2.0])
    probs = torch.softmax(base.double(), -1).numpy()
    x = (base + 1e6).expand(LARGE_ROWS, -1).contiguous()  # exact in float32 (ulp 1/16)
    counts = np.bincount(ops.gumbel_argmax(x, seed_tensor(7)).numpy(), minlength=4)
    assert chi_square_pvalue(counts, probs) > 1e-4, counts
    # Negative control: a 0.05 shift of one logit is detected by the same test.
    wrong = torch.softmax(base.double() + torch.tensor([0.05, 0, 0, 0]), -1).numpy()
    assert chi_square_pvalue(counts, wrong) < 1e-4


@pytest.mark.parametrize(
    "dtype, offset, grid",
    [(torch.float32, 1e6, 2.0**-4), (torch.float32, -3e7, 2.0), (torch.float64, 2.0**45, 2.0**-7)],
)
@pytest.mark.parametrize("cols", [3, 10, 16, 17, 100, 1000])
def test_offset_logits_give_the_same_samples(dtype, offset, grid, cols):
    """x and x + offset (x on the grid of ulp(offset), so that x + offset is exact) give the
    same soft sample up to rounding and the same one-hot and arg max, for the same seed."""
    ops = torch.ops.discograd
    gen = torch.Generator().manual_seed(cols)
    x = (torch.randn(64, cols, generator=gen, dtype=torch.float64) * 3 / grid).round() * grid
    x[0, 1 + cols // 2 :] = -math.inf  # masked entries stay masked
    x, shifted = x.to(dtype), (x + offset).to(dtype)
    assert torch.equal(shifted.double() - offset, x.double())
    seed = seed_tensor(11)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for tau in (0.5, 2.0):
        torch.testing.assert_close(
            ops.gumbel_softmax(shifted, seed, tau, None, True),
            ops.gumbel_softmax(x, seed, tau, None, True),
            rtol=tol,
            atol=tol,
        )
    hard_shifted, _ = ops.gumbel_softmax_hard(shifted, seed, 0.5, None, True)
    hard, _ = ops.gumbel_softmax_hard(x, seed, 0.5, None, True)
    assert torch.equal(hard_shifted, hard)
    assert (hard[0, 1 + cols // 2 :] == 0).all()
    assert torch.equal(ops.gumbel_argmax(shifted, seed), ops.gumbel_argmax(x, seed))


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("cols", [4, 40])
def test_large_logits_keep_the_fused_check(dtype, cols):
    """Rows of large logits with a NaN, a +inf, or fully masked still fail the fused check."""
    ops = torch.ops.discograd
    big = {torch.float32: 1e8, torch.float16: 3e4}.get(dtype, 1e30)  # 1e30: float64, bfloat16
    for bad in (math.nan, math.inf):
        x = torch.full((3, cols), big, dtype=dtype)
        x[1, cols - 1] = bad
        with pytest.raises(ValueError, match="normalizer is not finite"):
            ops.gumbel_softmax(x, seed_tensor(1), 0.5, None, True)
    x = torch.full((3, cols), big, dtype=dtype)
    x[2] = -math.inf
    with pytest.raises(ValueError, match="normalizer is not finite"):
        ops.gumbel_softmax_hard(x, seed_tensor(1), 0.5, None, True)
    x[2, 1] = -big  # one finite entry: the row is valid and draws it
    hard, soft = ops.gumbel_softmax_hard(x, seed_tensor(1), 0.5, None, True)
    assert torch.isfinite(soft).all() and hard[2, 1] == 1 and soft[2, 1] == 1
    x[1, 0] = math.nan  # unchecked: the arg max is the first NaN, as torch's
    assert int(ops.gumbel_argmax(x, seed_tensor(1))[1]) == 0
    assert int(ops.gumbel_argmax(x - x.nan_to_num(), seed_tensor(1))[1]) == 0  # ordinary too
