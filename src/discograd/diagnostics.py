r"""Diagnostics of gradient estimators: bias, variance, cosine, signal-to-noise, cost.

:func:`gradient_stats` calls an estimator ``n`` times on the same problem and summarizes the
``n`` gradient estimates :math:`g_1, \dots, g_n` of :math:`\nabla_\theta \mathbb{E}[\sum_j
f_j(z)]` (the sum over f's output entries), flattened to P components, against the exact
gradient :math:`e` (by enumeration with the ``exact`` estimator where feasible). With
:math:`\bar g = \frac1n \sum_i g_i` and :math:`s_p^2` the unbiased sample variance of component
p:

- ``variance`` :math:`V = \sum_p s_p^2`, the total variance of one estimate (the trace of its
  covariance);
- ``bias`` :math:`\|\bar g - e\|_2`, ``relative_bias`` :math:`\|\bar g - e\| / \|e\|`;
  ``bias_se`` :math:`\sqrt{V/n}`: for an unbiased estimator :math:`\mathbb{E}\|\bar g - e\|^2 =
  V/n`, so ``bias_se`` is the noise floor of ``bias`` (``relative_bias_se`` divides it by
  :math:`\|e\|`); ``mean_se`` :math:`s_p/\sqrt n` per component;
- ``bias_pvalue``: the test of "unbiased" per component, :math:`z_p = |\bar g_p - e_p| /
  (s_p/\sqrt n)`, two-sided normal p-value of :math:`\max_p z_p`, Bonferroni-corrected over P
  (differences at rounding level, below :math:`10^{-9}\|e\|`, count as zero). It trusts the
  normal approximation of the mean: where the gradient has large contributions from events of
  probability well below 1/n (near-deterministic classes), the draws rarely contain them, the
  sample variance underestimates the true one, and unbiased estimators are rejected; raise n;
- ``mse`` :math:`\frac1n\sum_i \|g_i - e\|^2`, the mean squared error of one estimate;
- ``cosine`` :math:`\langle \bar g, e\rangle / (\|\bar g\|\|e\|)`;
- ``snr`` :math:`\frac1{P'}\sum_p |\bar g_p| / s_p`, the mean over components of the per-
  component signal-to-noise ratio (P' excludes components with :math:`\bar g_p = s_p = 0`, such
  as masked classes; a component with :math:`s_p = 0 \ne \bar g_p` makes it infinite), and
  ``snr_norm`` :math:`\|\bar g\| / \sqrt V`;
- ``seconds_per_call``: wall time of one estimate, forward and backward;
  ``evaluations_per_call``: the samples f was evaluated at per estimate, counted by wrapping f
  (a call of f on a stack of S samples counts S; the ``exact`` estimator's shape probe counts).

Nothing is trained: learned parts (baselines, control variates, temperatures) keep their
values, because only the logits' gradient is taken. Running statistics an estimator updates
at each call (moving-average baselines, NVIL's centering and scaling) do change over the n
calls, so such an estimator's draws are not identically distributed, as in training.

:func:`compare` runs several estimators on one problem and :func:`to_markdown` formats the rows;
:func:`plot_variance_bias` draws them.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.distributions import Distribution

from discograd._json import strings
from discograd.estimators import Estimator, available, get
from discograd.estimators._family import make_family

__all__ = [
    "GradientStats",
    "Skipped",
    "CountingFunction",
    "count_evaluations",
    "build_estimator",
    "estimator_class",
    "exact_gradient",
    "gradient_stats",
    "compare",
    "to_markdown",
    "plot_variance_bias",
]

LossFn = Callable[[Tensor], Tensor]
EstimatorLike = Union[str, Estimator, Callable[..., Tensor]]


@dataclass
class GradientStats:
    """The summary of ``n`` gradient estimates; see the module docstring for the definitions.

    Tensors have the logits' shape when the gradient is in the logits, else they are the
    concatenation of the flattened ``params``. Fields that need the exact gradient are None
    without it. ``unbiased_claim`` is the estimator class's ``unbiased`` attribute (what it
    claims, not what was measured); ``options`` are its constructor arguments read back from
    the instance (best effort, scalars only).
    """

    estimator: str
    n: int
    mean: Tensor
    mean_se: Tensor
    component_variance: Tensor
    variance: float
    snr: float
    snr_norm: float
    seconds_per_call: float
    evaluations_per_call: Optional[float]
    unbiased_claim: Optional[bool]
    exact: Optional[Tensor] = None
    bias: Optional[float] = None
    bias_se: Optional[float] = None
    relative_bias: Optional[float] = None
    relative_bias_se: Optional[float] = None
    bias_pvalue: Optional[float] = None
    mse: Optional[float] = None
    cosine: Optional[float] = None
    vectorized: bool = False
    options: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready scalars (tensors become nested lists; inf and NaN become strings)."""
        out: Dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, Tensor):
                value = value.tolist()
            out[key] = strings(value)
        return out


