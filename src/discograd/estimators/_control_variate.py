r"""The machinery REBAR and RELAX share: a control variate of the Gumbel perturbation.

With :math:`z = \theta + G`, :math:`b = H(z) = \mathrm{onehot}(\arg\max z)` and
:math:`\tilde z \sim p(z \mid b)` (reparameterized, see :mod:`._conditional`), any
differentiable :math:`c(z)` gives the unbiased estimate (Grathwohl et al., 2018, eq. 8)

.. math:: \hat g = \big[f(b) - c(\tilde z)\big]\nabla_\theta \log p(b)
          + \nabla_\theta c(z) - \nabla_\theta c(\tilde z),

because :math:`\mathbb{E}[c(\tilde z)\nabla\log p(b) + \nabla c(\tilde z)] = \nabla
\mathbb{E}[c(z)]`. Unbiasedness holds for every value of c's parameters :math:`\phi`, so they
are trained to minimize the variance :math:`\mathbb{E}\|\hat g\|^2 - \|\nabla \mathbb{E} f\|^2`
by the single-sample gradient :math:`\partial_\phi \sum \hat g^2`.

How the gradient is delivered: :math:`\hat g` is computed with ``torch.autograd.grad`` w.r.t. a
detached copy of the logits (with ``create_graph`` when c is trained), then injected into the
user's logits by the zero-valued term :math:`\mathrm{stop}(\hat g)\cdot\theta - \mathrm{stop}
(\cdot)`; :math:`\partial_\phi \sum \hat g^2` is injected into :math:`\phi` alone the same way
(a scalar added to every entry of the surrogate: ``surrogate.mean().backward()`` gives
:math:`\phi` exactly that gradient, with :math:`\hat g` the estimate for the sum of entries).
f's own parameters get :math:`\nabla f(b)` only, from the hard samples.

Bernoulli variables go through the two-class categorical with logits [0, a]
(:func:`~discograd.estimators.base.categorical_view`).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from discograd._validation import check_tau
from discograd.estimators._conditional import conditional_gumbel
from discograd.estimators._family import Family
from discograd.estimators.base import (
    Estimator,
    LossFn,
    categorical_view,
    check_n_samples,
    evaluate,
    sum_rows,
    zero_value,
)
from discograd.ops import compute_dtype, gumbel_noise


def _sum_beyond(x: Tensor, ndim: int) -> Tensor:
    """Sum x over every dim after the first ``ndim``."""
    dims = tuple(range(ndim, x.dim()))
    return x.sum(dims) if dims else x


def _tempered_softmax(z: Tensor, tau: Tensor) -> Tensor:
    """softmax(z / tau) whose derivatives stay finite where z is -inf (a masked category)."""
    finite = torch.isfinite(z)
    scaled = torch.where(finite, z, torch.zeros_like(z)) / tau
    return torch.softmax(scaled.masked_fill(~finite, float("-inf")), -1)


class ControlVariateEstimator(Estimator):
    r"""Base of REBAR and RELAX; subclasses add to c through :meth:`residual`.

    Holds REBAR's scale :math:`\eta` (``eta``) and temperature :math:`\lambda = e^{s}`
    (``temperature``, stored as its log s). While ``rebar_term`` is set, f is evaluated at the
    relaxed samples :math:`\sigma_\lambda(z) = \mathrm{softmax}(z/\lambda)` and
    :math:`\sigma_\lambda(\tilde z)` together with the hard ones, in one call of f.
    ``train_cv=False`` leaves every control-variate parameter untrained.
    """

    distributions = ("categorical", "bernoulli")
    unbiased = True
    rebar_term = True

    def __init__(
        self, n_samples: int = 1, eta: float = 1.0, temperature: float = 0.5, train_cv: bool = True
    ) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)
        self.train_cv = bool(train_cv)
        check_tau(temperature, name="temperature")
        if not math.isfinite(float(eta)):
            raise ValueError(f"eta must be finite, got {eta}")
        self.eta = nn.Parameter(torch.tensor(float(eta)))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(float(temperature))))

    def temperature(self) -> Tensor:
        """REBAR's temperature :math:`\\lambda = \\exp(s)`."""
        return self.log_temperature.exp()

    def residual(self, z: Tensor, family: Family, out_ndim: int) -> Optional[Tensor]:
        """An extra term :math:`r_\\rho(z)` of c, (S, *out_shape), or None (REBAR)."""
        return None

    def control(
        self, z: Tensor, f_relaxed: Optional[Tensor], family: Family, out_ndim: int
    ) -> Tensor:
        r""":math:`c(z) = \eta f(\sigma_\lambda(z)) + r(z)`, the parts that are switched on."""
        terms = [] if f_relaxed is None else [self.eta * f_relaxed]
        r = self.residual(z, family, out_ndim)
        if r is not None:
            terms.append(r)
        if not terms:
            raise ValueError("the control variate is empty: enable rebar_term or give a net")
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    def perturb(
        self, theta: Tensor, n: int, generator: Optional[torch.Generator]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """n draws of (z, b = H(z), z~ ~ p(z | b)), each (n, ..., K), z and z~ reparameterized."""
        shape = (n,) + tuple(theta.shape)
        z = theta + gumbel_noise(shape, generator=generator, dtype=theta.dtype, device=theta.device)
        hard = torch.zeros_like(z).scatter_(-1, z.detach().argmax(-1, keepdim=True), 1.0)
        return z, hard, conditional_gumbel(theta, hard, generator)

    def estimate(self, f: LossFn, family: Family, generator: Optional[torch.Generator]) -> Tensor:
        s = self.n_samples
        if not torch.is_grad_enabled():
            # Nothing will be differentiated: the value is the plain Monte Carlo mean.
            return evaluate(f, family.sample(s, generator), family).mean(0)
        logits = family.logits  # type: ignore[attr-defined]
        # g is computed w.r.t. a detached copy, so that building it (and its variance) never
        # sends gradient into whatever produced the logits.
        leaf = logits.detach().requires_grad_(True)
        leaf_family = type(family)(leaf)  # type: ignore[call-arg]
        theta, decode = categorical_view(leaf_family)
        z, hard, z_cond = self.perturb(theta.to(compute_dtype(theta.dtype)), s, generator)

        stack = [hard]
        if self.rebar_term:
            tau = self.temperature()
            stack += [_tempered_softmax(z, tau), _tempered_softmax(z_cond, tau)]
        values = evaluate(f, decode(torch.cat(stack)).to(logits.dtype), family)
        f_hard = values[:s]
        out_ndim = values.dim() - 1
        relaxed: Tuple[Optional[Tensor], Optional[Tensor]] = (None, None)
        if self.rebar_term:
            relaxed = (values[s : 2 * s], values[2 * s :])
        c_z = self.control(z, relaxed[0], family, out_ndim)
        c_cond = self.control(z_cond, relaxed[1], family, out_ndim)
        log_p = sum_rows(leaf_family.log_prob(decode(hard).to(logits.dtype)), out_ndim)

        params = [p for p in self.parameters() if p.requires_grad] if self.train_cv else []
        g = self._gradient(leaf, log_p, f_hard, c_z, c_cond, create_graph=bool(params))
        # Masked (-inf) logits have g = 0 and must not turn the zero-valued term into NaN.
        finite = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
        surrogate = f_hard.mean(0) + zero_value(_sum_beyond(g.detach() * finite, out_ndim))
        if params and g.requires_grad:
            surrogate = surrogate + zero_value(self._variance_term(g, params))
        return surrogate

    def _gradient(
        self,
        leaf: Tensor,
        log_p: Tensor,
        f_hard: Tensor,
        c_z: Tensor,
        c_cond: Tensor,
        create_graph: bool,
    ) -> Tensor:
        r""":math:`\hat g` w.r.t. ``leaf``, averaged over the S samples.

        The score coefficient :math:`f(b) - c(\tilde z)` enters as a ``grad_outputs`` vector:
        constant w.r.t. the logits, as the formula requires, yet differentiable in c's
        parameters when ``create_graph`` is set.
        """
        s = f_hard.shape[0]
        pairs = [
            (log_p, ((f_hard.detach() - c_cond) / s).to(log_p.dtype)),
            (c_z, torch.full_like(c_z, 1.0 / s)),
            (c_cond, torch.full_like(c_cond, -1.0 / s)),
        ]
        pairs = [(out, v) for out, v in pairs if out.requires_grad]  # a c constant in z
        (grad,) = torch.autograd.grad(
            [out for out, _ in pairs],
            leaf,
            grad_outputs=[v for _, v in pairs],
            create_graph=create_graph,
            retain_graph=True,  # f's graph is still needed for the user's backward of f(b)
            allow_unused=True,
        )
        return torch.zeros_like(leaf) if grad is None else grad

    @staticmethod
    def _variance_term(g: Tensor, params: List[nn.Parameter]) -> Tensor:
        r""":math:`\sum_\phi \mathrm{stop}(\partial_\phi \sum \hat g^2)\,\phi`: its gradient
        reaches the control-variate parameters only."""
        grads = torch.autograd.grad(g.square().sum(), params, retain_graph=True, allow_unused=True)
        terms = [(d.detach() * p).sum() for d, p in zip(grads, params) if d is not None]
        return sum(terms, g.new_zeros(()))
