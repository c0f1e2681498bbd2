"""The distribution an estimator differentiates through, behind one small interface.

``categorical``: ``logits`` (..., K), one independent categorical per row; samples are one-hot.
``bernoulli``: ``logits`` of any shape, one independent Bernoulli per element, P(z=1) =
sigmoid(logit); samples are 0/1 floats.
``distribution``: any ``torch.distributions.Distribution``; rows are its batch elements.

Rows are the independent units; ``row_shape`` is their shape (the logits without K, the
logits' shape, or the batch shape). f's output has shape (S, *out_shape) where out_shape is a
prefix of row_shape: an entry of f's output may depend only on the rows under it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.distributions import Distribution

from discograd._validation import check_logits, checks_contents
from discograd.ops import gumbel_max, standard_exponential

DISTRIBUTIONS = ("categorical", "bernoulli", "distribution")


@contextlib.contextmanager
def seeded_from(generator: Optional[torch.Generator], device: torch.device) -> Iterator[None]:
    """Run torch's global sampler seeded from ``generator``, leaving the global state as it was.

    torch.distributions' ``sample`` has no ``generator=``; forking the global RNG keeps draws
    reproducible without changing the user's random stream.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Family:
    kind: str
    row_shape: torch.Size

    def sample(self, n: int, generator: Optional[torch.Generator]) -> Tensor:
        """n exact samples, shape (n, *value_shape), without gradient."""
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-probability of each row, shape (n, *row_shape), differentiable in the parameters."""
        raise NotImplementedError

    def mean(self) -> Tensor:
        """E[z], differentiable in the parameters."""
        raise NotImplementedError

    def mode(self) -> Tensor:
        """One most likely configuration, shape (1, *value_shape), without gradient: a valid
        value drawn from no random stream."""
        raise NotImplementedError(f"no mode for {self.kind}")

    def enumerate(self, out_ndim: int) -> Tensor:
        """Every joint configuration of the rows under one output entry: (C, *value_shape)."""
        raise NotImplementedError(f"exact enumeration is not available for {self.kind}")

    def num_configurations(self, out_ndim: int) -> int:
        raise NotImplementedError(f"exact enumeration is not available for {self.kind}")


class CategoricalFamily(Family):
    kind = "categorical"

    def __init__(self, logits: Tensor) -> None:
        check_logits(logits, dim=-1)
        self.logits = logits
        self.num_classes = logits.shape[-1]
        self.row_shape = logits.shape[:-1]

    def sample(self, n: int, generator: Optional[torch.Generator]) -> Tensor:
        expanded = self.logits.detach().expand((n,) + self.logits.shape)
        return gumbel_max(expanded, generator=generator, one_hot=True)

    def log_prob(self, z: Tensor) -> Tensor:
        # gather, not (z * log_p).sum: masked (-inf) categories would give 0 * -inf = NaN.
        log_p = torch.log_softmax(self.logits, -1).expand(z.shape)
        return log_p.gather(-1, z.argmax(-1, keepdim=True)).squeeze(-1)

    def mean(self) -> Tensor:
        return torch.softmax(self.logits, -1)

    def mode(self) -> Tensor:
        index = self.logits.detach().argmax(-1)
        return torch.nn.functional.one_hot(index, self.num_classes).to(self.logits.dtype)[None]

    def num_configurations(self, out_ndim: int) -> int:
        rows = int(torch.Size(self.row_shape[out_ndim:]).numel())
        return self.num_classes**rows

    def enumerate(self, out_ndim: int) -> Tensor:
        inner = self.row_shape[out_ndim:]
        m, k = int(torch.Size(inner).numel()), self.num_classes
        digits = _digits(k, m, self.logits.device)  # (k^m, m)
        z = torch.nn.functional.one_hot(digits, k).to(self.logits.dtype)
        z = z.reshape((-1,) + tuple(inner) + (k,))
        view = (z.shape[0],) + (1,) * out_ndim + tuple(z.shape[1:])
        return z.reshape(view).expand((z.shape[0],) + tuple(self.logits.shape))


class BernoulliFamily(Family):
    kind = "bernoulli"

    def __init__(self, logits: Tensor) -> None:
        check_logits(logits, dim=None)
        if checks_contents() and torch.isinf(logits).any():
            raise ValueError("logits must be finite for distribution='bernoulli'")
        self.logits = logits
        self.row_shape = logits.shape

    def sample(self, n: int, generator: Optional[torch.Generator]) -> Tensor:
        # z = 1[logit + L > 0] with L = log E2 - log E1 ~ Logistic: exact even where sigmoid(logit)
        # is far below the 2^-24 resolution of a uniform draw.
        logits = self.logits.detach()
        work = torch.float64 if logits.dtype == torch.float64 else torch.float32
        shape = (2, n) + tuple(logits.shape)
        e = standard_exponential(shape, generator=generator, dtype=work, device=logits.device)
        return (logits + e[1].log() - e[0].log() > 0).to(logits.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        return -torch.nn.functional.binary_cross_entropy_with_logits(
            self.logits.expand(z.shape), z, reduction="none"
        )

    def mean(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def mode(self) -> Tensor:
        return (self.logits.detach() > 0).to(self.logits.dtype)[None]

    def num_configurations(self, out_ndim: int) -> int:
        return 2 ** int(torch.Size(self.row_shape[out_ndim:]).numel())

    def enumerate(self, out_ndim: int) -> Tensor:
        inner = self.row_shape[out_ndim:]
        m = int(torch.Size(inner).numel())
        z = _digits(2, m, self.logits.device).to(self.logits.dtype).reshape((-1,) + tuple(inner))
        view = (z.shape[0],) + (1,) * out_ndim + tuple(inner)
        return z.reshape(view).expand((z.shape[0],) + tuple(self.logits.shape))

    def as_categorical(self) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
        """Logits [0, logit] of a two-class categorical with P(class 1) = sigmoid(logit).

        Returns those logits and the map from a (relaxed) two-class sample back to z.
        """
        cat = torch.stack([torch.zeros_like(self.logits), self.logits], dim=-1)
        return cat, lambda y: y[..., 1]


class TorchFamily(Family):
    kind = "distribution"

    def __init__(self, dist: Distribution) -> None:
        self.dist = dist
        self.row_shape = dist.batch_shape
        self._device = dist.mean.device if _has_mean(dist) else torch.device("cpu")

    def sample(self, n: int, generator: Optional[torch.Generator]) -> Tensor:
        with seeded_from(generator, self._device):
            return self.dist.sample((n,))

    def rsample(self, n: int, generator: Optional[torch.Generator]) -> Tensor:
        with seeded_from(generator, self._device):
            return self.dist.rsample((n,))

    def log_prob(self, z: Tensor) -> Tensor:
        return self.dist.log_prob(z)

    def mean(self) -> Tensor:
        return self.dist.mean


def _has_mean(dist: Distribution) -> bool:
    try:
        _ = dist.mean
    except NotImplementedError:
        return False
    return True


def _digits(base: int, m: int, device: torch.device) -> Tensor:
    """All base-``base`` numbers of m digits: (base^m, m), most significant digit first."""
    codes = torch.arange(base**m, device=device)
    powers = base ** torch.arange(m - 1, -1, -1, device=device)
    return (codes.unsqueeze(-1) // powers) % base


def make_family(
    logits: Union[Tensor, Distribution], distribution: str, *, supported: Tuple[str, ...], name: str
) -> Family:
    """Wrap the estimator's input, with a clear error where the estimator does not support it."""
    if isinstance(logits, Distribution):
        distribution = "distribution"
    elif distribution not in ("categorical", "bernoulli"):
        raise ValueError(
            f"distribution must be 'categorical' or 'bernoulli' (or pass a "
            f"torch.distributions.Distribution as logits), got {distribution!r}"
        )
    if distribution not in supported:
        hint = {
            "distribution": "it needs discrete logits, not a torch Distribution",
            "categorical": "it is defined for Bernoulli variables only",
            "bernoulli": "it is defined for categorical variables only",
        }[distribution]
        raise ValueError(
            f"estimator {name!r} does not support distribution={distribution!r}: {hint}. "
            f"Supported: {', '.join(supported)}"
        )
    if distribution == "distribution":
        return TorchFamily(logits)  # type: ignore[arg-type]
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if distribution == "categorical":
        return CategoricalFamily(logits)
    return BernoulliFamily(logits)