@dataclass
class Skipped:
    """An estimator that did not run on a problem, and why (unsupported, or an error)."""

    estimator: str
    reason: str
    failed: bool = False
    unbiased_claim: Optional[bool] = None

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


Row = Union[GradientStats, Skipped]


class CountingFunction:
    """Wraps f and counts its calls and the samples it is evaluated at (leading dim sizes)."""

    def __init__(self, f: LossFn) -> None:
        self.f = f
        self.calls = 0
        self.evaluations = 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        self.evaluations += int(z.shape[0]) if z.dim() > 0 else 1
        return self.f(z)

    def reset(self) -> None:
        self.calls = 0
        self.evaluations = 0


def count_evaluations(f: LossFn) -> CountingFunction:
    """``f`` wrapped to count calls (``.calls``) and evaluations (``.evaluations``)."""
    return CountingFunction(f)


def _kind(logits: Union[Tensor, Distribution], distribution: str) -> str:
    return "distribution" if isinstance(logits, Distribution) else distribution


def _name(est: Any) -> str:
    return getattr(est, "name", "") or getattr(est, "__name__", "") or type(est).__name__


def _supports(est: Any, kind: str) -> bool:
    return kind in getattr(est, "distributions", (kind,))


def _out_ndim(f: LossFn, logits: Tensor, distribution: str) -> int:
    """How many batch dims f's output keeps, from one call on one sample (f is not counted)."""
    family = make_family(
        logits.detach(), distribution, supported=("categorical", "bernoulli"), name="diagnostics"
    )
    with torch.no_grad():
        probe = family.sample(1, torch.Generator(device=logits.device).manual_seed(0))
        return f(probe).dim() - 1


def exact_gradient(
    f: LossFn,
    logits: Union[Tensor, Distribution],
    *,
    distribution: str = "categorical",
    max_configurations: int = 2**16,
) -> Optional[Tensor]:
    """The gradient of E[sum of f's outputs] in ``logits`` by enumeration, or None when the
    enumeration would exceed ``max_configurations`` (or no ``exact`` estimator is registered,
    or ``logits`` is a torch Distribution).
    """
    if "exact" not in available() or isinstance(logits, Distribution):
        return None
    leaf = logits.detach().clone().requires_grad_(True)
    out_ndim = _out_ndim(f, leaf, distribution)
    family = make_family(leaf, distribution, supported=("categorical", "bernoulli"), name="exact")
    if family.num_configurations(out_ndim) > max_configurations:
        return None
    est = get("exact", max_configurations=max_configurations, batch_dims=out_ndim)
    value = est(f, leaf, distribution=distribution)
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    return grad.detach()


def _as_estimator(est: EstimatorLike, options: Optional[Mapping[str, Any]] = None) -> Any:
    if isinstance(est, str):
        return get(est, **dict(options or {}))
    if options:
        raise ValueError("options can only be given with an estimator name")
    if not callable(est):
        raise TypeError(f"est must be an estimator name, an Estimator or a callable, got {est!r}")
    return est


def _flat_grads(loss: Tensor, wrt: Sequence[Tensor], retain: bool) -> Tensor:
    grads = torch.autograd.grad(loss, list(wrt), allow_unused=True, retain_graph=retain)
    parts = [
        (torch.zeros_like(w) if g is None else g).reshape(-1).double() for g, w in zip(grads, wrt)
    ]
    return torch.cat(parts)


