r"""The machinery REBAR and RELAX share: a control variate of the Gumbel perturbation.

With :math:`z = \theta + G`, :math:`b = H(z) = \mathrm{onehot}(\arg\max z)` and
:math:`\tilde z \sim p(z \mid b)` (reparameterized), any differentiable :math:`c(z)` gives the
unbiased estimate (Grathwohl et al., 2018, eq. 8)

.. math:: \hat g = \big[f(b) - c(\tilde z)\big]\nabla_\theta \log p(b)
          + \nabla_\theta c(z) - \nabla_\theta c(\tilde z),

because :math:`\mathbb{E}[c(\tilde z)\nabla\log p(b) + \nabla c(\tilde z)] = \nabla
\mathbb{E}[c(z)]`. Unbiasedness holds for every value of c's parameters :math:`\phi`, so they
are trained to minimize the variance :math:`\mathbb{E}\|\hat g\|^2 - \|\nabla \mathbb{E} f\|^2`
by the single-sample gradient :math:`\partial_\phi \sum \hat g^2`.

Categorical variables: :math:`\tilde z` is the top-down draw of :mod:`._conditional` from fresh
noise, independent of z given b. Cost: two K-class perturbations per sample; c is evaluated at
z and at :math:`\tilde z`.

Bernoulli variables (:math:`P(b = 1) = \vartheta = \sigma(a)`) take the closed form of Tucker
et al. (2017), with no (..., 2) tensors:

.. math:: z = a + \mathrm{logit}(u),\ u \sim U(0, 1),\qquad b = 1[z > 0]
          \ (\Leftrightarrow u > 1 - \vartheta),

.. math:: \tilde z = a + \mathrm{logit}(v'),\qquad v' = \begin{cases} v\,(1 - \vartheta) & b = 0
          \\ (1 - \vartheta) + v\,\vartheta & b = 1, \end{cases}

with v uniform and independent of b, held fixed when differentiating: an exact
reparameterization of :math:`p(z \mid b)`, so :math:`\hat g` keeps its mean whatever the joint
law of v and u. ``coupling`` chooses that law:

- ``"tied"`` (default; the authors' code): v is the position of u in the interval that b
  selects, :math:`u/(1 - \vartheta)` or :math:`(u - 1 + \vartheta)/\vartheta`. Then
  :math:`v' = u`: :math:`\tilde z` EQUALS z in value, with derivative

  .. math:: \frac{\partial \tilde z}{\partial a} = \sigma(s a)\,\big(1 - e^{-|z|}\big),
            \qquad s = 2b - 1

  (0 at the threshold, tending to P(b) away from it) where :math:`\partial z/\partial a = 1`.
  c is evaluated once, at z:
  :math:`\hat g = [f(b) - c(z)]\nabla_a\log p(b) + \frac{\partial c}{\partial z}
  (1 - \frac{\partial\tilde z}{\partial a})`. Cost per sample: two exponentials (for
  :math:`L = \mathrm{logit}(u)`), one evaluation of c (2 of f with the REBAR term).
- ``"independent"``: a fresh v
  (:func:`~discograd.estimators._conditional.conditional_logistic`), the law of the two-class
  route [0, a] + G that Bernoulli variables took before. Cost per sample: three exponentials,
  two evaluations of c (3 of f with the REBAR term).

Neither is uniformly lower in variance. REBAR's logit gradient on its toy
:math:`\mathbb{E}[(b - 0.45)^2]` at :math:`\eta = 1, \lambda = 0.5` (40,000 draws): at
:math:`\vartheta = 1/2` tied 0.0241, independent 0.0225 (+7%); at :math:`\vartheta = \sigma(2)`
tied 0.0083, independent 0.0114 (-27%); after training :math:`\eta, \lambda` 0.0106 vs 0.0094
and 0.0021 vs 0.0033; RELAX's trained tied variance was lower at both. A subclass that replaces
:meth:`~ControlVariateEstimator.perturb` (the K-class draw) but not
:meth:`~ControlVariateEstimator.perturb_bernoulli` gets the two-class route for Bernoulli
variables too.

How the gradient is delivered: :math:`\hat g` is computed with ``torch.autograd.grad`` w.r.t. a
detached copy of the logits (with ``create_graph`` when c is trained), then injected into the
user's logits by the zero-valued term :math:`\mathrm{stop}(\hat g)\cdot\theta - \mathrm{stop}
(\cdot)`; :math:`\partial_\phi \sum \hat g^2` is injected into :math:`\phi` alone the same way
(a scalar added to every entry of the surrogate: ``surrogate.mean().backward()`` gives
:math:`\phi` exactly that gradient, with :math:`\hat g` the estimate for the sum of entries).
f's own parameters get :math:`\nabla f(b)` only, from the hard samples.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from discograd._validation import check_tau
from discograd.estimators._conditional import conditional_gumbel, conditional_logistic
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
from discograd.ops import compute_dtype, gumbel_noise, standard_exponential

COUPLINGS = ("tied", "independent")


def _sum_beyond(x: Tensor, ndim: int) -> Tensor:
    """Sum x over every dim after the first ``ndim``."""
    dims = tuple(range(ndim, x.dim()))
    return x.sum(dims) if dims else x


def _tempered_softmax(z: Tensor, tau: Tensor) -> Tensor:
    """softmax(z / tau) whose derivatives stay finite where z is -inf (a masked category)."""
    finite = torch.isfinite(z)
    scaled = torch.where(finite, z, torch.zeros_like(z)) / tau
    return torch.softmax(scaled.masked_fill(~finite, float("-inf")), -1)


def _tempered_sigmoid(z: Tensor, tau: Tensor) -> Tensor:
    """sigmoid(z / tau): softmax([0, z] / tau)[..., 1] without the class dim."""
    return torch.sigmoid(z / tau)


def _identity(x: Tensor) -> Tensor:
    return x


def _logit_difference(z: Tensor) -> Tensor:
    """z_1 - z_0 of a two-class perturbation: a + L, all that tells about b."""
    return z[..., 1] - z[..., 0]


class ControlVariateEstimator(Estimator):
    r"""Base of REBAR and RELAX; subclasses add to c through :meth:`residual`.

    Holds REBAR's scale :math:`\eta` (``eta``) and temperature :math:`\lambda = e^{s}`
    (``temperature``, stored as its log s). While ``rebar_term`` is set, f is evaluated at the
    relaxed samples :math:`\sigma_\lambda(z) = \mathrm{softmax}(z/\lambda)` and
    :math:`\sigma_\lambda(\tilde z)` (one point for tied Bernoulli variables, where they are
    equal) together with the hard ones, in one call of f. ``train_cv=False`` leaves every
    control-variate parameter untrained. ``coupling`` ("tied" or "independent") is the joint law
    of z and :math:`\tilde z` for Bernoulli variables (module docstring); categorical ones are
    always independent. :meth:`perturb` and :meth:`perturb_bernoulli` draw the perturbations.
    """

    distributions = ("categorical", "bernoulli")
    unbiased = True
    compilable = False  # torch.autograd.grad in the call, graph kept (see Estimator)
    rebar_term = True

    def __init__(
        self,
        n_samples: int = 1,
        eta: float = 1.0,
        temperature: float = 0.5,
        train_cv: bool = True,
        coupling: str = "tied",
    ) -> None:
        super().__init__()
        self.n_samples = check_n_samples(n_samples)
        self.train_cv = bool(train_cv)
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        self.coupling = coupling
        check_tau(temperature, name="temperature")
        if not math.isfinite(float(eta)):
            raise ValueError(f"eta must be finite, got {eta}")
        self.eta = nn.Parameter(torch.tensor(float(eta)))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(float(temperature))))

    def temperature(self) -> Tensor:
        """REBAR's temperature :math:`\\lambda = \\exp(s)`."""
        return self.log_temperature.exp()

    def residual(self, z: Tensor, family: Family, out_ndim: int) -> Optional[Tensor]:
        """An extra term :math:`r_\\rho(z)` of c, (S, *out_shape), or None (REBAR).

        z: the perturbed logits, (S, ..., K); for Bernoulli variables a + L, (S, *logits.shape).
        """
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

    def perturb_bernoulli(
        self, a: Tensor, n: int, generator: Optional[torch.Generator]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        r"""n draws of (z, b, z~ ~ p(z | b)) for Bernoulli logits ``a``, each (n, *a.shape).

        z = a + L, L = log E2 - log E1 logistic (exact in the tails, as the family samples),
        b = 1[z > 0]; z and z~ are reparameterized in ``a`` (module docstring). ``coupling``
        "tied": z~ has the value of z and the derivative :math:`\sigma(s a)(1 - e^{-|z|})`;
        "independent": z~ from fresh noise
        (:func:`~discograd.estimators._conditional.conditional_logistic`). An override must
        keep z~ equal to z in value under "tied": the estimate then evaluates c at z alone.
        """
        shape = (2, n) + tuple(a.shape)
        e = standard_exponential(shape, generator=generator, dtype=a.dtype, device=a.device)
        z = a + (e[1].log() - e[0].log())
        value = z.detach()
        positive = value > 0
        b = positive.to(a.dtype)
        if self.coupling == "independent":
            return z, b, conditional_logistic(a, b, generator)
        fixed = a.detach()
        signed = torch.where(positive, fixed, -fixed)  # s a: the log-odds of the drawn outcome
        slope = torch.sigmoid(signed) * -torch.expm1(-value.abs())
        return z, b, value + slope * zero_value(a)

    def _closed_form(self, family: Family) -> bool:
        """Whether Bernoulli variables take the closed form (see the module docstring)."""
        if family.kind != "bernoulli":
            return False
        cls = type(self)
        own_k_class = cls.perturb is not ControlVariateEstimator.perturb
        own_bernoulli = cls.perturb_bernoulli is not ControlVariateEstimator.perturb_bernoulli
        return own_bernoulli or not own_k_class

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
        relax: Callable[[Tensor, Tensor], Tensor]
        if self._closed_form(family):
            a = leaf.to(compute_dtype(leaf.dtype))
            z, hard, z_cond = self.perturb_bernoulli(a, s, generator)
            points = [z, z_cond]
            if self.coupling == "tied":
                # z~ = z in value: one point with derivative dz/da - dz~/da carries both
                # c(z) - c(z~) (gradient) and c(z~) (value), for one evaluation of c.
                points = [z - zero_value(z_cond)]
            relax, decode, residual_input = _tempered_sigmoid, _identity, _identity
        else:
            theta, decode = categorical_view(leaf_family)
            z, hard, z_cond = self.perturb(theta.to(compute_dtype(theta.dtype)), s, generator)
            points = [z, z_cond]
            relax, residual_input = _tempered_softmax, _identity
            if family.kind == "bernoulli":
                residual_input = _logit_difference

        stack = [hard]
        if self.rebar_term:
            tau = self.temperature()
            stack += [relax(p, tau) for p in points]
        values = evaluate(f, decode(torch.cat(stack)).to(logits.dtype), family)
        f_hard = values[:s]
        out_ndim = values.dim() - 1
        controls = [
            self.control(
                residual_input(p),
                values[(i + 1) * s : (i + 2) * s] if self.rebar_term else None,
                family,
                out_ndim,
            )
            for i, p in enumerate(points)
        ]
        pathwise = controls[0] - controls[1] if len(controls) == 2 else controls[0]
        log_p = sum_rows(leaf_family.log_prob(decode(hard).to(logits.dtype)), out_ndim)

        params = [p for p in self.parameters() if p.requires_grad] if self.train_cv else []
        g = self._gradient(leaf, log_p, f_hard, controls[-1], pathwise, create_graph=bool(params))
        # Masked (-inf) logits have g = 0 and must not turn the zero-valued term into NaN.
        finite = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
        # The zero-valued terms are cast to f's dtype: the surrogate keeps f's dtype, as every
        # other estimator's (the control variate's float32 parameters would promote it).
        dtype = f_hard.dtype
        surrogate = f_hard.mean(0) + zero_value(_sum_beyond(g.detach() * finite, out_ndim)).to(
            dtype
        )
        if params and g.requires_grad:
            surrogate = surrogate + zero_value(self._variance_term(g, params)).to(dtype)
        return surrogate

    def _gradient(
        self,
        leaf: Tensor,
        log_p: Tensor,
        f_hard: Tensor,
        c_cond: Tensor,
        pathwise: Tensor,
        create_graph: bool,
    ) -> Tensor:
        r""":math:`\hat g` w.r.t. ``leaf``, averaged over the S samples.

        ``c_cond`` is :math:`c(\tilde z)`; ``pathwise`` a term whose gradient is
        :math:`\nabla c(z) - \nabla c(\tilde z)`. The score coefficient :math:`f(b) - c(\tilde
        z)` enters as a ``grad_outputs`` vector: constant w.r.t. the logits, as the formula
        requires, yet differentiable in c's parameters when ``create_graph`` is set.
        """
        s = f_hard.shape[0]
        pairs = [
            (log_p, ((f_hard.detach() - c_cond) / s).to(log_p.dtype)),
            (pathwise, torch.full_like(pathwise, 1.0 / s)),
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
