r"""The semi-supervised generative model M2 (Kingma, Mohamed, Rezende & Welling, 2014), with
the class variable y either marginalized or sampled through a gradient estimator (Jang et al.,
2016, section 3.3).

Generative model: :math:`p(y) = 1/K`, :math:`p(z) = \mathcal{N}(0, I)`,
:math:`p(x \mid y, z) = \prod_d \mathrm{Bernoulli}(x_d; \sigma(\mathrm{dec}(z, y)_d))`.
Inference: a classifier :math:`q(y \mid x) = \mathrm{Cat}(\mathrm{softmax}(\mathrm{cls}(x)))` and
:math:`q(z \mid x, y) = \mathcal{N}(\mu(x, y), \mathrm{diag}\,\sigma^2(x, y))`, reparameterized.

Labeled example (the class is observed), eq. (8) of Jang et al.:

.. math:: \mathcal{L}(x, y) = \mathbb{E}_{q(z|x,y)}[-\log p(x \mid y, z)]
          + \mathrm{KL}(q(z \mid x, y) \,\|\, p(z)) - \log p(y).

Unlabeled example, eqs. (9)-(10):

.. math:: \mathcal{U}(x) = \sum_y q(y \mid x)\, \mathcal{L}(x, y) - \mathcal{H}(q(y \mid x))
          = \mathbb{E}_{q(y|x)}\big[\mathcal{L}'(x, y)\big] + \mathrm{KL}(q(y \mid x) \,\|\, p(y)),

with :math:`\mathcal{L}' = \mathcal{L} + \log p(y)`. The expectation over y is handed to an
estimator, ``est(f, logits_y)`` with :math:`f(y) = \mathcal{L}'(x, y)`: the ``exact`` estimator
enumerates the K classes, which IS Kingma et al.'s marginalization (K evaluations of the
encoder and decoder per example); Gumbel-softmax and ST Gumbel-softmax evaluate them once at a
sampled (relaxed) y. The KL over y is analytic. Objective (eq. 11), batch means:

.. math:: \mathcal{J} = \overline{\mathcal{L}(x_l, y_l)} + \overline{\mathcal{U}(x_u)}
          + \alpha\, \overline{-\log q(y_l \mid x_l)}.

The Gaussian noise :math:`\epsilon` of z is drawn once per example and shared by every value
of y (common random numbers): each class's term stays an unbiased single-sample estimate, and
the marginalized loss is exactly :math:`\sum_y q(y|x) \mathcal{L}(x, y; \epsilon) -
\mathcal{H}` at that :math:`\epsilon`.

Evaluation reports the accuracy of :math:`\arg\max_y q(y \mid x)` and the negative bound
:math:`\mathcal{U}(x)` with y marginalized exactly (whatever estimator trained the model), so
the numbers of different estimators are comparable.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discograd import distributed
from discograd._validation import check_positive_int
from discograd.data.binarize import StaticSplits
from discograd.models.vae import mlp, output_layer

__all__ = ["M2", "SemiSupervisedExperiment", "class_labels", "labeled_subset"]


class M2(nn.Module):
    """Classifier q(y|x), encoder q(z|x,y), decoder p(x|y,z): MLPs with ReLU.

    Args:
        x_dim: pixels D.
        n_classes: classes K of y.
        z_dim: dimension of the Gaussian latent z.
        hidden: hidden widths of the classifier and encoder (the decoder mirrors them).
    """

    def __init__(
        self, x_dim: int, n_classes: int, z_dim: int = 32, hidden: Sequence[int] = (256,)
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("x_dim", x_dim, 1),
            ("n_classes", n_classes, 2),
            ("z_dim", z_dim, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        hidden = tuple(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be positive integers, got {hidden!r}")
        self.x_dim, self.n_classes, self.z_dim, self.hidden = x_dim, n_classes, z_dim, hidden
        self.classifier = mlp((x_dim, *hidden, n_classes))
        self.encoder = mlp((x_dim + n_classes, *hidden, 2 * z_dim))
        self.decoder = mlp((z_dim + n_classes, *reversed(hidden), x_dim))

    def config(self) -> Dict[str, Any]:
        return {
            "x_dim": self.x_dim,
            "n_classes": self.n_classes,
            "z_dim": self.z_dim,
            "hidden": list(self.hidden),
        }

    def init_output_bias(self, mean: Tensor) -> None:
        """Decoder output bias = logit(mean pixel)."""
        p = mean.clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            output_layer(self.decoder).bias.copy_(torch.log(p) - torch.log1p(-p))

    # -- terms --------------------------------------------------------------------------------

    def class_logits(self, x: Tensor) -> Tensor:
        """Logits of q(y | x): (B, K)."""
        return self.classifier(x)

    def noise(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Standard normal noise eps for z = mu + sigma * eps: (B, z_dim)."""
        shape = (x.shape[0], self.z_dim)
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)

    def neg_elbo_given_y(self, x: Tensor, y: Tensor, eps: Tensor) -> Tensor:
        r""":math:`\mathcal{L}'(x, y) = -\log p(x|y,z) + \mathrm{KL}(q(z|x,y) \| p(z))` at
        :math:`z = \mu + \sigma\epsilon`.

        x: (B, D); y: (..., B, K) one-hot or relaxed; eps: (B, z_dim). Returns (..., B).
        """
        batch = y.shape[:-1]
        h = torch.cat([x.expand(batch + x.shape[-1:]), y], -1)
        mu, log_var = self.encoder(h).chunk(2, -1)
        z = mu + torch.exp(0.5 * log_var) * eps
        logits = self.decoder(torch.cat([z, y], -1))
        rec = F.binary_cross_entropy_with_logits(
            logits, x.expand(logits.shape), reduction="none"
        ).sum(-1)
        kl = 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).sum(-1)
        return rec + kl

    def kl_y(self, logits: Tensor) -> Tensor:
        """KL(q(y|x) || uniform) = sum_y q log q + log K, per example: (B,)."""
        log_q = torch.log_softmax(logits, -1)
        return (log_q.exp() * log_q).sum(-1) + math.log(self.n_classes)

    def labeled_loss(self, x: Tensor, y: Tensor, eps: Tensor) -> Tensor:
        """L(x, y) per example, (B,); y holds class indices (B,)."""
        one_hot = F.one_hot(y, self.n_classes).to(x.dtype)
        return self.neg_elbo_given_y(x, one_hot, eps) + math.log(self.n_classes)

    def unlabeled_loss(
        self,
        x: Tensor,
        estimator: nn.Module,
        eps: Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[Tensor, Tensor]:
        """(U(x) per example with E_q(y|x) through ``estimator``, the logits of q(y|x))."""
        logits = self.class_logits(x)

        def f(y: Tensor) -> Tensor:  # (S, B, K) -> (S, B)
            return self.neg_elbo_given_y(x, y, eps)

        expected = estimator(f, logits, distribution="categorical", generator=generator)
        return expected + self.kl_y(logits), logits

    def marginal_loss(self, x: Tensor, eps: Tensor) -> Tensor:
        """U(x) with y summed over every class in one batched pass, (B,) (no estimator)."""
        logits = self.class_logits(x)
        classes = torch.eye(self.n_classes, dtype=x.dtype, device=x.device)  # (K, K)
        ys = classes.unsqueeze(1).expand(self.n_classes, x.shape[0], self.n_classes)
        per_class = self.neg_elbo_given_y(x, ys, eps)  # (K, B)
        q = torch.softmax(logits, -1).transpose(0, 1)
        return (q * per_class).sum(0) + self.kl_y(logits)


# ---------------------------------------------------------------------------------------------
# Labels and the labeled subset.


def class_labels(digits: Tensor, n_classes: int, seed: int = 0) -> Tensor:
    """Labels with ``n_classes`` classes from digit labels 0-9.

    10: the digits. A multiple of 10, 10 b: the pair (digit, bucket) as digit * b + bucket, the
    bucket drawn uniformly from 0..b-1 for each image once (seeded), so the classes are real
    digits split into b random sub-classes; the best achievable accuracy is the digit accuracy
    divided by b. (Jang et al. measured the speed at 100 classes on random labels; pairs keep
    a learnable part.)
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 10:
        raise ValueError(f"n_classes must be 10 or a multiple of 10, got {n_classes!r}")
    if n_classes % 10:
        raise ValueError(f"n_classes must be 10 or a multiple of 10, got {n_classes}")
    if digits.numel() and (int(digits.min()) < 0 or int(digits.max()) > 9):
        raise ValueError("the data's labels must be digits 0-9 to build classes from them")
    buckets = n_classes // 10
    if buckets == 1:
        return digits.clone()
    gen = torch.Generator().manual_seed(seed)
    bucket = torch.randint(0, buckets, digits.shape, generator=gen)
    return digits * buckets + bucket


def labeled_subset(labels: Tensor, n_labeled: int, n_classes: int, seed: int = 0) -> Tensor:
    """Indices of ``n_labeled`` examples spread evenly over the classes (as the paper's 10 per
    digit), the remainder given to the first classes; seeded."""
    if n_labeled < 1 or n_labeled >= labels.numel():
        raise ValueError(f"n_labeled must be in [1, {labels.numel()}), got {n_labeled}")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(n_classes):
        want = n_labeled // n_classes + (1 if c < n_labeled % n_classes else 0)
        members = (labels == c).nonzero().flatten()
        if want > members.numel():
            raise ValueError(f"class {c} has {members.numel()} examples, {want} were wanted")
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:want]])
    return torch.cat(chosen).sort().values


class SemiSupervisedExperiment(StaticSplits):
    """M2 as an experiment for :func:`discograd.train.fit`.

    Each step sees one batch of unlabeled images (an epoch runs over them, dynamically
    binarized) and a batch of labeled ones drawn with replacement from the small labeled set.
    Evaluation binarizes each split once with ``binarize_seed``.

    Args:
        data: a :class:`discograd.data.Splits` with digit labels.
        model: the :class:`M2`.
        estimator: the estimator of E_q(y|x) on unlabeled data (``exact``: marginalization).
        n_labeled: labeled training examples, spread evenly over the classes.
        alpha: weight of the classification loss -log q(y_l | x_l).
        label_seed: seed of the labeled subset and of the buckets of :func:`class_labels`.
        settings: extra entries for :meth:`config_dict`.
    """

    def __init__(
        self,
        data: Any,
        model: M2,
        estimator: nn.Module,
        *,
        n_labeled: int = 100,
        alpha: float = 1.0,
        label_seed: int = 0,
        binarize_seed: int = 0,
        eval_batch_size: int = 250,
        settings: Optional[Dict[str, Any]] = None,
    ) -> None:
        if data.train.shape[-1] != model.x_dim:
            raise ValueError(f"data has {data.train.shape[-1]} pixels, model x_dim {model.x_dim}")
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
        # Here, not at the first evaluation (0: range step 0; negative: no example, zeros).
        check_positive_int(eval_batch_size, name="eval_batch_size")
        self.data, self.model, self.estimator = data, model, estimator
        self.alpha, self.label_seed, self.binarize_seed = alpha, label_seed, binarize_seed
        self.eval_batch_size = eval_batch_size
        self.settings = dict(settings or {})
        self.labels = {
            s: class_labels(getattr(data, f"{s}_labels"), model.n_classes, label_seed + i)
            for i, s in enumerate(("train", "valid", "test"))
        }
        labeled = labeled_subset(self.labels["train"], n_labeled, model.n_classes, label_seed)
        mask = torch.ones(data.train.shape[0], dtype=torch.bool)
        mask[labeled] = False
        self.n_labeled = n_labeled
        self.x_labeled, self.y_labeled = data.train[labeled], self.labels["train"][labeled]
        self.x_unlabeled = data.train[mask]

    def batches(self, batch_size: int, generator: torch.Generator):
        order = torch.randperm(self.x_unlabeled.shape[0], generator=generator)
        n_l = min(batch_size, self.n_labeled)
        for start in range(0, order.numel(), batch_size):
            x_u = torch.bernoulli(
                self.x_unlabeled[order[start : start + batch_size]], generator=generator
            )
            pick = torch.randint(0, self.n_labeled, (n_l,), generator=generator)
            x_l = torch.bernoulli(self.x_labeled[pick], generator=generator)
            yield {"x_l": x_l, "y_l": self.y_labeled[pick], "x_u": x_u}

    def shard_batch(
        self, batch: Dict[str, Tensor], rank: int, world_size: int
    ) -> Tuple[Dict[str, Any], float]:
        r"""Rank ``rank``'s share of a batch when ``world_size`` processes train together.

        The objective is a sum of means over two parts of different sizes,
        :math:`\mathcal{J} = \frac{1}{n_l}\sum_l (\mathcal{L}_i + \alpha\,\mathrm{CE}_i) +
        \frac{1}{n_u}\sum_u \mathcal{U}_j`, so the trainer's one weight per rank
        (:func:`discograd.distributed.shard`) cannot make the ranks' average its gradient. Each
        part is split among the N ranks on its own, and rank r's loss (:meth:`loss`) is
        :math:`\frac{N}{n_l}\sum_{l_r}(\mathcal{L}_i + \alpha\,\mathrm{CE}_i) +
        \frac{N}{n_u}\sum_{u_r}\mathcal{U}_j`, so that :math:`\frac1N\sum_r \mathcal{J}_r =
        \mathcal{J}` for any shares: the average DistributedDataParallel takes of the gradients
        is :math:`\nabla\mathcal{J}`. A part with fewer rows than ranks leaves some ranks no
        share: those get the whole part with factor 0, so that they still run the forward and
        backward the gradient average waits for (an empty share's mean would be NaN).
        """
        if world_size == 1:
            return batch, 1.0
        labeled, w_l = distributed.shard(
            {"x_l": batch["x_l"], "y_l": batch["y_l"]}, rank, world_size
        )
        (x_u,), w_u = distributed.shard((batch["x_u"],), rank, world_size)
        # w = N n_r / n (0 for no share): the factor of the share's sum is w / n_r = N / n.
        return {
            **labeled,
            "x_u": x_u,
            "scale_l": w_l / labeled["x_l"].shape[0],
            "scale_u": w_u / x_u.shape[0],
        }, 1.0

    def loss(self, batch: Dict[str, Any], step: int, generator: torch.Generator):
        model = self.model
        x_l, y_l, x_u = batch["x_l"], batch["y_l"], batch["x_u"]
        labeled = model.labeled_loss(x_l, y_l, model.noise(x_l, generator))
        unlabeled, _ = model.unlabeled_loss(
            x_u, self.estimator, model.noise(x_u, generator), generator
        )
        logits = model.class_logits(x_l)
        if "scale_u" in batch:  # a rank's share (shard_batch): scaled sums
            s_l, s_u = batch["scale_l"], batch["scale_u"]
            labeled, unlabeled = s_l * labeled.sum(), s_u * unlabeled.sum()
            ce = s_l * F.cross_entropy(logits, y_l, reduction="sum")
        else:  # the whole batch: means
            labeled, unlabeled = labeled.mean(), unlabeled.mean()
            ce = F.cross_entropy(logits, y_l)
        # Logged: the batch means, or this rank's terms, which the trainer averages into them.
        return labeled + unlabeled + self.alpha * ce, {
            "labeled": labeled.detach(),
            "unlabeled": unlabeled.detach(),
            "ce": ce.detach(),
        }

    @torch.no_grad()
    def evaluate(self, split: str, generator: torch.Generator) -> Dict[str, float]:
        x_all, y_all = self.binarized(split), self.labels[split]
        device = output_layer(self.model.decoder).weight.device
        buckets = self.model.n_classes // 10
        correct = digit_correct = bound = 0.0
        for i in range(0, x_all.shape[0], self.eval_batch_size):
            x = x_all[i : i + self.eval_batch_size].to(device)
            y = y_all[i : i + self.eval_batch_size].to(device)
            pred = self.model.class_logits(x).argmax(-1)
            correct += float((pred == y).sum())
            digit_correct += float((pred // buckets == y // buckets).sum())
            bound += float(self.model.marginal_loss(x, self.model.noise(x, generator)).sum())
        n = x_all.shape[0]
        out = {"accuracy": correct / n, "neg_elbo": bound / n}
        if buckets > 1:
            out["digit_accuracy"] = digit_correct / n
        return out

    def config_dict(self) -> Dict[str, Any]:
        return {
            "kind": "semisup",
            "data": getattr(self.data, "name", "?"),
            "model": self.model.config(),
            "estimator": getattr(self.estimator, "name", type(self.estimator).__name__),
            "n_labeled": self.n_labeled,
            "alpha": self.alpha,
            "label_seed": self.label_seed,
            "binarize_seed": self.binarize_seed,
            **self.settings,
        }