def gradient_stats(
    est: EstimatorLike,
    f: LossFn,
    logits: Union[Tensor, Distribution],
    *,
    n: int = 1000,
    distribution: str = "categorical",
    exact: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    params: Optional[Sequence[Tensor]] = None,
    vectorize: bool = False,
    max_configurations: int = 2**16,
) -> GradientStats:
    r"""Run ``est`` n times on (f, logits) and summarize its gradients (module docstring).

    Args:
        est: an estimator name (built by :func:`build_estimator`: default options, plus
            ``in_features`` where needed, parameters in the logits' dtype), an Estimator, or
            any callable with the estimator contract ``est(f, logits, distribution=,
            generator=)``.
        f: per-sample losses, (S, ...) -> (S, *out_shape); the gradient is that of
            E[sum of f's outputs].
        logits: categorical (..., K) or Bernoulli logits; the gradient is taken in a fresh
            detached leaf copy, so the caller's graph is untouched. Or a
            ``torch.distributions.Distribution``, with ``params`` the tensors (requiring grad)
            it was built from.
        n: number of independent estimates (>= 2).
        exact: the exact gradient (shaped like the result's ``mean``). None: enumerate with
            the ``exact`` estimator when at most ``max_configurations`` configurations; the
            fields that need it stay None otherwise.
        generator: the random stream of the estimates (None: torch's global one).
        params: tensors to differentiate in instead of the logits (required for a
            Distribution); gradients are flattened and concatenated.
        vectorize: one call on the logits replicated n times along a new leading batch dim,
            instead of n calls. Much faster for cheap f (one graph instead of n), but f must
            broadcast over leading dims and return one loss per replica ((S, n, *out_shape)),
            memory grows n-fold, and the n estimates are independent only if the estimator
            treats batch rows independently: estimators that pool statistics over the batch
            (moving-average baselines, batch-normalized learning signals, control variates that
            see the whole batch) correlate the replicas, and the variance is then wrong. Not
            available with ``params`` or a Distribution. ``seconds_per_call`` is the time of the
            one call divided by n.
        max_configurations: the enumeration limit for the automatic exact gradient.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not isinstance(logits, Distribution) and distribution not in ("categorical", "bernoulli"):
        raise ValueError(
            f"distribution must be 'categorical' or 'bernoulli' for tensor logits, "
            f"got {distribution!r}"
        )
    estimator = build_estimator(est, f, logits, distribution=distribution)
    name = _name(estimator)
    kind = _kind(logits, distribution)
    if not _supports(estimator, kind):
        supported = ", ".join(getattr(estimator, "distributions", ()))
        raise ValueError(f"estimator {name!r} does not support {kind!r} (supports: {supported})")
    if isinstance(logits, Distribution) and not params:
        raise ValueError("params is required when logits is a torch Distribution")
    if vectorize and (params or isinstance(logits, Distribution)):
        raise ValueError("vectorize=True needs tensor logits and no params")
    if exact is None and not params:
        exact = exact_gradient(
            f, logits, distribution=distribution, max_configurations=max_configurations
        )

    counted = count_evaluations(f)
    if vectorize:
        draws, seconds = _draws_vectorized(estimator, counted, logits, n, distribution, generator)
        calls = 1
    else:
        draws, seconds = _draws_loop(estimator, counted, logits, n, distribution, generator, params)
        calls = n
    if isinstance(logits, Tensor) and not params:  # without params logits is a Tensor (above)
        shape = logits.shape
    else:
        shape = torch.Size([draws.shape[1]])
    evals = counted.evaluations / calls if counted.calls else None
    stats = _summarize(draws, None if exact is None else exact.reshape(-1).double())
    return GradientStats(
        estimator=name,
        n=n,
        mean=stats["mean"].reshape(shape),
        mean_se=stats["mean_se"].reshape(shape),
        component_variance=stats["var"].reshape(shape),
        variance=stats["variance"],
        snr=stats["snr"],
        snr_norm=stats["snr_norm"],
        seconds_per_call=seconds / n,
        evaluations_per_call=evals,
        unbiased_claim=getattr(estimator, "unbiased", None),
        exact=None if exact is None else exact.detach().double().reshape(shape),
        bias=stats.get("bias"),
        bias_se=stats.get("bias_se"),
        relative_bias=stats.get("relative_bias"),
        relative_bias_se=stats.get("relative_bias_se"),
        bias_pvalue=stats.get("bias_pvalue"),
        mse=stats.get("mse"),
        cosine=stats.get("cosine"),
        vectorized=vectorize,
        options=_options_of(estimator),
    )


def _draws_loop(est, f, logits, n, distribution, generator, params) -> tuple:
    """n gradient estimates from n independent calls: (n, P) float64, and the seconds taken."""
    draws = []
    start = time.perf_counter()
    for _ in range(n):
        if params:
            wrt, x = list(params), logits
        else:
            x = logits.detach().clone().requires_grad_(True)
            wrt = [x]
        surrogate = est(f, x, distribution=distribution, generator=generator)
        # A Distribution's own graph (e.g. scale = softplus(p)) is shared by all n calls.
        draws.append(_flat_grads(surrogate.sum(), wrt, retain=bool(params)))
    seconds = time.perf_counter() - start
    return torch.stack(draws), seconds


def _draws_vectorized(est, f, logits, n, distribution, generator) -> tuple:
    """n estimates from one call on the logits replicated along a new leading batch dim."""
    start = time.perf_counter()
    rep = logits.detach().unsqueeze(0).expand((n,) + logits.shape).clone().requires_grad_(True)
    surrogate = est(f, rep, distribution=distribution, generator=generator)
    if surrogate.dim() == 0 or surrogate.shape[0] != n:
        raise ValueError(
            f"vectorize=True: the surrogate has shape {tuple(surrogate.shape)}, expected a "
            f"leading replica dim of {n}; f must return one loss per replica"
        )
    (grad,) = torch.autograd.grad(surrogate.sum(), rep)
    seconds = time.perf_counter() - start
    return grad.reshape(n, -1).double(), seconds


def _summarize(draws: Tensor, exact: Optional[Tensor]) -> Dict[str, Any]:
    n = draws.shape[0]
    # Shifted by the first draw: identical draws (exact enumeration) then give a variance of
    # exactly 0 instead of rounding noise, and large common offsets lose no precision.
    shifted = draws - draws[0]
    mean = shifted.mean(0) + draws[0]
    var = shifted.var(0, unbiased=True)
    std = var.sqrt()
    variance = float(var.sum())
    out: Dict[str, Any] = {
        "mean": mean,
        "var": var,
        "mean_se": std / math.sqrt(n),
        "variance": variance,
        "snr": _component_snr(mean, std),
        "snr_norm": _ratio(float(mean.norm()), math.sqrt(variance)),
    }
    if exact is None:
        return out
    if exact.numel() != mean.numel():
        raise ValueError(f"exact has {exact.numel()} components, the gradient {mean.numel()}")
    diff = mean - exact
    bias, e_norm = float(diff.norm()), float(exact.norm())
    out["bias"] = bias
    out["bias_se"] = math.sqrt(variance / n)
    out["relative_bias"] = _ratio(bias, e_norm)
    out["relative_bias_se"] = _ratio(out["bias_se"], e_norm)
    out["mse"] = float(((draws - exact) ** 2).sum(1).mean())
    out["cosine"] = _cosine(mean, exact)
    out["bias_pvalue"] = _bias_pvalue(diff, std / math.sqrt(n), scale=max(e_norm, bias))
    return out


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return 0.0 if a == 0 else math.inf


def _cosine(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return math.nan
    return float(a @ b) / (na * nb)


def _component_snr(mean: Tensor, std: Tensor) -> float:
    signal = mean.abs()
    keep = (signal > 0) | (std > 0)
    if not keep.any():
        return math.nan
    if ((std == 0) & (signal > 0)).any():
        return math.inf
    return float((signal[keep] / std[keep]).mean())


def _bias_pvalue(diff: Tensor, se: Tensor, scale: float) -> float:
    """Bonferroni-corrected two-sided p-value of the largest per-component z-score."""
    # Differences at rounding level (zero-variance estimators like exact) are not bias.
    tol = 1e-9 * scale + 1e-300
    err = diff.abs()
    z = torch.where(err <= tol, torch.zeros_like(err), err / se.clamp_min(1e-300))
    z_max = float(z.max())
    p_one = math.erfc(z_max / math.sqrt(2.0))
    return min(1.0, p_one * diff.numel())


def _options_of(est: Any) -> Dict[str, Any]:
    """The constructor arguments an estimator was built with, where it stores them as
    attributes of the same name (for tables; best effort)."""
    if not isinstance(est, Estimator):
        return {}
    out = {}
    for key in inspect.signature(type(est).__init__).parameters:
        if key == "self":
            continue
        value: Any = getattr(est, key, None)
        if key in ("tau", "temperature"):
            temperature = getattr(est, "temperature", None)
            if callable(temperature):
                value = temperature()  # the current value of a schedule or learned temperature
        if isinstance(value, Tensor) and value.numel() == 1:
            value = float(value.detach())
        if isinstance(value, (int, float, str, bool)):
            out[key] = value
    return out


def compare(
    estimators: Sequence[EstimatorLike],
    f: LossFn,
    logits: Union[Tensor, Distribution],
    *,
    n: int = 1000,
    distribution: str = "categorical",
    exact: Optional[Tensor] = None,
    seed: int = 0,
    params: Optional[Sequence[Tensor]] = None,
    options: Optional[Mapping[str, Any]] = None,
    vectorize: bool = False,
    errors: str = "raise",
) -> List[Row]:
    """:func:`gradient_stats` of each estimator on one problem, in the given order.

    Estimators given by name are built here, reproducibly: each under torch's global RNG
    seeded with ``seed`` and restored afterwards (learned parts are initialized from it), with
    its floating-point parameters cast to the logits' dtype, and with

    - the ``options`` (e.g. ``{"tau": 0.5}``) that its constructor accepts;
    - ``in_features``, when its constructor takes it and ``options`` do not give it: the number
      of entries of z under one output of f (the input size of RELAX's built-in control
      variate network).

    Each estimator draws from its own ``torch.Generator`` seeded with ``seed``, so a row does
    not depend on which other estimators ran. Estimators that do not support the problem's
    distribution give a :class:`Skipped` row. ``errors="record"`` turns an error raised while
    building or running an estimator into a failed :class:`Skipped` row instead of raising.
    """
    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
    kind = _kind(logits, distribution)
    if exact is None and not params:
        exact = exact_gradient(f, logits, distribution=distribution)
    rows: List[Row] = []
    for spec in estimators:
        label = spec if isinstance(spec, str) else _name(spec)
        try:
            est = build_estimator(
                spec, f, logits, distribution=distribution, options=options, seed=seed
            )
        except Exception as exc:  # noqa: BLE001  (reported in the table when recording)
            if errors == "raise":
                raise
            rows.append(Skipped(label, f"failed: {type(exc).__name__}: {exc}", failed=True))
            continue
        claim = getattr(est, "unbiased", None)
        if not _supports(est, kind):
            supported = ", ".join(getattr(est, "distributions", ()))
            rows.append(Skipped(label, f"unsupported: {kind} (supports {supported})", False, claim))
            continue
        try:
            rows.append(
                gradient_stats(
                    est,
                    f,
                    logits,
                    n=n,
                    distribution=distribution,
                    exact=exact,
                    generator=_generator(seed, logits),
                    params=params,
                    vectorize=vectorize,
                )
            )
        except Exception as exc:  # noqa: BLE001
            if errors == "raise":
                raise
            rows.append(Skipped(label, f"failed: {type(exc).__name__}: {exc}", True, claim))
    return rows


def estimator_class(name: str) -> type:
    """The class registered as ``name`` (without building it: some need options)."""
    from discograd.estimators.base import estimator_class as lookup

    return lookup(name)


def _generator(seed: int, logits: Union[Tensor, Distribution]) -> torch.Generator:
    """A generator on the logits' device (estimators draw their noise there)."""
    device = logits.device if isinstance(logits, Tensor) else torch.device("cpu")
    return torch.Generator(device=device).manual_seed(seed)


