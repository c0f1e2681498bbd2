r"""Built-in problems for diagnosing gradient estimators: small, with exact gradients.

A :class:`Problem` is a loss ``f`` of a discrete random variable, the ``logits`` it is drawn
from and its ``distribution``, in the estimator contract of :mod:`discograd.estimators`. Every
``f`` here broadcasts over leading dimensions (categorical: (..., N, K) -> (...); Bernoulli:
(..., D) -> (...)), so the problems can also be replicated along a batch dimension.

- ``rebar-0.45``, ``rebar-0.499``: REBAR's toy (Tucker et al., 2017),
  :math:`\mathbb{E}_{b \sim \mathrm{Bernoulli}(\sigma(\theta))}[(b - t)^2]` at
  :math:`\theta = 0`. Its gradient :math:`\sigma'(\theta)(1 - 2t) = (1 - 2t)/4` is tiny next to
  the spread of f, so it separates low-variance estimators from the rest (t = 0.499 is harder).
- ``categorical-10``: two categorical variables of K = 10 classes, f a nonlinear coupling of
  both (a squared score plus a product of sines); 100 configurations.
- ``vae-digits``: a small categorical VAE on the embedded 8x8 digits, briefly trained (8 Adam
  steps on the exact ELBO, by enumeration): long enough to move the posteriors away from
  uniform, short enough that no class is rarer than about 1% (rarer classes need far more than
  n = 1000 draws before the sample variance of a score-function estimate is trustworthy). For
  a batch of B = 8 test digits the encoder gives logits (B, N=2, K=4); f is
  each example's reconstruction negative log-likelihood under the decoder (Bernoulli pixels),
  f: (S, B, N, K) -> (S, B). K^N = 16 configurations per example, so the exact gradient is
  cheap. The gradient is taken in the encoder's logits (the encoder's parameters receive it by
  the chain rule).
- ``gaussian``: :math:`\mathbb{E}_{z \sim N(\mu, \sigma^2)}\sum_d (z_d - c_d)^2` as a
  ``torch.distributions.Normal``, for ``reparam`` and the score function on a distribution;
  the exact gradient is closed form: :math:`2(\mu - c)` and :math:`2\sigma`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal

__all__ = [
    "Problem",
    "DEFAULT_PROBLEMS",
    "available_problems",
    "get_problem",
    "problem_summary",
    "rebar_toy",
    "categorical_toy",
    "vae_digits",
    "gaussian",
]


@dataclass
class Problem:
    """A loss of a discrete random variable, ready for :func:`discograd.diagnostics.compare`.

    Attributes:
        name: short identifier.
        f: per-sample losses, in the estimator contract (leading sample dimension kept).
        logits: the distribution's logits (a tensor), or a ``torch.distributions.Distribution``.
        distribution: ``"categorical"`` or ``"bernoulli"`` (ignored for a Distribution).
        description: one line for tables and ``--help``.
        params: the tensors to differentiate in, when ``logits`` is a Distribution.
        exact: the exact gradient of E[sum of f's outputs], when known in closed form (else the
            diagnostics enumerate).
    """

    name: str
    f: Callable[[Tensor], Tensor]
    logits: Union[Tensor, Distribution]
    distribution: str = "categorical"
    description: str = ""
    params: Optional[List[Tensor]] = None
    exact: Optional[Tensor] = None


def rebar_toy(t: float = 0.45, d: int = 1) -> Problem:
    """REBAR's toy E[sum_i (b_i - t)^2], b_i ~ Bernoulli(sigmoid(0)), d variables."""
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    logits = torch.zeros(d, dtype=torch.float64)

    def f(z: Tensor) -> Tensor:
        return ((z - t) ** 2).sum(-1)

    return Problem(
        name=f"rebar-{t}",
        f=f,
        logits=logits,
        distribution="bernoulli",
        description=(
            f"REBAR toy E[(b - {t})^2], {d} Bernoulli at p = 0.5 "
            f"(exact gradient {(1 - 2 * t) / 4:.4g} each)"
        ),
    )


