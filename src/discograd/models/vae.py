r"""A discrete variational autoencoder (Jang et al., 2016; Maddison et al., 2016).

Generative model: N latent variables, each uniform over K classes (or Bernoulli(1/2)), and
pixels :math:`x_d \mid z \sim \mathrm{Bernoulli}(\sigma(\mathrm{dec}(z)_d))`. Inference model:
:math:`q(z \mid x) = \prod_n \mathrm{Cat}(z_n; \mathrm{softmax}(\mathrm{enc}(x)_n))`.

Training minimises the negative ELBO

.. math:: -\mathcal{L}(x) = \mathbb{E}_{q(z|x)}[-\log p(x \mid z)]
          + \mathrm{KL}(q(z \mid x) \,\|\, p(z)),
          \qquad \mathrm{KL} = \sum_n \sum_k q_{nk} \log q_{nk} + N \log K,

with the KL analytic and the expectation handed to a gradient estimator:
``surrogate = est(f, logits, distribution=..., generator=...)`` with
:math:`f(z) = -\log p(x \mid z)` per example.

Evaluation uses exact (one-hot) samples: the negative ELBO, and the importance-weighted bound
(Burda et al., 2016)

.. math:: \mathcal{L}_m(x) = \mathbb{E}\Big[\log \frac{1}{m} \sum_{i=1}^m
          \frac{p(x \mid z_i)\, p(z_i)}{q(z_i \mid x)}\Big], \quad z_i \sim q(z \mid x),
          \qquad \mathcal{L}_1 = \mathcal{L} \le \mathcal{L}_m \le \mathcal{L}_{m+1}
          \le \log p(x).

Numbers are reported as negative bounds in nats per example (lower is better).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discograd._validation import check_positive_int
from discograd.data.binarize import StaticSplits
from discograd.estimators._family import Family, make_family
from discograd.train import epoch_batches

__all__ = ["DiscreteVAE", "VAEExperiment", "mlp", "output_layer"]

LATENTS = ("categorical", "bernoulli")


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (none after the last)."""
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def output_layer(net: nn.Sequential) -> nn.Linear:
    """The last layer of an :func:`mlp` (a Linear; Sequential's indexing types it as Module)."""
    return cast(nn.Linear, net[-1])