def build_estimator(
    spec: EstimatorLike,
    f: LossFn,
    logits: Union[Tensor, Distribution],
    *,
    distribution: str = "categorical",
    options: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
) -> Any:
    """The estimator ``spec`` built for a problem as :func:`compare` builds it (see there); an
    Estimator instance or callable passes through unchanged."""
    if not isinstance(spec, str):
        return _as_estimator(spec)
    cls = estimator_class(spec)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in (options or {}).items() if k in accepted}
    if "in_features" in accepted and "in_features" not in kwargs:
        if isinstance(logits, Tensor) and distribution in getattr(cls, "distributions", ()):
            kwargs["in_features"] = _in_features(f, logits, distribution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        est = get(spec, **kwargs)
    if isinstance(est, torch.nn.Module) and isinstance(logits, Tensor):
        est.to(logits.dtype)  # converts floating-point parameters and buffers only
    return est


def _in_features(f: LossFn, logits: Tensor, distribution: str) -> int:
    """Entries of z under one output entry of f (categorical rows count K entries each)."""
    out_ndim = _out_ndim(f, logits, distribution)
    return int(torch.Size(logits.shape[out_ndim:]).numel())


def _fmt(value: Optional[float], se: Optional[float] = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    text = f"{value:.3g}"
    if se is not None:
        text += f" ± {se:.2g}"
    return text


def _claim(value: Optional[bool]) -> str:
    return "-" if value is None else ("yes" if value else "no")


def to_markdown(rows: Sequence[Row]) -> str:
    """A markdown table of :func:`compare`'s rows.

    Columns: the class's unbiasedness claim; bias ± its noise floor; the p-value of the
    "unbiased" test (small: the bias is real, if n is large enough for its normal
    approximation; see the module docstring); relative bias; total variance; MSE of one
    estimate; cosine to the exact gradient; the mean per-component SNR; evaluations of f and
    milliseconds per estimate.
    """
    header = (
        "| estimator | unbiased? (claim) | bias ± SE | bias p | rel. bias | variance | MSE "
        "| cosine | SNR | f evals/call | ms/call |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        if isinstance(row, Skipped):
            cells = [row.estimator, _claim(row.unbiased_claim), row.reason] + ["-"] * 8
        else:
            cells = [
                row.estimator,
                _claim(row.unbiased_claim),
                _fmt(row.bias, row.bias_se),
                _fmt(row.bias_pvalue),
                _fmt(row.relative_bias),
                _fmt(row.variance),
                _fmt(row.mse),
                _fmt(row.cosine),
                _fmt(row.snr),
                _fmt(row.evaluations_per_call),
                _fmt(1e3 * row.seconds_per_call),
            ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def plot_variance_bias(rows: Sequence[Row], path: str, title: str = "") -> None:
    """Write a PNG: variance against bias (log-log, one labelled point per estimator, coloured
    by the class's unbiasedness claim) and the milliseconds per call as bars. Zeros and values
    at rounding level (below 1e-9 of the largest) are drawn hollow at the axis' floor. Needs
    matplotlib; uses its Agg canvas directly, leaving pyplot's global state alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    done = [r for r in rows if isinstance(r, GradientStats)]
    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    ax, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    with_bias = [r for r in done if r.bias is not None]
    if with_bias:
        xs = [float(r.bias) for r in with_bias]  # type: ignore[arg-type]
        ys = [r.variance for r in with_bias]
        x_floor, y_floor = _floor(xs), _floor(ys)
        seen = set()
        labels: Dict[tuple, List[str]] = {}
        for r, x, y in zip(with_bias, xs, ys):
            zero = x < x_floor or y < y_floor
            px, py = max(x, x_floor), max(y, y_floor)
            color = "C0" if r.unbiased_claim else "C3"
            label = "claims unbiased" if r.unbiased_claim else "biased by design"
            ax.scatter([px], [py], s=40, facecolors="none" if zero else color, edgecolors=color)
            seen.add(label)
            labels.setdefault((px, py), []).append(r.estimator)
        for (px, py), names in labels.items():  # coincident points share one label
            ax.annotate(
                ", ".join(names), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Minor ticks unlabelled: on a short log range matplotlib labels them, and they overlap.
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bias ||mean - exact||  (hollow: zero, drawn at the floor)")
        ax.set_ylabel("total variance of one estimate")
        ax.grid(True, which="major", alpha=0.3)
        # Legend entries drawn filled whatever the first point of each kind was (a hollow,
        # zero-bias point would otherwise stand for the whole kind).
        kinds = (("claims unbiased", "C0"), ("biased by design", "C3"))
        handles = [
            Line2D([], [], ls="", marker="o", markersize=7, color=c, label=label)
            for label, c in kinds
            if label in seen
        ]
        ax.legend(handles=handles, fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no exact gradient: bias unknown", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(title or "variance vs bias")
    names = [r.estimator for r in done]
    bars.barh(names, [1e3 * r.seconds_per_call for r in done], color="C1")
    bars.invert_yaxis()
    bars.set_xlabel("ms per call (forward + backward)")
    bars.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _floor(values: Sequence[float]) -> float:
    """A tenth of the smallest value above rounding level (1e-9 of the largest)."""
    top = max(values, default=0.0)
    real = [v for v in values if v > 1e-9 * top]
    return min(real) / 10 if real else 1e-12
