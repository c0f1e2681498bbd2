r"""A stochastic binary network for structured output prediction (Raiko et al., 2014; Gu et al.,
2016; Jang et al., 2016, section 4.1): predict the lower half of a digit from its upper half.

Model, with L stochastic layers (the paper: L = 2) and linear maps between them::

    x_upper -> h_1 ~ q(h_1 | x_upper) -> h_2 ~ p(h_2 | h_1) -> ... -> x_lower ~ p(x_lower | h_L)

Each layer is N Bernoulli units (logits W h + b; the paper's 392-200-200-392) or N categorical
variables of K classes (one-hot, flattened to N K inputs of the next map; 392-(20x10)-(20x10)-392).

Training minimises the single-sample objective of the paper,

.. math:: \mathcal{J}(x) = \mathbb{E}_{h \sim p(h \mid x_u)}\big[-\log p(x_l \mid h_L)\big]
          \;\ge\; -\log p(x_l \mid x_u),

with the chosen estimator called on EVERY stochastic layer. The layers compose by nesting: the
estimator of layer 1 gets the loss

.. math:: f_1(h_1) = \mathrm{est}_2\big(f_2, \mathrm{logits}_2(h_1)\big), \quad \dots, \quad
          f_L(h_L) = -\log p(x_l \mid h_L),

whose value is the Monte Carlo estimate of :math:`\mathbb{E}[f_2 \mid h_1]` and whose gradient
(in h_1, through the logits of layer 2, and in the parameters) is layer 2's estimator. This is
valid because every discograd surrogate is a DiCE-style tensor: value = the estimate, gradient =
the estimator's gradient. For a score-function estimator on layer 1 the learning signal is the
value of :math:`f_1`, i.e. the loss at the downstream samples; a pathwise estimator (ST,
Gumbel-softmax, ...) on layer 1 differentiates :math:`f_1` in h_1, which gives layer 2's
estimate of :math:`\partial_{h_1}\mathbb{E}[f_2 \mid h_1]`. With unbiased estimators on every
layer the whole gradient is unbiased (the tests check this against exact enumeration). Each layer
has its own estimator instance (:class:`PerLayer`), so baselines, control variates and running
statistics are not shared between layers. Cost: the product of the layers' evaluations of f
(e.g. 3 x 3 for REBAR, 2 x 2 for ARM pairs).

Evaluation uses exact samples through the generative path and the m-sample estimate

.. math:: \widehat{\mathrm{NLL}}_m(x) = -\log \frac1m \sum_{i=1}^m p(x_l \mid h^{(i)}_L),
          \qquad h^{(i)} \sim p(h \mid x_u),

whose expectation decreases with m towards :math:`-\log p(x_l \mid x_u)` (Burda et al., 2016,
with the prior as proposal); m = 1000 in the paper. Small models can be enumerated exactly
(:meth:`StochasticBinaryNetwork.exact_nll`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discograd._validation import check_positive_int
from discograd.data.binarize import StaticSplits
from discograd.train import epoch_batches

__all__ = ["PerLayer", "SBNExperiment", "StochasticBinaryNetwork", "configurations", "split_halves"]

LATENTS = ("bernoulli", "categorical")


def split_halves(x: Tensor, image_shape: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """(upper, lower) halves of flat images x (..., H*W): the first floor(H/2) rows, the rest."""
    h, w = image_shape
    if x.shape[-1] != h * w:
        raise ValueError(f"x has {x.shape[-1]} pixels, image_shape {image_shape} has {h * w}")
    if h < 2:
        raise ValueError(f"image_shape must have at least 2 rows, got {image_shape}")
    cut = (h // 2) * w
    return x[..., :cut], x[..., cut:]


def configurations(n_latent: int, n_classes: int, latent: str) -> Tensor:
    """Every value of one layer, flattened as the next map sees it: (C, code_dim).

    Bernoulli: the 2^N binary vectors; categorical: the K^N concatenations of N one-hots.
    """
    k = 2 if latent == "bernoulli" else n_classes
    codes = torch.arange(k**n_latent)
    powers = k ** torch.arange(n_latent - 1, -1, -1)
    digits = (codes.unsqueeze(-1) // powers) % k  # (C, N), most significant first
    if latent == "bernoulli":
        return digits.to(torch.get_default_dtype())
    return F.one_hot(digits, k).flatten(-2).to(torch.get_default_dtype())


class PerLayer(nn.Module):
    """One estimator per stochastic layer, stepped together (temperature schedules).

    ``name`` is the estimators' registry name; ``temperature()`` exists when theirs does (the
    trainer logs it).
    """

    def __init__(self, estimators: Sequence[nn.Module]) -> None:
        super().__init__()
        if not estimators:
            raise ValueError("estimators must hold one estimator per layer, got none")
        self.layers = nn.ModuleList(estimators)
        self.name = getattr(estimators[0], "name", type(estimators[0]).__name__)
        first = getattr(estimators[0], "temperature", None)
        if callable(first):
            self.temperature = first

    def __getitem__(self, index: int) -> nn.Module:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def step(self) -> None:
        for est in self.layers:
            est_step = getattr(est, "step", None)
            if callable(est_step):
                est_step()


class StochasticBinaryNetwork(nn.Module):
    """x_in -> L stochastic layers -> Bernoulli pixels of x_out, linear maps in between.

    Args:
        in_dim: pixels of the input (upper half), 392 for MNIST.
        out_dim: pixels of the output (lower half).
        n_latent: units per layer: N Bernoulli units, or N categorical variables.
        n_classes: K classes of each categorical variable (ignored for Bernoulli).
        n_layers: stochastic layers L (the paper: 2).
        latent: ``"bernoulli"`` or ``"categorical"``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        n_latent: int = 200,
        n_classes: int = 10,
        n_layers: int = 2,
        latent: str = "bernoulli",
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("n_latent", n_latent),
            ("n_layers", n_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, got {latent!r}")
        if latent == "bernoulli":
            n_classes = 2
        elif isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        self.in_dim, self.out_dim, self.n_layers = in_dim, out_dim, n_layers
        self.n_latent, self.n_classes, self.latent = n_latent, n_classes, latent
        self.code_dim = n_latent if latent == "bernoulli" else n_latent * n_classes
        sizes = [in_dim] + [self.code_dim] * n_layers
        self.maps = nn.ModuleList(nn.Linear(a, self.code_dim) for a in sizes[:-1])
        self.out = nn.Linear(self.code_dim, out_dim)

    def config(self) -> Dict[str, Any]:
        return {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "n_latent": self.n_latent,
            "n_classes": self.n_classes,
            "n_layers": self.n_layers,
            "latent": self.latent,
        }

    def describe(self) -> str:
        """The paper's notation: 392-200-200-392 or 392-(20x10)-(20x10)-392."""
        unit = (
            str(self.n_latent)
            if self.latent == "bernoulli"
            else f"({self.n_latent}x{self.n_classes})"
        )
        return "-".join([str(self.in_dim)] + [unit] * self.n_layers + [str(self.out_dim)])

    def init_output_bias(self, mean: Tensor) -> None:
        """Output bias = logit(mean lower-half pixel): training starts from the marginals."""
        p = mean.clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            self.out.bias.copy_(torch.log(p) - torch.log1p(-p))

    # -- pieces -------------------------------------------------------------------------------

    def logits(self, level: int, h: Tensor) -> Tensor:
        """Logits of layer ``level`` (0-based) given its input h (..., in): (..., N[, K])."""
        out = self.maps[level](h)
        return out.unflatten(-1, (self.n_latent, self.n_classes)) if self._cat else out

    def code(self, z: Tensor) -> Tensor:
        """A layer's sample (..., N[, K]) as the next map's input (..., code_dim)."""
        return z.flatten(-2) if self._cat else z

    def log_likelihood(self, x_out: Tensor, code: Tensor) -> Tensor:
        """log p(x_out | h_L) summed over pixels: x_out (B, D), code (..., B, code) -> (..., B)."""
        logits, target = torch.broadcast_tensors(self.out(code), x_out)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    # -- training -----------------------------------------------------------------------------

    def loss(
        self,
        x_in: Tensor,
        x_out: Tensor,
        estimators: Union[Sequence[nn.Module], PerLayer],
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Per-example surrogate of E[-log p(x_out | h)], (B,): every layer through its estimator.

        ``estimators[l]`` differentiates layer l; the loss it sees is the surrogate of the layers
        below it (see the module docstring).
        """
        if len(estimators) != self.n_layers:
            raise ValueError(
                f"estimators must hold one estimator per layer ({self.n_layers}), "
                f"got {len(estimators)}"
            )

        def layer(level: int, h: Tensor) -> Tensor:
            last = level + 1 == self.n_layers

            def f(z: Tensor) -> Tensor:  # (S, ..., B, N[, K]) -> (S, ..., B)
                code = self.code(z)
                return -self.log_likelihood(x_out, code) if last else layer(level + 1, code)

            est = estimators[level]
            return est(f, self.logits(level, h), distribution=self.latent, generator=generator)

        return layer(0, x_in)

    # -- evaluation (exact samples) -----------------------------------------------------------

    @torch.no_grad()
    def sample_codes(self, x_in: Tensor, m: int, generator: Optional[torch.Generator]) -> Tensor:
        """h_L for m exact draws h ~ p(h | x_in) through every layer: (m, B, code_dim)."""
        first = self.logits(0, x_in)
        z = self._draw(first.expand((m,) + first.shape), generator)
        for level in range(1, self.n_layers):
            z = self._draw(self.logits(level, self.code(z)), generator)
        return self.code(z)

    def _draw(self, logits: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """One exact draw per row by inversion, one uniform per unit.

        Evaluation draws ~10^6 samples; inversion is 5-8x faster here than the samplers the
        estimators use (which stay exact for probabilities below float32's 2^-24 resolution);
        the difference, at most 2^-24 of probability per unit, is far below the Monte Carlo
        error of any likelihood estimate.
        """
        if self._cat:
            cdf = torch.softmax(logits, -1).cumsum(-1)
            u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device)
            index = (u > cdf).sum(-1).clamp_max(self.n_classes - 1)
            return F.one_hot(index, self.n_classes).to(logits.dtype)
        u = torch.rand(logits.shape, generator=generator, device=logits.device)
        return (u < torch.sigmoid(logits)).to(logits.dtype)

    @torch.no_grad()
    def log_likelihood_samples(
        self,
        x_in: Tensor,
        x_out: Tensor,
        m: int,
        generator: Optional[torch.Generator] = None,
        chunk: int = 100,
    ) -> Tensor:
        """log p(x_out | h^(i)), m exact draws h^(i) ~ p(h | x_in): (m, B), ``chunk`` at a time."""
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be an integer >= 1, got {m!r}")
        out = []
        for start in range(0, m, chunk):
            code = self.sample_codes(x_in, min(chunk, m - start), generator)
            out.append(self.log_likelihood(x_out, code))
        return torch.cat(out, 0)

    def nll(
        self,
        x_in: Tensor,
        x_out: Tensor,
        m: int,
        generator: Optional[torch.Generator] = None,
        chunk: int = 100,
    ) -> Tensor:
        """The m-sample estimate -log (1/m) sum_i p(x_out | h^(i)) per example, (B,)."""
        log_lik = self.log_likelihood_samples(x_in, x_out, m, generator, chunk)
        return -(torch.logsumexp(log_lik, 0) - math.log(m))

    @torch.no_grad()
    def exact_nll(self, x_in: Tensor, x_out: Tensor, max_configurations: int = 4096) -> Tensor:
        """-log p(x_out | x_in) by enumerating every layer's configurations, (B,).

        Forward algorithm over the chain: a_1(h_1) = log p(h_1 | x_in),
        a_{l+1}(h_{l+1}) = logsumexp_{h_l} [a_l(h_l) + log p(h_{l+1} | h_l)], and
        -log p(x_out | x_in) = -logsumexp_{h_L} [a_L(h_L) + log p(x_out | h_L)].
        """
        count = self.n_classes**self.n_latent
        if count > max_configurations:
            raise ValueError(
                f"a layer has {count} configurations, above max_configurations="
                f"{max_configurations}; exact_nll is for small models"
            )
        configs = configurations(self.n_latent, self.n_classes, self.latent).to(x_in)
        a = self._log_prob_table(self.logits(0, x_in), configs)  # (B, C)
        for level in range(1, self.n_layers):
            trans = self._log_prob_table(self.logits(level, configs), configs)  # (C, C)
            a = torch.logsumexp(a.unsqueeze(-1) + trans, dim=-2)
        log_lik = self.log_likelihood(x_out, configs.unsqueeze(-2))  # (C, B)
        return -torch.logsumexp(a + log_lik.transpose(0, 1), dim=-1)

    def _log_prob_table(self, logits: Tensor, configs: Tensor) -> Tensor:
        """log p(h = c) for logits (P, N[, K]) and configurations c (C, code_dim): (P, C)."""
        if self._cat:
            return torch.log_softmax(logits, -1).flatten(-2) @ configs.T
        return F.logsigmoid(logits) @ configs.T + F.logsigmoid(-logits) @ (1 - configs).T

    @torch.no_grad()
    def complete(self, x_in: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Pixel probabilities of the lower half at one exact draw h ~ p(h | x_in): (B, D_out)."""
        return torch.sigmoid(self.out(self.sample_codes(x_in, 1, generator)[0]))

    @property
    def _cat(self) -> bool:
        return self.latent == "categorical"


class SBNExperiment(StaticSplits):
    """The SBN as an experiment for :func:`discograd.train.fit`.

    Images are binarized (``binarization="static"``: one draw with ``binarize_seed``, the
    paper's fixed binarization; ``"dynamic"``: a new draw of the training images every epoch;
    evaluation images are always the fixed draw) and cut into halves: the upper
    floor(H/2) rows are the input, the rest the output.

    Args:
        data: a :class:`discograd.data.Splits` of intensities in [0, 1].
        model: the :class:`StochasticBinaryNetwork`.
        estimator: a :class:`PerLayer` (or a sequence of estimators), one per stochastic layer.
        eval_samples: m of the m-sample NLL at evaluation (the paper: 1000).
        eval_batch_size: examples per evaluation chunk.
        settings: extra entries for :meth:`config_dict`.
    """

    def __init__(
        self,
        data: Any,
        model: StochasticBinaryNetwork,
        estimator: Union[PerLayer, Sequence[nn.Module]],
        *,
        eval_samples: int = 1000,
        eval_batch_size: int = 200,
        binarization: str = "static",
        binarize_seed: int = 0,
        settings: Optional[Dict[str, Any]] = None,
    ) -> None:
        if not isinstance(estimator, PerLayer):
            estimator = PerLayer(list(estimator))
        if len(estimator) != model.n_layers:
            raise ValueError(f"estimator has {len(estimator)} layers, the model {model.n_layers}")
        upper, lower = split_halves(data.train[:1], data.image_shape)
        if (upper.shape[-1], lower.shape[-1]) != (model.in_dim, model.out_dim):
            raise ValueError(
                f"the data's halves have {upper.shape[-1]} and {lower.shape[-1]} pixels; the "
                f"model expects {model.in_dim} and {model.out_dim}"
            )
        if binarization not in ("static", "dynamic"):
            raise ValueError(f"binarization must be 'static' or 'dynamic', got {binarization!r}")
        if eval_samples < 1:
            raise ValueError(f"eval_samples must be >= 1, got {eval_samples}")
        # Here, not at the first evaluation (0: range step 0; negative: no example, zeros).
        check_positive_int(eval_batch_size, name="eval_batch_size")
        self.data, self.model, self.estimator = data, model, estimator
        self.eval_samples, self.eval_batch_size = eval_samples, eval_batch_size
        self.binarization, self.binarize_seed = binarization, binarize_seed
        self.settings = dict(settings or {})

    def batches(self, batch_size: int, generator: torch.Generator):
        if self.binarization == "dynamic":
            return epoch_batches(self.data.train, batch_size, generator, binarize=True)
        return epoch_batches(self.binarized("train"), batch_size, generator)

    def loss(self, batch: Tensor, step: int, generator: torch.Generator):
        x_in, x_out = split_halves(batch, self.data.image_shape)
        surrogate = self.model.loss(x_in, x_out, self.estimator, generator)
        return surrogate.mean(), {}

    @torch.no_grad()
    def evaluate(self, split: str, generator: torch.Generator) -> Dict[str, float]:
        x_all = self.binarized(split)
        device = self.model.out.weight.device
        nll, nll_1 = 0.0, 0.0
        for i in range(0, x_all.shape[0], self.eval_batch_size):
            x_in, x_out = split_halves(
                x_all[i : i + self.eval_batch_size].to(device), self.data.image_shape
            )
            log_lik = self.model.log_likelihood_samples(x_in, x_out, self.eval_samples, generator)
            nll -= float((torch.logsumexp(log_lik, 0) - math.log(log_lik.shape[0])).sum())
            nll_1 -= float(log_lik.mean(0).sum())
        n = x_all.shape[0]
        return {"nll": nll / n, "nll_1": nll_1 / n, "eval_samples": self.eval_samples}

    def config_dict(self) -> Dict[str, Any]:
        return {
            "kind": "sbn",
            "data": getattr(self.data, "name", "?"),
            "model": self.model.config(),
            "estimator": self.estimator.name,
            "eval_samples": self.eval_samples,
            "binarization": self.binarization,
            "binarize_seed": self.binarize_seed,
            **self.settings,
        }
