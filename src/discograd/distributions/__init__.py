"""torch.distributions subclasses for relaxed discrete variables.

- :class:`Concrete`: Gumbel-softmax / Concrete on the simplex (relaxed one-hot categorical).
- :class:`ExpConcrete`: the same in log-simplex coordinates, for accurate log-densities.
- :class:`BinaryConcrete`: relaxed Bernoulli on (0, 1).

All three take ``(temperature, logits=None, probs=None, validate_args=None)``, have
``rsample``, and accept an optional ``generator=`` keyword in ``rsample`` and ``sample``.
"""

from discograd.distributions.binary_concrete import BinaryConcrete
from discograd.distributions.concrete import Concrete
from discograd.distributions.exp_concrete import ExpConcrete

__all__ = ["Concrete", "ExpConcrete", "BinaryConcrete"]