def categorical_toy(k: int = 10, n: int = 2, seed: int = 0) -> Problem:
    """N categorical variables of K classes with a nonlinear f coupling them."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    c = torch.randn(n, k, generator=g, dtype=torch.float64)
    w = 2.0 * torch.randn(n, k, generator=g, dtype=torch.float64)

    def f(z: Tensor) -> Tensor:
        # The square couples the rows through a shared score; the sines make f far from linear,
        # so straight-through style estimators are visibly biased.
        s = (z * c).sum((-1, -2))
        return (s - 0.5) ** 2 + torch.sin((z * w).sum(-1)).prod(-1)

    return Problem(
        name=f"categorical-{k}",
        f=f,
        logits=logits,
        distribution="categorical",
        description=(
            f"{n} categoricals of K = {k}, f = (c.z - 0.5)^2 + prod sin(w.z) ({k**n} configs)"
        ),
    )


@functools.lru_cache(maxsize=4)
def _trained_vae(seed: int, n: int, k: int, steps: int) -> Tuple[Tensor, ...]:
    """Encoder and decoder weights of a tiny categorical VAE, trained by exact enumeration.

    Plain tensors and a private generator: building the problem leaves torch's global random
    state alone. Cached, because every call would otherwise retrain the same weights.
    """
    from discograd.data import load_digits
    from discograd.estimators import get

    data = load_digits(seed=0)
    x = data.train[:256].double()
    g = torch.Generator().manual_seed(seed)
    dim, latent = x.shape[1], n * k
    enc_w = (torch.randn(dim, latent, generator=g, dtype=torch.float64) / dim**0.5).requires_grad_()
    enc_b = torch.zeros(latent, dtype=torch.float64, requires_grad=True)
    dec_w = (torch.randn(latent, dim, generator=g, dtype=torch.float64) / n**0.5).requires_grad_()
    dec_b = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    params = [enc_w, enc_b, dec_w, dec_b]
    exact = get("exact")
    # Adam (lr 0.01, betas 0.9 / 0.999) written out: importing torch.optim costs seconds.
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        logits = (x @ enc_w + enc_b).reshape(-1, n, k)
        recon = exact(_reconstruction_nll(x, dec_w, dec_b), logits)  # E_q[-log p(x|z)], (B,)
        log_q = torch.log_softmax(logits, -1)
        kl = (log_q.exp() * (log_q + math.log(k))).sum((-1, -2))  # KL(q || uniform prior)
        grads = torch.autograd.grad((recon + kl).mean(), params)
        with torch.no_grad():
            for p, g, m_, v_ in zip(params, grads, m, v):
                m_.mul_(0.9).add_(g, alpha=0.1)
                v_.mul_(0.999).addcmul_(g, g, value=0.001)
                p -= 0.01 * (m_ / (1 - 0.9**step)) / ((v_ / (1 - 0.999**step)).sqrt() + 1e-8)
    return tuple(p.detach().clone() for p in params)


def _reconstruction_nll(x: Tensor, dec_w: Tensor, dec_b: Tensor) -> Callable[[Tensor], Tensor]:
    """f(z) = -log p(x | z) per example: z (..., B, N, K) -> (..., B)."""

    def f(z: Tensor) -> Tensor:
        pixel_logits = z.flatten(-2) @ dec_w + dec_b
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            pixel_logits, x.expand(pixel_logits.shape), reduction="none"
        )
        return bce.sum(-1)

    return f


def vae_digits(batch: int = 8, n: int = 2, k: int = 4, seed: int = 0, steps: int = 8) -> Problem:
    """A tiny categorical VAE's reconstruction loss on ``batch`` embedded test digits."""
    from discograd.data import load_digits

    enc_w, enc_b, dec_w, dec_b = _trained_vae(seed, n, k, steps)
    x = load_digits(seed=0).test[:batch].double()
    logits = (x @ enc_w + enc_b).reshape(batch, n, k)
    return Problem(
        name="vae-digits",
        f=_reconstruction_nll(x, dec_w, dec_b),
        logits=logits,
        distribution="categorical",
        description=(
            f"categorical VAE on {batch} embedded digits, N = {n} latents of K = {k}; "
            f"f = reconstruction NLL per example ({k**n} configs each)"
        ),
    )


def gaussian(d: int = 3, seed: int = 0) -> Problem:
    """E[sum_d (z_d - c_d)^2], z ~ Normal(mu, sigma), given as a torch Distribution."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(d, generator=g, dtype=torch.float64).requires_grad_()
    scale = (0.5 + torch.rand(d, generator=g, dtype=torch.float64)).requires_grad_()
    c = torch.randn(d, generator=g, dtype=torch.float64)

    def f(z: Tensor) -> Tensor:
        return ((z - c) ** 2).sum(-1)

    # E[(z - c)^2] = (mu - c)^2 + sigma^2.
    exact = torch.cat([2 * (loc.detach() - c), 2 * scale.detach()])
    return Problem(
        name="gaussian",
        f=f,
        logits=Normal(loc, scale),
        distribution="distribution",
        description=f"E[|z - c|^2], z ~ Normal(mu, sigma) in {d} dims (a torch Distribution)",
        params=[loc, scale],
        exact=exact,
    )


# name -> (factory, one-line summary for listings that should not build the problem).
_FACTORIES: Dict[str, Tuple[Callable[[], Problem], str]] = {
    "rebar-0.45": (functools.partial(rebar_toy, 0.45), "REBAR toy E[(b - 0.45)^2], Bernoulli"),
    "rebar-0.499": (functools.partial(rebar_toy, 0.499), "REBAR toy E[(b - 0.499)^2], Bernoulli"),
    "categorical-10": (categorical_toy, "2 categoricals of K = 10, nonlinear f"),
    "vae-digits": (vae_digits, "tiny categorical VAE on 8 digits, reconstruction NLL"),
    "gaussian": (gaussian, "E[|z - c|^2], z ~ Normal: reparam and REINFORCE on a Distribution"),
}

#: The problems ``discograd diagnose`` runs when none is named.
DEFAULT_PROBLEMS = ("rebar-0.45", "rebar-0.499", "categorical-10")


def available_problems() -> List[str]:
    """Names of the built-in problems."""
    return list(_FACTORIES)


def problem_summary(name: str) -> str:
    """A one-line summary of the built-in problem ``name``, without building it."""
    return _FACTORIES[name][1]


def get_problem(name: str) -> Problem:
    """A fresh instance of the built-in problem ``name``."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown problem {name!r}; available: {', '.join(_FACTORIES)}")
    return _FACTORIES[name][0]()
