r"""discograd's relaxed distributions in Pyro models and guides.

Pyro's ``pyro.sample`` needs distributions with Pyro's ``TorchDistributionMixin`` (``__call__``,
``to_event``, ``mask``, ``expand_by``, shape helpers). Each class here subclasses the discograd
distribution and the mixin, and nothing else: sampling, ``rsample`` (so Trace_ELBO and
TraceGraph_ELBO use the reparameterization gradient, with no score-function term) and
``log_prob`` are discograd's::

    import pyro
    from discograd.contrib.pyro import Concrete

    def model():
        z = pyro.sample("z", Concrete(torch.tensor(0.5), logits=torch.zeros(3)))
        ...

- :class:`Concrete`: relaxed one-hot categorical on the simplex (event shape (K,)).
- :class:`ExpConcrete`: its log, on the log-simplex; prefer it for latent variables at low
  temperatures (accurate densities where Concrete's coordinates underflow).
- :class:`BinaryConcrete`: relaxed Bernoulli on (0, 1) (event shape ()).

Requires Pyro (``pip install discograd[pyro]``); importing this module without it raises an
``ImportError`` that says so.
"""

from __future__ import annotations

try:
    from pyro.distributions.torch_distribution import TorchDistributionMixin
except ImportError as e:  # pragma: no cover - exercised only without Pyro
    raise ImportError(
        "discograd.contrib.pyro needs Pyro: pip install 'discograd[pyro]' (or pyro-ppl)"
    ) from e

from discograd import distributions as _d

__all__ = ["BinaryConcrete", "Concrete", "ExpConcrete"]


# No class defines __init__, so torch's expand() (through _get_checked_instance) builds an
# instance of the wrapper, not of the discograd parent, and the mixin survives expansion.
class Concrete(_d.Concrete, TorchDistributionMixin):
    __doc__ = _d.Concrete.__doc__


class ExpConcrete(_d.ExpConcrete, TorchDistributionMixin):
    __doc__ = _d.ExpConcrete.__doc__


class BinaryConcrete(_d.BinaryConcrete, TorchDistributionMixin):
    __doc__ = _d.BinaryConcrete.__doc__
