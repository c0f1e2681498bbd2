r"""A GAN over discrete sequences (the seeds' Algorithm 1), trained with any gradient estimator.

Generator :math:`G_\theta`: an LSTM that emits one token per step from V classes. At step t its
logits :math:`\mu_t` give a token :math:`y_t`, fed back (through a linear embedding, so relaxed
vectors work too) as the next input. There is no noise vector: all randomness is in the token
draws, so :math:`p_\theta(x) = \prod_t \mathrm{softmax}(\mu_t)[x_t]` is explicit, which the
score-function estimators need and which gives the generator's likelihood of held-out data.

Discriminator :math:`D_\phi`: a 1-D CNN (kernel widths 2, 3, 4, max over time) or an LSTM over
one-hot or relaxed token vectors (L, V), giving a logit :math:`d(x)`,
:math:`D = \sigma(d)`.

Training alternates, at every step of :func:`discograd.train.fit`:

1. discriminator (``d_steps`` times):
   :math:`\min_\phi -\big[\frac1m\sum \log D(x) + \frac1n\sum \log(1 - D(G(z)))\big]`,
   with fake sequences drawn as the generator step draws them (below), detached;
2. generator: :math:`\min_\theta \mathbb{E}[\ell(d(G))]` with the seeds'
   :math:`\ell = -\log\frac{D}{1 - D} = -d` (``g_loss="logit"``), or the non-saturating
   :math:`\ell = -\log D` (``"nonsaturating"``).

How the estimator differentiates :math:`\mathbb{E}[\ell]`, by kind:

- pathwise (``gumbel-softmax``, ``st-gumbel-softmax``, ``gumbel-rao``, ``reinmax``, ``st``): the
  estimator is called once per step on that step's logits with ``f`` a *capture* function that
  records the sample it is given (one-hot or relaxed, carrying the estimator's gradient path to
  the logits) and returns zeros; the surrogate is discarded and the captured sample is fed back
  into the LSTM and, stacked over steps, to D. The loss is then an ordinary function of the
  stacked samples, so each estimator's backward rule (relaxation, straight-through, Rao-
  Blackwellised Jacobian, ReinMax's Heun step) applies per step, with the gradient flowing
  through the fed-back samples into earlier steps, as in Kusner & Hernandez-Lobato (2016).
- score function (``reinforce``, ``rloo``): the whole sequence is one draw of
  :class:`SequenceDistribution`, a ``torch.distributions.Distribution`` over token sequences
  whose ``log_prob`` is :math:`\log p_\theta(x)`; the estimator gets it as its input and
  :math:`f(x) = \ell(d(\mathrm{onehot}(x)))` as the loss, i.e. SeqGAN-style REINFORCE with the
  discriminator's score as the (negative) reward for the whole sequence (no per-token
  roll-outs). With the discriminator's minibatch feature (below) a sequence's reward also
  depends, through the batch spread, on the other sequences of its batch; these estimators
  credit each reward to its own sequence only and neglect that dependence, an O(1/batch)
  effect.

Mode collapse. Without help, a Gumbel-softmax generator tends to collapse onto a few short
strings the grammar accepts (in one run, 2,000 steps: ``x`` alone, padded, 2 distinct
sequences among 1,000). The discriminator therefore also sees, by default, the minibatch
standard deviation of its features (Karras et al., 2018), which is zero for a collapsed batch.
Training still oscillates between few grammatical strings and many ungrammatical ones; the
command's defaults (two discriminator updates per generator update, a moving average of the
generator's weights for evaluation, tau annealed from 0.5 to 0.1) were chosen by measuring
the final samples over several seeds (see ``discograd gan --help``).

The trainer optimizes ``model``'s parameters with its Adam; the discriminator is frozen
(``requires_grad`` off) while the generator's loss is built, so that loss gives it no gradient
and the trainer's Adam leaves it alone. The discriminator has its own Adam, stepped inside
:meth:`GANExperiment.loss` (its gradients averaged over the processes of a multi-process run,
and its parameters named by :meth:`GANExperiment.separately_optimized`, as
:class:`discograd.train.Experiment` asks); :class:`SequenceGAN` saves that optimizer's state
through ``nn.Module.get_extra_state``, so it is part of ``model.state_dict()`` and of the
trainer's checkpoints, and ``--resume`` continues the run exactly.

Several processes and mixed precision. Each rank trains on its share of the real batch and
draws as many fakes, so the discriminator's minibatch spread is taken over a rank's share (as
batch normalization is without synchronization). The discriminator's gradients are averaged
over the ranks unweighted (each rank's loss is a mean over its share: an unbiased estimate of
the batch's). Under fp16 autocast (``--precision fp16``) the discriminator's updates get their
own loss scaler (:meth:`SequenceGAN.d_scaler_for`; the trainer's scales only its own
optimizer): its loss is multiplied by a scale S before backward, the step skipped and S halved
when a gradient overflows. An overflow on one rank reaches every rank through the gradient
average, so the ranks skip the same steps and keep the same S.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from discograd import distributed
from discograd.experiments.sequences import SequenceData
from discograd.ops import gumbel_max
from discograd.train import epoch_batches

__all__ = [
    "PATHWISE",
    "SCORE_FUNCTION",
    "Discriminator",
    "GANExperiment",
    "Generator",
    "SequenceDistribution",
    "SequenceGAN",
    "pathwise_sample",
]

PATHWISE = ("gumbel-rao", "gumbel-softmax", "reinmax", "st", "st-gumbel-softmax")
SCORE_FUNCTION = ("reinforce", "rloo")
G_LOSSES = ("logit", "nonsaturating")


def pathwise_sample(
    estimator: nn.Module, logits: Tensor, generator: Optional[torch.Generator] = None
) -> Tensor:
    """The differentiable sample a pathwise estimator draws for ``logits`` (..., V).

    The estimator is called with a capture function as f: the sample it hands to f (exact
    one-hot or relaxed, with the estimator's gradient path to ``logits``) is returned, shaped
    like ``logits``; the surrogate, zero here, is discarded.
    """
    captured: List[Tensor] = []

    def capture(y: Tensor) -> Tensor:
        captured.append(y)
        return y.new_zeros(y.shape[0])

    estimator(capture, logits, generator=generator)
    if len(captured) != 1 or captured[0].shape[0] != 1:
        raise ValueError(
            f"estimator {getattr(estimator, 'name', estimator)!r} must evaluate f once on one "
            f"sample to drive a sequence generator (use n_samples=1)"
        )
    return captured[0][0]


class Generator(nn.Module):
    """LSTM over tokens: input embedding (V -> E, linear, so relaxed inputs work), LSTMCell
    (E -> H), output logits (H -> V); a learned start input at t = 0."""

    def __init__(self, vocab_size: int, hidden: int = 64, embed: int = 32) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("hidden", hidden), ("embed", embed)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.vocab_size, self.hidden, self.embed_dim = vocab_size, hidden, embed
        self.embed = nn.Linear(vocab_size, embed, bias=False)
        self.start = nn.Parameter(torch.zeros(embed))
        self.cell = nn.LSTMCell(embed, hidden)
        self.head = nn.Linear(hidden, vocab_size)

    def unroll(self, n: int, length: int, pick: Callable[[Tensor], Tensor]) -> Tensor:
        """Run n sequences for ``length`` steps; ``pick`` maps the step's logits (n, V) to the
        token vector (n, V) that is emitted and fed back. Returns (n, length, V)."""
        x = self.start.expand(n, self.embed_dim)
        state: Optional[Tuple[Tensor, Tensor]] = None
        out = []
        for _ in range(length):
            h, c = self.cell(x, state)
            state = (h, c)
            y = pick(self.head(h))
            out.append(y)
            x = self.embed(y)
        return torch.stack(out, 1)

    def relaxed(
        self, n: int, length: int, estimator: nn.Module, generator: Optional[torch.Generator]
    ) -> Tensor:
        """n sequences (n, length, V) drawn with a pathwise estimator, differentiable."""
        return self.unroll(n, length, lambda logits: pathwise_sample(estimator, logits, generator))

    @torch.no_grad()
    def sample(self, n: int, length: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n exact token sequences (n, length), int64: Gumbel-max draws fed back as one-hots."""
        onehots = self.unroll(
            n, length, lambda logits: gumbel_max(logits, generator=generator, one_hot=True)
        )
        return onehots.argmax(-1)

    def log_prob(self, tokens: Tensor) -> Tensor:
        """log p(x) of token sequences (n, L) -> (n,), teacher-forced."""
        tokens = tokens.long()
        n, length = tokens.shape
        inputs = F.one_hot(tokens, self.vocab_size).to(self.start.dtype)
        x = self.start.expand(n, self.embed_dim)
        state: Optional[Tuple[Tensor, Tensor]] = None
        total = tokens.new_zeros(n, dtype=self.start.dtype)
        for t in range(length):
            h, c = self.cell(x, state)
            state = (h, c)
            log_p = torch.log_softmax(self.head(h), -1)
            total = total + log_p.gather(1, tokens[:, t : t + 1]).squeeze(1)
            x = self.embed(inputs[:, t])
        return total


class SequenceDistribution(Distribution):
    """The generator's distribution over token sequences, as a torch Distribution.

    ``batch_shape`` (batch,), ``event_shape`` (length,): ``batch`` i.i.d. sequences. ``sample``
    draws from torch's global generator (the estimators seed it from their ``generator=``);
    ``log_prob`` is differentiable in the generator's parameters.
    """

    arg_constraints: Dict[str, Any] = {}
    has_rsample = False

    def __init__(self, model: Generator, batch: int, length: int) -> None:
        self.model, self.length = model, length
        super().__init__(torch.Size([batch]), torch.Size([length]), validate_args=False)

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        tokens = self.model.sample(int(shape.numel()), self.length)
        return tokens.reshape(shape + (self.length,))

    def log_prob(self, value: Tensor) -> Tensor:
        flat = value.reshape(-1, self.length)
        return self.model.log_prob(flat).reshape(value.shape[:-1])


class Discriminator(nn.Module):
    """Logit d(x) of "real" for token vectors (..., L, V), one-hot or relaxed.

    ``kind="cnn"``: linear embedding, Conv1d of widths 2, 3, 4 (``hidden`` channels each, zero
    padding so the sequence's ends are visible), ReLU, max over time, linear. ``kind="lstm"``:
    linear embedding, LSTM, linear map of the last hidden state. With ``minibatch_std``, the
    leading dimension just before (L, V) is a batch and the final layer also sees
    :func:`_batch_spread` of the features over it, so each output depends on its whole batch.
    """

    def __init__(
        self,
        vocab_size: int,
        kind: str = "cnn",
        hidden: int = 64,
        embed: int = 32,
        minibatch_std: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("cnn", "lstm"):
            raise ValueError(f"kind must be 'cnn' or 'lstm', got {kind!r}")
        self.kind, self.vocab_size, self.minibatch_std = kind, vocab_size, bool(minibatch_std)
        self.embed = nn.Linear(vocab_size, embed, bias=False)
        if kind == "cnn":
            self.convs = nn.ModuleList(
                nn.Conv1d(embed, hidden, k, padding=k - 1) for k in (2, 3, 4)
            )
            width = 3 * hidden
        else:
            self.lstm = nn.LSTM(embed, hidden, batch_first=True)
            width = hidden
        self.out = nn.Linear(width + int(self.minibatch_std), 1)

    def forward(self, y: Tensor) -> Tensor:
        lead = y.shape[:-2]
        x = self.embed(y.reshape((-1,) + tuple(y.shape[-2:])))  # (N, L, E)
        if self.kind == "cnn":
            x = x.transpose(1, 2)
            feats = torch.cat([torch.relu(conv(x)).amax(-1) for conv in self.convs], -1)
        else:
            feats = self.lstm(x)[0][:, -1]
        feats = feats.reshape(tuple(lead) + feats.shape[-1:])
        if self.minibatch_std:
            feats = torch.cat([feats, _batch_spread(feats)], -1)
        return self.out(feats).squeeze(-1)


def _batch_spread(feats: Tensor) -> Tensor:
    """The minibatch standard deviation feature (Karras et al., 2018): the mean over features of
    their standard deviation across the batch (dim -2), appended to every member, (..., B, 1).

    A batch of identical sequences has spread 0 while real batches do not, so D can detect a
    generator that collapsed onto a few sequences: a simple guard against mode collapse.
    """
    if feats.dim() < 2 or feats.shape[-2] < 2:
        return feats.new_zeros(feats.shape[:-1] + (1,))
    spread = (feats.var(-2, unbiased=False, keepdim=True) + 1e-8).sqrt().mean(-1, keepdim=True)
    return spread.expand(feats.shape[:-1] + (1,))


class SequenceGAN(nn.Module):
    r"""Generator and discriminator in one module, with the discriminator's own Adam and,
    optionally, a moving average of the generator's weights.

    The optimizer's state travels with ``state_dict()`` (``get_extra_state``), so checkpoints of
    the whole module restore it. With ``g_ema`` = d in (0, 1), ``average`` is a copy of the
    generator whose weights follow :math:`\bar w \leftarrow d\,\bar w + (1 - d)\,w` after
    every update (Polyak averaging, which damps the oscillation of GAN training; Yazici et al.,
    2019); it is frozen (no gradient) and saved with the rest.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        d_lr: float = 1e-3,
        d_betas: Tuple[float, float] = (0.5, 0.999),
        g_ema: float = 0.0,
    ) -> None:
        super().__init__()
        if not (d_lr > 0 and math.isfinite(d_lr)):
            raise ValueError(f"d_lr must be finite and > 0, got {d_lr!r}")
        if not 0.0 <= g_ema < 1.0:
            raise ValueError(f"g_ema must be in [0, 1), got {g_ema!r}")
        if generator.vocab_size != discriminator.vocab_size:
            raise ValueError("generator and discriminator disagree on vocab_size")
        self.generator, self.discriminator = generator, discriminator
        self.d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=d_lr, betas=d_betas)
        self.g_ema = float(g_ema)
        self.average: Optional[Generator] = None
        if self.g_ema:
            self.average = copy.deepcopy(generator).requires_grad_(False)
        self.d_scaler: Optional[torch.amp.GradScaler] = None
        self._d_scaler_state: Optional[Dict[str, Any]] = None  # loaded before the scaler exists

    def d_scaler_for(self, device: torch.device) -> Optional[torch.amp.GradScaler]:
        """The discriminator's loss scaler where fp16 autocast is on for ``device``'s type
        (created at the first such step), else None."""
        kind = device.type
        if not (
            torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16
        ):
            return None
        if self.d_scaler is None:
            self.d_scaler = torch.amp.GradScaler(kind)
            if self._d_scaler_state:
                self.d_scaler.load_state_dict(self._d_scaler_state)
        return self.d_scaler

    @torch.no_grad()
    def update_average(self) -> None:
        """One step of the moving average (a no-op without ``g_ema``)."""
        if self.average is None:
            return
        for avg, w in zip(self.average.parameters(), self.generator.parameters()):
            avg.lerp_(w, 1.0 - self.g_ema)

    @property
    def sampler(self) -> Generator:
        """Evaluation samples from this generator (the average, when there is one)."""
        return self.average if self.average is not None else self.generator

    def get_extra_state(self) -> Dict[str, Any]:
        scaler = self.d_scaler.state_dict() if self.d_scaler is not None else None
        return {"d_optimizer": self.d_optimizer.state_dict(), "d_scaler": scaler}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self._d_scaler_state = state.get("d_scaler")  # absent from older checkpoints
        if self.d_scaler is not None and self._d_scaler_state:
            self.d_scaler.load_state_dict(self._d_scaler_state)


class GANExperiment:
    """The sequence GAN as an experiment for :func:`discograd.train.fit`.

    Args:
        data: a :class:`~discograd.experiments.sequences.SequenceData` (train / valid tokens).
        model: the :class:`SequenceGAN`.
        estimator: a registered estimator, pathwise (:data:`PATHWISE`) or score-function
            (:data:`SCORE_FUNCTION`).
        g_loss: ``"logit"`` (the seeds' :math:`-\\log\\frac{D}{1-D}`) or ``"nonsaturating"``.
        d_steps: discriminator updates per generator update.
        eval_samples: sequences drawn at each evaluation.
        settings: extra entries for :meth:`config_dict`.

    Logged per step: the generator loss, ``d_loss``, and ``d_real`` / ``d_fake`` (mean D on
    real and generated batches). Evaluation (split ``"samples"``): the data set's metrics of
    ``eval_samples`` exact draws (grammatical fraction or oracle NLL, distinct sequences and
    n-grams) and ``g_nll``, the generator's NLL per token of the held-out sequences; of the
    averaged generator when the model keeps one, with the raw generator's as ``raw_*``.
    """

    def __init__(
        self,
        data: SequenceData,
        model: SequenceGAN,
        estimator: nn.Module,
        *,
        g_loss: str = "logit",
        d_steps: int = 1,
        eval_samples: int = 1000,
        settings: Optional[Dict[str, Any]] = None,
    ) -> None:
        name = getattr(estimator, "name", "")
        if name not in PATHWISE + SCORE_FUNCTION:
            raise ValueError(
                f"estimator {name!r} cannot train the sequence generator; use a pathwise one "
                f"({', '.join(PATHWISE)}) or a score-function one ({', '.join(SCORE_FUNCTION)})"
            )
        if g_loss not in G_LOSSES:
            raise ValueError(f"g_loss must be one of {G_LOSSES}, got {g_loss!r}")
        if not isinstance(d_steps, int) or d_steps < 1:
            raise ValueError(f"d_steps must be an integer >= 1, got {d_steps!r}")
        if not isinstance(eval_samples, int) or eval_samples < 1:
            raise ValueError(f"eval_samples must be an integer >= 1, got {eval_samples!r}")
        if model.generator.vocab_size != data.vocab_size:
            raise ValueError(
                f"the model has {model.generator.vocab_size} tokens, the data {data.vocab_size}"
            )
        self.data, self.model, self.estimator = data, model, estimator
        self.pathwise = name in PATHWISE
        self.g_loss, self.d_steps, self.eval_samples = g_loss, d_steps, eval_samples
        self.settings = dict(settings or {})

    # -- the pieces of a step -----------------------------------------------------------------

    def generator_loss(self, d_logit: Tensor) -> Tensor:
        """Per-sample generator loss from the discriminator's logit."""
        if self.g_loss == "logit":
            return -d_logit  # -log(D / (1 - D)), the seeds' Algorithm 1
        return F.softplus(-d_logit)  # -log D

    def fake(self, n: int, generator: Optional[torch.Generator]) -> Tensor:
        """n generated sequences as the generator step sees them, (n, L, V), no gradient."""
        g, length = self.model.generator, self.data.length
        with torch.no_grad():
            if self.pathwise:
                return g.relaxed(n, length, self.estimator, generator)
            return F.one_hot(g.sample(n, length, generator), g.vocab_size).to(g.start.dtype)

    def separately_optimized(self) -> List[nn.Parameter]:
        """Parameters the trainer's optimizer (and DistributedDataParallel) must leave alone:
        the discriminator's, stepped inside :meth:`loss`, and the generator's average."""
        avg = self.model.average
        return list(self.model.discriminator.parameters()) + (
            list(avg.parameters()) if avg is not None else []
        )

    def batches(self, batch_size: int, generator: torch.Generator):
        return epoch_batches(self.data.train, batch_size, generator)

    def loss(
        self, batch: Tensor, step: int, generator: torch.Generator
    ) -> Tuple[Tensor, Dict[str, float]]:
        g, d = self.model.generator, self.model.discriminator
        n, length = batch.shape[0], self.data.length
        real = F.one_hot(batch.long(), g.vocab_size).to(g.start.dtype)
        if step > 0:  # fold in the weights the trainer's last update produced
            self.model.update_average()

        # 1. Discriminator: its own Adam, stepped here (with its own loss scaler under fp16).
        d_opt, scaler = self.model.d_optimizer, self.model.d_scaler_for(real.device)
        for _ in range(self.d_steps):
            d_real, d_fake = d(real), d(self.fake(n, generator))
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            d_opt.zero_grad(set_to_none=True)
            (scaler.scale(d_loss) if scaler is not None else d_loss).backward()
            # Several processes: DDP does not see this optimizer, so average its gradients here.
            distributed.all_reduce_gradients(d.parameters())
            if scaler is None:
                d_opt.step()
            else:
                scaler.step(d_opt)  # skipped when a gradient is inf/NaN
                scaler.update()

        # 2. Generator: D frozen while the graph is built, so the loss reaches G only (autograd
        # records requires_grad at build time; switching it back on afterwards is safe).
        d.requires_grad_(False)
        try:
            if self.pathwise:
                y = g.relaxed(n, length, self.estimator, generator)
                g_loss = self.generator_loss(d(y)).mean()
            else:
                dist = SequenceDistribution(g, n, length)

                def f(x: Tensor) -> Tensor:
                    return self.generator_loss(d(F.one_hot(x, g.vocab_size).to(real.dtype)))

                g_loss = self.estimator(f, dist, generator=generator).mean()
        finally:
            d.requires_grad_(True)
        metrics = {
            "d_loss": float(d_loss.detach()),
            "d_real": float(torch.sigmoid(d_real.detach()).mean()),
            "d_fake": float(torch.sigmoid(d_fake.detach()).mean()),
        }
        return g_loss, metrics

    @torch.no_grad()
    def evaluate(self, split: str, generator: torch.Generator) -> Dict[str, float]:
        out = self._metrics(self.model.sampler, generator)
        if self.model.average is not None:  # the raw generator too, for comparison
            out.update(
                {f"raw_{k}": v for k, v in self._metrics(self.model.generator, generator).items()}
            )
        out["samples"] = self.eval_samples
        return out

    def _metrics(self, g: Generator, generator: torch.Generator) -> Dict[str, float]:
        tokens = g.sample(self.eval_samples, self.data.length, generator).cpu()
        out = dict(self.data.metrics(tokens))
        valid = self.data.valid.to(g.start.device)
        out["g_nll"] = float(-g.log_prob(valid).mean()) / self.data.length
        return out

    def samples(self, n: int, seed: int = 0) -> Tensor:
        """n exact draws (n, L) from the evaluated generator (the average, if kept), with a
        generator seeded by ``seed``."""
        g = self.model.sampler
        gen = torch.Generator(g.start.device).manual_seed(seed)
        return g.sample(n, self.data.length, gen).cpu()

    def config_dict(self) -> Dict[str, Any]:
        g, d = self.model.generator, self.model.discriminator
        return {
            "kind": "gan",
            "data": {"name": self.data.name, **self.data.settings},
            "generator": {"hidden": g.hidden, "embed": g.embed_dim},
            "discriminator": {"kind": d.kind, "minibatch_std": d.minibatch_std},
            "d_lr": self.model.d_optimizer.param_groups[0]["lr"],
            "g_ema": self.model.g_ema,
            "estimator": getattr(self.estimator, "name", type(self.estimator).__name__),
            "g_loss": self.g_loss,
            "d_steps": self.d_steps,
            "eval_samples": self.eval_samples,
            **self.settings,
        }


# ---------------------------------------------------------------------------------------------
# Figures.


def plot_curves(rows: Sequence[Dict[str, Any]], path: Any, *, title: str = "") -> Any:
    """Quality, the generator's NLL of held-out data, diversity and the discriminator's view
    against the step, from metrics.jsonl rows."""
    from pathlib import Path

    from discograd.experiments import figure

    evals = [r for r in rows if r.get("split") == "samples"]
    train = [r for r in rows if r.get("split") == "train"]
    fig = figure((12.0, 3.0))
    axes = [fig.add_subplot(1, 4, i + 1) for i in range(4)]
    steps = [r["step"] for r in evals]
    ax = axes[0]
    if evals and "grammatical" in evals[0]:
        ax.plot(steps, [r["grammatical"] for r in evals], "o-", ms=3)
        ax.axhline(0.9, color="gray", ls=":", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("fraction grammatical", fontsize=9)
    elif evals:
        ax.plot(steps, [r["oracle_nll"] for r in evals], "o-", ms=3, label="generated")
        rate = evals[0]["oracle_entropy_rate"]
        ax.axhline(rate, color="gray", ls=":", lw=1, label="entropy rate")
        ax.set_title("oracle NLL (nats/token)", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[1]
    if evals:
        ax.plot(steps, [r["g_nll"] for r in evals], "s-", ms=3, color="C2")
    ax.set_title("G's NLL of held-out data (nats/token)", fontsize=9)
    ax = axes[2]
    if evals:
        ax.plot(steps, [r["distinct_seqs"] for r in evals], "o-", ms=3, label="sequences")
        ax.plot(steps, [r["distinct_3grams"] for r in evals], "s-", ms=3, label="3-grams")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(f"distinct, among {evals[0].get('samples', '?')} samples", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[3]
    if train:
        ts = [r["step"] for r in train]
        ax.plot(ts, [r["d_real"] for r in train], label="D(real)")
        ax.plot(ts, [r["d_fake"] for r in train], label="D(fake)")
        if "temperature" in train[0]:
            ax.plot(ts, [r["temperature"] for r in train], "--", label="tau")
        ax.legend(fontsize=7)
    ax.set_title("discriminator (train batches)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
