r"""Gumbel perturbations conditioned on the arg max (shared by Gumbel-Rao, REBAR and RELAX).

Given a categorical sample D = argmax(theta + G), the perturbed logits z = theta + G are drawn
from p(z | D) "top-down" (Maddison et al., 2014; Tucker et al., 2017; Paulus et al., 2021): the
maximum is Gumbel with location logsumexp(theta), and each other coordinate is a Gumbel with
location theta_i truncated below the maximum. With E_i ~ Exp(1) independent:

.. math:: z_D = \log\textstyle\sum_j e^{\theta_j} - \log E_D, \qquad
          z_i = -\log\big(e^{-z_D} + E_i e^{-\theta_i}\big)\ (i \ne D).

The draw is a differentiable function of theta (reparameterized), computed in log space.

Bernoulli variables (:func:`conditional_logistic`). For P(b = 1) = sigmoid(a), the two-class
view [0, a] enters a relaxation only through the difference s = a + L of its perturbed logits,
L = G_1 - G_0 ~ Logistic, and b = 1[s > 0]. Given b, L is a logistic truncated to
L > -a (b = 1) or L <= -a (b = 0), drawn by inverting its CDF F = sigmoid at a uniform on
(F(-a), 1) or (0, F(-a)), with F(-a) = sigmoid(-a). Writing sigma = 2b - 1 and the uniform
(measured from the end of the interval away from -a) as w = sigmoid(sigma a) exp(-E),
E ~ Exp(1),

.. math:: s = \sigma\,\big(\mathrm{softplus}(\sigma a) + E
          + \log(1 - e^{\log\sigma(\sigma a) - E})\big),

which is sigma * (sigma a - logit(w)) rearranged so that nothing cancels: exact in
distribution to the K = 2 case of the top-down draw, one exponential per variable instead of
two, and no (..., 2) tensors.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from discograd.ops import _log1mexp, compute_dtype, standard_exponential


def conditional_gumbel(
    logits: Tensor, one_hot: Tensor, generator: Optional[torch.Generator] = None, n: int = 0
) -> Tensor:
    """Perturbed logits z ~ p(theta + G | argmax = one_hot), differentiable in ``logits``.

    Args:
        logits: (..., K).
        one_hot: (..., K) exact one-hot samples (broadcast against ``logits``).
        n: if > 0, draw n conditional samples for each, stacked in a new leading dim.
    """
    shape = torch.broadcast_shapes(logits.shape, one_hot.shape)
    if n > 0:
        shape = (n,) + tuple(shape)
    work = compute_dtype(logits.dtype)
    theta = logits.to(work)
    log_e = standard_exponential(shape, generator=generator, dtype=work, device=logits.device).log()
    mask = one_hot.to(work).expand(shape) > 0.5
    top = torch.logsumexp(theta, -1, keepdim=True) - (log_e * mask).sum(-1, keepdim=True)
    rest = -torch.logaddexp(-top, log_e - theta)
    return torch.where(mask, top.expand(shape), rest)


def conditional_logistic(
    logits: Tensor, sample: Tensor, generator: Optional[torch.Generator] = None, n: int = 0
) -> Tensor:
    """Perturbed logits s = a + L ~ p(a + L | 1[a + L > 0] = sample), L ~ Logistic.

    The Bernoulli counterpart of :func:`conditional_gumbel` (see the module docstring): the
    relaxed sample sigmoid(s / tau) given b is distributed as softmax(z / tau)[..., 1] with
    z ~ p([0, a] + G | argmax = b). Differentiable in ``logits`` (inverse-CDF
    reparameterization); computed in float32 (float64 stays).

    Args:
        logits: a, any shape, finite.
        sample: exact 0/1 samples b (broadcast against ``logits``).
        n: if > 0, draw n conditional samples for each, stacked in a new leading dim.
    """
    shape = torch.broadcast_shapes(logits.shape, sample.shape)
    if n > 0:
        shape = (n,) + tuple(shape)
    work = compute_dtype(logits.dtype)
    sign = sample.to(work) * 2.0 - 1.0
    signed = logits.to(work) * sign  # sigma * a: the log-odds of the observed outcome
    e = standard_exponential(shape, generator=generator, dtype=work, device=logits.device)
    # log w = log sigmoid(sigma a) - E <= log P(observed outcome) < 0: w is the uniform's
    # distance from the end of its interval away from the threshold -a.
    log_w = F.logsigmoid(signed) - e
    return sign * (F.softplus(signed) + e + _log1mexp(log_w))
