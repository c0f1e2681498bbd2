r"""REBAR (Tucker et al., 2017): REINFORCE with a Gumbel-softmax control variate.

With :math:`z = \theta + G`, :math:`b = H(z) = \mathrm{onehot}(\arg\max z)`,
:math:`\tilde z \sim p(z \mid b)` and :math:`\sigma_\lambda(z) = \mathrm{softmax}(z/\lambda)`,

.. math:: \hat g = \big[f(b) - \eta f(\sigma_\lambda(\tilde z))\big]\nabla_\theta\log p(b)
          + \eta\nabla_\theta f(\sigma_\lambda(z)) - \eta\nabla_\theta f(\sigma_\lambda(\tilde z)).

Unbiased for ANY scale :math:`\eta` and temperature :math:`\lambda`. Both are parameters
(:math:`\eta` initially 1, :math:`\lambda` stored as its log, initially 0.5) trained, as in the
paper, to minimize the variance of the logits' gradient estimate (``train_cv=False`` switches
that off); see :mod:`._control_variate` for how this reaches them and nothing else. f's
parameters get :math:`\nabla f(b)` only. f must accept relaxed inputs.

Categorical: :math:`\tilde z` from fresh noise. Cost: 3 evaluations of f per sample (S with
``n_samples``), in one call on the stacked :math:`b, \sigma_\lambda(z), \sigma_\lambda(\tilde
z)`.

Bernoulli (:math:`P(b = 1) = \sigma(a)`): the paper's closed form, :math:`z = a + L`
(L logistic), :math:`\sigma_\lambda(z) = \sigma(z/\lambda)`, and :math:`\tilde z = a +
\mathrm{logit}(v')` with :math:`v' = v(1 - \sigma(a))` if b = 0, :math:`(1 - \sigma(a)) + v
\sigma(a)` if b = 1. ``coupling="tied"`` (default, as the authors' code): v is z's own uniform
rescaled to b's interval, so :math:`\tilde z = z` in value with derivative
:math:`\sigma(\pm a)(1 - e^{-|z|})`, and the estimate is
:math:`[f(b) - \eta f(\sigma_\lambda(z))]\nabla\log p(b) + \eta\,\partial_z f(\sigma_\lambda(z))
(1 - \partial\tilde z/\partial a)`: 2 evaluations of f per sample. ``coupling="independent"``:
a fresh v, 3 evaluations (the law of the former two-class route). Neither coupling has the
lower variance everywhere (figures in :mod:`._control_variate`).

Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein, "REBAR: Low-variance, unbiased gradient
estimates for discrete latent variable models", NeurIPS 2017.
"""

from __future__ import annotations

from discograd.estimators._control_variate import ControlVariateEstimator
from discograd.estimators.base import register


@register("rebar")
class REBAR(ControlVariateEstimator):
    """REBAR with learned ``eta`` and ``temperature`` (their initial values)."""

    evaluations = "3S (2S: Bernoulli, tied coupling)"