class DiscreteVAE(nn.Module):
    """Encoder MLP -> latent logits, decoder MLP -> Bernoulli pixel logits.

    Args:
        x_dim: number of pixels D.
        n_latent: number of latent variables N.
        n_classes: classes K of each categorical latent (2 for ``latent="bernoulli"``).
        hidden: widths of the encoder's hidden layers; the decoder mirrors them.
        latent: ``"categorical"`` (logits (B, N, K), one-hot z) or ``"bernoulli"`` (logits
            (B, N), 0/1 z).
    """

    def __init__(
        self,
        x_dim: int,
        n_latent: int,
        n_classes: int = 2,
        hidden: Sequence[int] = (256, 128),
        latent: str = "categorical",
    ) -> None:
        super().__init__()
        for name, value, low in (("x_dim", x_dim, 1), ("n_latent", n_latent, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, got {latent!r}")
        if latent == "bernoulli":
            n_classes = 2
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        hidden = tuple(hidden)
        if any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be positive integers, got {hidden!r}")
        self.x_dim, self.n_latent, self.n_classes = x_dim, n_latent, n_classes
        self.hidden, self.latent = hidden, latent
        self.code_dim = n_latent * n_classes if latent == "categorical" else n_latent
        self.encoder = mlp((x_dim, *hidden, self.code_dim))
        self.decoder = mlp((self.code_dim, *reversed(hidden), x_dim))

    def config(self) -> Dict[str, Any]:
        return {
            "x_dim": self.x_dim,
            "n_latent": self.n_latent,
            "n_classes": self.n_classes,
            "hidden": list(self.hidden),
            "latent": self.latent,
        }

    def init_output_bias(self, mean: Tensor) -> None:
        """Set the decoder's output bias to logit(mean pixel): training starts from the right
        marginal intensities instead of spending its first steps finding them."""
        p = mean.clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            output_layer(self.decoder).bias.copy_(torch.log(p) - torch.log1p(-p))

    # -- the two networks ---------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Logits of q(z|x): (B, N, K) categorical, (B, N) Bernoulli."""
        out = self.encoder(x)
        return out.unflatten(-1, (self.n_latent, self.n_classes)) if self._cat else out

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits (..., D) for z of shape (..., N, K) or (..., N), exact or relaxed."""
        return self.decoder(z.flatten(-2) if self._cat else z)

    # -- densities ----------------------------------------------------------------------------

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) summed over pixels: x (B, D), z (..., B, N[, K]) -> (..., B)."""
        logits = self.decode(z)
        return -F.binary_cross_entropy_with_logits(
            logits, x.expand(logits.shape), reduction="none"
        ).sum(-1)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) of the uniform prior: -N log K for every z, shape z's batch shape."""
        batch = z.shape[:-2] if self._cat else z.shape[:-1]
        return z.new_full(batch, -self.n_latent * math.log(self.n_classes))

    def kl(self, logits: Tensor) -> Tensor:
        """KL(q(z|x) || uniform), analytic, per example: (B,)."""
        if self._cat:
            log_q = torch.log_softmax(logits, -1)
            return (log_q.exp() * log_q).sum((-2, -1)) + self.n_latent * math.log(self.n_classes)
        q = torch.sigmoid(logits)
        neg_entropy = q * F.logsigmoid(logits) + (1 - q) * F.logsigmoid(-logits)
        return neg_entropy.sum(-1) + self.n_latent * math.log(2.0)

    def family(self, logits: Tensor) -> Family:
        """q(z|x) behind discograd's sampling interface (exact samples and log-probabilities)."""
        return make_family(logits, self.latent, supported=LATENTS, name="DiscreteVAE")

    # -- training -----------------------------------------------------------------------------

    def loss(
        self, x: Tensor, estimator: nn.Module, generator: Optional[torch.Generator] = None
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Mean negative ELBO of the batch, with its reconstruction term through ``estimator``.

        Returns the scalar to minimise and its terms (``rec``: the estimator's estimate of
        E_q[-log p(x|z)], relaxed for relaxed estimators; ``kl``: analytic).
        """
        logits = self.encode(x)

        def f(z: Tensor) -> Tensor:  # (S, B, N[, K]) -> (S, B) per-example losses
            return -self.log_likelihood(x, z)

        rec = estimator(f, logits, distribution=self.latent, generator=generator)
        kl = self.kl(logits)
        loss = rec.mean() + kl.mean()
        return loss, {"rec": rec.detach().mean(), "kl": kl.detach().mean()}

    # -- evaluation (exact samples) -----------------------------------------------------------

    def neg_elbo(
        self, x: Tensor, generator: Optional[torch.Generator] = None, n_samples: int = 1
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """(-ELBO, reconstruction, KL) per example, (B,) each, with ``n_samples`` exact
        samples averaged in the reconstruction term and the KL analytic."""
        logits = self.encode(x)
        z = self.family(logits).sample(n_samples, generator)
        rec = -self.log_likelihood(x, z).mean(0)
        kl = self.kl(logits)
        return rec + kl, rec, kl

    def log_weights(
        self, x: Tensor, m: int, generator: Optional[torch.Generator] = None, chunk: int = 128
    ) -> Tensor:
        """log p(x|z_i) + log p(z_i) - log q(z_i|x) for m exact samples z_i ~ q: (m, B).

        Samples are decoded ``chunk`` at a time to bound memory."""
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be an integer >= 1, got {m!r}")
        q = self.family(self.encode(x))
        out = []
        for start in range(0, m, chunk):
            z = q.sample(min(chunk, m - start), generator)
            log_q = q.log_prob(z).sum(-1)  # rows (S, B, N) -> (S, B)
            out.append(self.log_likelihood(x, z) + self.log_prior(z) - log_q)
        return torch.cat(out, 0)

    def neg_iw_bound(
        self, x: Tensor, m: int, generator: Optional[torch.Generator] = None, chunk: int = 128
    ) -> Tensor:
        """-L_m per example, (B,): -(logsumexp_i log w_i - log m)."""
        log_w = self.log_weights(x, m, generator, chunk)
        return -(torch.logsumexp(log_w, 0) - math.log(m))

    # -- pictures -----------------------------------------------------------------------------

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Pixel probabilities (n, D) of the decoder at n draws from the uniform prior."""
        # The decoder's dtype as well as its device: float32 zeros would not multiply a
        # float64 or bfloat16 decoder's weights.
        weight = output_layer(self.decoder).weight
        shape = (n, self.n_latent) + ((self.n_classes,) if self._cat else ())
        logits = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        z = self.family(logits).sample(1, generator)[0]
        return torch.sigmoid(self.decode(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Pixel probabilities (B, D) decoded from the most probable z under q(z|x)."""
        logits = self.encode(x)
        if self._cat:
            z = F.one_hot(logits.argmax(-1), self.n_classes).to(logits.dtype)
        else:
            z = (logits > 0).to(logits.dtype)
        return torch.sigmoid(self.decode(z))

    @property
    def _cat(self) -> bool:
        return self.latent == "categorical"


class VAEExperiment(StaticSplits):
    """The VAE as an experiment for :func:`discograd.train.fit`.

    Training batches are dynamically binarized (x ~ Bernoulli(intensity), a new draw each
    epoch); evaluation splits are binarized once, with ``binarize_seed``, so that runs with
    different training seeds and estimators are compared on the same binary images.

    Args:
        data: a :class:`discograd.data.Splits` with intensities in [0, 1].
        model: the :class:`DiscreteVAE`.
        estimator: any registered estimator (an ``nn.Module``).
        iw_samples: m of the importance-weighted bound at evaluation (0 skips it).
        elbo_samples: exact samples averaged in the evaluation's reconstruction term.
        eval_batch_size: examples per evaluation chunk.
        settings: extra entries for :meth:`config_dict` (how the estimator was built, ...).
    """

    def __init__(
        self,
        data: Any,
        model: DiscreteVAE,
        estimator: nn.Module,
        *,
        iw_samples: int = 100,
        elbo_samples: int = 10,
        eval_batch_size: int = 500,
        binarize_seed: int = 0,
        settings: Optional[Dict[str, Any]] = None,
    ) -> None:
        if data.train.shape[-1] != model.x_dim:
            raise ValueError(
                f"data has {data.train.shape[-1]} pixels but the model's x_dim is {model.x_dim}"
            )
        if iw_samples < 0 or elbo_samples < 1:
            raise ValueError("iw_samples must be >= 0 and elbo_samples >= 1")
        # Checked here, not at the first evaluation: 0 would fail there (range step 0) and a
        # negative size would evaluate no example and report zeros.
        check_positive_int(eval_batch_size, name="eval_batch_size")
        self.data, self.model, self.estimator = data, model, estimator
        self.iw_samples, self.elbo_samples = iw_samples, elbo_samples
        self.eval_batch_size, self.binarize_seed = eval_batch_size, binarize_seed
        self.settings = dict(settings or {})

    def batches(self, batch_size: int, generator: torch.Generator):
        return epoch_batches(self.data.train, batch_size, generator, binarize=True)

    def loss(self, batch: Tensor, step: int, generator: torch.Generator):
        return self.model.loss(batch, self.estimator, generator)

    @torch.no_grad()
    def evaluate(self, split: str, generator: torch.Generator) -> Dict[str, float]:
        x_all = self.binarized(split)
        device = output_layer(self.model.decoder).weight.device
        sums = {"neg_elbo": 0.0, "rec": 0.0, "kl": 0.0, "neg_iw": 0.0}
        for start in range(0, x_all.shape[0], self.eval_batch_size):
            x = x_all[start : start + self.eval_batch_size].to(device)
            neg_elbo, rec, kl = self.model.neg_elbo(x, generator, self.elbo_samples)
            sums["neg_elbo"] += float(neg_elbo.sum())
            sums["rec"] += float(rec.sum())
            sums["kl"] += float(kl.sum())
            if self.iw_samples:
                neg_iw = self.model.neg_iw_bound(x, self.iw_samples, generator)
                sums["neg_iw"] += float(neg_iw.sum())
        n = x_all.shape[0]
        out = {k: v / n for k, v in sums.items()}
        if self.iw_samples:
            out["iw_samples"] = self.iw_samples
        else:
            del out["neg_iw"]
        return out

    def config_dict(self) -> Dict[str, Any]:
        return {
            "kind": "vae",
            "data": getattr(self.data, "name", "?"),
            "model": self.model.config(),
            "estimator": getattr(self.estimator, "name", type(self.estimator).__name__),
            "iw_samples": self.iw_samples,
            "elbo_samples": self.elbo_samples,
            "binarize_seed": self.binarize_seed,
            **self.settings,
        }
