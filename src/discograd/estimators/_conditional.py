r"""Gumbel perturbations conditioned on the arg max (shared by Gumbel-Rao, REBAR and RELAX).

Given a categorical sample D = argmax(theta + G), the perturbed logits z = theta + G are drawn
from p(z | D) "top-down" (Maddison et al., 2014; Tucker et al., 2017; Paulus et al., 2021): the
maximum is Gumbel with location logsumexp(theta), and each other coordinate is a Gumbel with
location theta_i truncated below the maximum. With E_i ~ Exp(1) independent:

.. math:: z_D = \log\textstyle\sum_j e^{\theta_j} - \log E_D, \qquad
          z_i = -\log\big(e^{-z_D} + E_i e^{-\theta_i}\big)\ (i \ne D).

The draw is a differentiable function of theta (reparameterized), computed in log space.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from discograd.ops import compute_dtype, standard_exponential


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
