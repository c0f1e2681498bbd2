r"""The seeds' worked examples, each a function that computes, prints nothing, draws figures.

- :func:`gaussian`: :math:`\min_\theta \mathbb{E}_{z \sim N(a\theta + b, 1)}[z^2]`, whose
  minimum is at :math:`\theta^* = -b/a`. The exact gradient is :math:`2a(a\theta + b)`; its
  estimates from one draw have variance

  .. math:: \text{score function } (z^2 \cdot a(z - \mu)):\ a^2(\mu^4 + 14\mu^2 + 15),\qquad
            \text{reparameterization } (2a(\mu + \epsilon)):\ 4a^2,

  with :math:`\mu = a\theta + b`, both divided by the number of draws S.
- :func:`gumbel_max`: frequencies of :math:`\arg\max_i(\mu_i + G_i)` against
  :math:`\mathrm{softmax}(\mu)`, with Pearson's chi-square statistic and p-value.
- :func:`concrete`: Concrete samples on the 2-simplex at several temperatures beside the exact
  density (:class:`discograd.distributions.Concrete`), on a ternary plot.
- :func:`bitflip`: REBAR's :math:`\mathbb{E}_{b \sim \mathrm{Bernoulli}(\sigma(\theta))}
  [(b - t)^2]`, minimized by several estimators; the exact loss
  :math:`\sigma(\theta)(1 - t)^2 + (1 - \sigma(\theta))t^2` and the variance of the gradient
  estimate along the way.

Each returns a JSON-ready summary dict and, given ``out``, writes its PNG figure there.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor
from torch.distributions import Normal

from discograd import estimators
from discograd.ops import gumbel_max as _gumbel_max

__all__ = [
    "BITFLIP_ESTIMATORS",
    "bitflip",
    "bitflip_loss",
    "chi_square",
    "concrete",
    "gaussian",
    "gaussian_gradients",
    "gaussian_variance",
    "gumbel_max",
    "ternary",
]


def _save(fig: Any, out: Optional[Path], name: str) -> Optional[str]:
    if out is None:
        return None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, format="png")
    return str(path)


# ---------------------------------------------------------------------------------------------
# gaussian


def gaussian_gradients(
    estimator: str,
    a: float,
    b: float,
    theta: float,
    *,
    n_samples: int = 1,
    repeats: int = 1000,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``repeats`` independent estimates (repeats,) of d/dtheta E_{N(a theta + b, 1)}[z^2].

    ``estimator``: ``"reinforce"`` (score function) or ``"reparam"``, each given the
    ``torch.distributions.Normal`` and f(z) = z^2. Vectorized: theta is replicated ``repeats``
    times, one replica per estimate.
    """
    if estimator not in ("reinforce", "reparam"):
        raise ValueError(f"estimator must be 'reinforce' or 'reparam', got {estimator!r}")
    est = estimators.get(estimator, n_samples=n_samples)
    thetas = torch.full((repeats,), float(theta), dtype=torch.float64, requires_grad=True)
    dist = Normal(a * thetas + b, torch.ones((), dtype=torch.float64))
    surrogate = est(lambda z: z**2, dist, generator=generator)
    (grad,) = torch.autograd.grad(surrogate.sum(), thetas)
    return grad


def gaussian_variance(estimator: str, a: float, b: float, theta: float, n_samples: int) -> float:
    """The exact variance of one estimate with ``n_samples`` draws (module docstring)."""
    mu = a * theta + b
    one = a * a * (mu**4 + 14 * mu**2 + 15) if estimator == "reinforce" else 4 * a * a
    return one / n_samples


def gaussian(
    out: Optional[Path] = None,
    *,
    a: float = 2.0,
    b: float = 1.0,
    theta0: float = 1.0,
    sample_counts: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
    repeats: int = 2000,
    steps: int = 200,
    lr: float = 0.02,
    n_samples: int = 4,
    seed: int = 0,
    plot: bool = True,
) -> Dict[str, Any]:
    """Both estimators' variance against S at theta0, and gradient descent with each.

    Gradient descent: theta <- theta - lr * g_hat, g_hat from ``n_samples`` draws, ``steps``
    steps from ``theta0``; ``theta_final`` is the mean of the last half of the iterates.
    """
    if a == 0:
        raise ValueError("a must be nonzero (theta* = -b / a)")
    gen = torch.Generator().manual_seed(seed)
    names = ("reinforce", "reparam")
    exact = 2 * a * (a * theta0 + b)
    variance: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    for s in sample_counts:
        for name in names:
            g = gaussian_gradients(name, a, b, theta0, n_samples=s, repeats=repeats, generator=gen)
            variance[name].append(
                {
                    "n_samples": s,
                    "mean": float(g.mean()),
                    "se": float(g.std() / math.sqrt(repeats)),
                    "variance": float(g.var()),
                    "variance_exact": gaussian_variance(name, a, b, theta0, s),
                }
            )
    paths: Dict[str, List[float]] = {}
    for name in names:
        est = estimators.get(name, n_samples=n_samples)
        theta = torch.tensor(float(theta0), dtype=torch.float64, requires_grad=True)
        path = [float(theta.detach())]
        for _ in range(steps):
            dist = Normal(a * theta + b, torch.ones((), dtype=torch.float64))
            (g,) = torch.autograd.grad(est(lambda z: z**2, dist, generator=gen), theta)
            with torch.no_grad():
                theta -= lr * g
            path.append(float(theta.detach()))
        paths[name] = path
    tail = {n: p[len(p) // 2 :] for n, p in paths.items()}
    summary = {
        "toy": "gaussian",
        "a": a, "b": b, "theta0": theta0, "theta_star": -b / a,
        "exact_gradient_at_theta0": exact,
        "variance": variance,
        "descent": {
            n: {
                "theta_final": sum(t) / len(t),
                "theta_final_sd": float(torch.tensor(t).std()) if len(t) > 1 else 0.0,
                "steps": steps, "lr": lr, "n_samples": n_samples,
            }
            for n, t in tail.items()
        },
        "figures": [],
    }  # fmt: skip
    if plot:
        summary["figures"].append(_plot_gaussian(out, summary, paths))
    return summary


def _plot_gaussian(out: Optional[Path], s: Dict[str, Any], paths: Dict[str, List[float]]) -> Any:
    from discograd.experiments import figure

    fig = figure((9.0, 3.4), dpi=90)
    ax = fig.add_subplot(1, 2, 1)
    labels = {"reinforce": "score function", "reparam": "reparameterization"}
    for (name, rows), color in zip(s["variance"].items(), ("C3", "C0")):
        ss = [r["n_samples"] for r in rows]
        ax.loglog(
            ss,
            [r["variance"] for r in rows],
            "o",
            color=color,
            ms=4,
            label=f"{labels[name]} (measured)",
        )
        ax.loglog(
            ss,
            [r["variance_exact"] for r in rows],
            "-",
            color=color,
            lw=1,
            label=f"{labels[name]} (exact)",
        )
    ax.set_xlabel("draws per estimate S")
    ax.set_ylabel("variance of the gradient estimate")
    mu = s["a"] * s["theta0"] + s["b"]
    ax.set_title(f"at theta = {s['theta0']:g} (mu = {mu:g})", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax = fig.add_subplot(1, 2, 2)
    for (name, path), color in zip(paths.items(), ("C3", "C0")):
        ax.plot(range(len(path)), path, color=color, lw=1, label=labels[name])
    ax.axhline(s["theta_star"], color="k", ls=":", lw=1, label="-b/a")
    n = s["descent"]["reinforce"]["n_samples"]
    ax.set_title(f"gradient descent, S = {n}, lr = {s['descent']['reinforce']['lr']:g}", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("theta")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"min E[z^2], z ~ N({s['a']:g} theta + {s['b']:g}, 1)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "gaussian.png")


# ---------------------------------------------------------------------------------------------
# gumbel-max


def chi_square(counts: Tensor, probs: Tensor) -> Dict[str, float]:
    """Pearson's chi-square of ``counts`` against ``probs``: statistic, df, p-value.

    p = Q(df / 2, X^2 / 2), the regularized upper incomplete gamma function (the chi-square
    survival function), computed with torch so that scipy is not needed.
    """
    counts, probs = counts.double(), probs.double()
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = counts.numel() - 1
    p = float(
        torch.special.gammaincc(
            torch.tensor(df / 2.0, dtype=torch.float64),
            torch.tensor(stat / 2.0, dtype=torch.float64),
        )
    )
    return {"statistic": stat, "df": df, "pvalue": p}


def gumbel_max(
    out: Optional[Path] = None,
    *,
    logits: Sequence[float] = (1.0, 0.5, 0.0, -0.5, -1.0, -2.0),
    n: int = 100_000,
    seed: int = 0,
    plot: bool = True,
) -> Dict[str, Any]:
    """Draw n samples argmax(mu + G) and compare their frequencies with softmax(mu)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    mu = torch.tensor(list(logits), dtype=torch.float64)
    if mu.numel() < 2:
        raise ValueError("logits must have at least two categories")
    gen = torch.Generator().manual_seed(seed)
    draws = _gumbel_max(mu.expand(n, -1), generator=gen)
    counts = torch.bincount(draws, minlength=mu.numel())
    probs = torch.softmax(mu, -1)
    test = chi_square(counts, probs)
    summary = {
        "toy": "gumbel-max",
        "logits": list(map(float, mu)),
        "n": n,
        "softmax": probs.tolist(),
        "frequencies": (counts.double() / n).tolist(),
        "chi_square": test,
        "figures": [],
    }
    if plot:
        summary["figures"].append(_plot_gumbel_max(out, summary))
    return summary


def _plot_gumbel_max(out: Optional[Path], s: Dict[str, Any]) -> Any:
    from discograd.experiments import figure

    fig = figure((5.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(s["softmax"])))
    p, freq = s["softmax"], s["frequencies"]
    se = [math.sqrt(q * (1 - q) / s["n"]) for q in p]
    ax.bar([x - 0.2 for x in xs], p, width=0.4, color="C0", label="softmax(mu)")
    ax.bar(
        [x + 0.2 for x in xs],
        freq,
        width=0.4,
        color="C1",
        yerr=[2 * e for e in se],
        capsize=2,
        label="frequency of argmax(mu + G), 2 SE bars",
    )
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{m:g}" for m in s["logits"]])
    ax.set_xlabel("category (its logit mu_i)")
    ax.set_ylabel("probability")
    c = s["chi_square"]
    ax.set_title(
        f"Gumbel-max, n = {s['n']}: chi2 = {c['statistic']:.2f} (df {c['df']}), "
        f"p = {c['pvalue']:.3f}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, out, "gumbel_max.png")


# ---------------------------------------------------------------------------------------------
# concrete


def ternary(x: Tensor) -> Tensor:
    """Points of the 2-simplex (..., 3) -> plane coordinates (..., 2) of an equilateral
    triangle with vertices e1 = (0, 0), e2 = (1, 0), e3 = (1/2, sqrt(3)/2)."""
    x = x / x.sum(-1, keepdim=True)
    return torch.stack([x[..., 1] + 0.5 * x[..., 2], (math.sqrt(3) / 2) * x[..., 2]], -1)


def concrete(
    out: Optional[Path] = None,
    *,
    logits: Sequence[float] = (1.0, 0.3, -0.5),
    temperatures: Sequence[float] = (5.0, 1.0, 0.5, 0.1),
    n: int = 1000,
    seed: int = 0,
    grid: int = 120,
    plot: bool = True,
) -> Dict[str, Any]:
    """Samples of Concrete(tau, logits) with K = 3 at each tau, their closeness to the vertices,
    and (figure) the exact density on the simplex beside them."""
    from discograd.distributions import Concrete

    theta = torch.tensor(list(logits), dtype=torch.float64)
    if theta.numel() != 3:
        raise ValueError(f"logits must have 3 entries (the 2-simplex), got {theta.numel()}")
    if not temperatures or min(temperatures) <= 0:
        raise ValueError("temperatures must be positive")
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(theta, -1)
    rows, samples = [], {}
    for tau in temperatures:
        x = Concrete(float(tau), logits=theta).rsample((n,), generator=gen)
        samples[tau] = x
        top = x.max(-1).values
        counts = torch.bincount(x.argmax(-1), minlength=3)
        rows.append({
            "tau": float(tau),
            "mean_max_coordinate": float(top.mean()),
            "near_vertex_0.99": float((top > 0.99).double().mean()),
            "vertex_frequencies": (counts.double() / n).tolist(),
            "vertex_chi_square": chi_square(counts, probs),
        })  # fmt: skip
    summary = {
        "toy": "concrete",
        "logits": theta.tolist(),
        "softmax": probs.tolist(),
        "n": n,
        "temperatures": rows,
        "figures": [],
    }
    if plot:
        summary["figures"].append(_plot_concrete(out, theta, samples, grid))
    return summary


def _plot_concrete(out: Optional[Path], theta: Tensor, samples: Dict[float, Tensor], grid: int):
    from matplotlib.tri import Triangulation

    from discograd.distributions import Concrete
    from discograd.experiments import figure

    # Barycentric grid strictly inside the simplex (the density is singular on its faces).
    i, j = torch.meshgrid(torch.arange(grid + 1), torch.arange(grid + 1), indexing="ij")
    keep = i + j <= grid
    x1 = (i[keep].double() + 1 / 3) / (grid + 1)
    x2 = (j[keep].double() + 1 / 3) / (grid + 1)
    pts = torch.stack([x1, x2, 1 - x1 - x2], -1)
    pts = pts[(pts > 0).all(-1)]
    xy = ternary(pts)
    tri = Triangulation(xy[:, 0].numpy(), xy[:, 1].numpy())
    corners = ternary(torch.eye(3, dtype=torch.float64))
    outline = torch.cat([corners, corners[:1]])

    m = len(samples)
    fig = figure((2.3 * m, 4.7), dpi=80)
    for c, (tau, x) in enumerate(samples.items()):
        top = fig.add_subplot(2, m, c + 1)
        bottom = fig.add_subplot(2, m, m + c + 1)
        s = ternary(x)
        top.scatter(s[:, 0], s[:, 1], s=1.5, alpha=0.35, color="C0", linewidths=0)
        top.set_title(f"tau = {tau:g}: samples", fontsize=8)
        log_p = Concrete(float(tau), logits=theta).log_prob(pts)
        # Clip the color range: the density diverges at the vertices when tau < 1.
        hi = float(torch.quantile(log_p, 0.99))
        bottom.tricontourf(tri, log_p.clamp(hi - 12, hi).numpy(), levels=14, cmap="viridis")
        bottom.set_title("exact log-density", fontsize=8)
        for ax in (top, bottom):
            ax.plot(outline[:, 0], outline[:, 1], color="k", lw=0.6)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.axis("off")
    probs = torch.softmax(theta, -1).tolist()
    fig.suptitle(
        "Concrete(tau) on the 2-simplex, softmax(logits) = ("
        + ", ".join(f"{p:.2f}" for p in probs)
        + "); vertices e1 left, e2 right, e3 top",
        fontsize=8,
    )
    fig.tight_layout()
    return _save(fig, out, "concrete.png")


# ---------------------------------------------------------------------------------------------
# bitflip


BITFLIP_ESTIMATORS = ("reinforce", "rloo", "rebar", "relax", "disarm", "st-gumbel-softmax")


def bitflip_loss(theta: Tensor, t: float) -> Tensor:
    """Exact E[(b - t)^2] with b ~ Bernoulli(sigmoid(theta))."""
    p = torch.sigmoid(theta)
    return p * (1 - t) ** 2 + (1 - p) * t**2


def _bitflip_estimator(name: str) -> Any:
    # rloo needs two samples; everything else runs with its defaults (one sample).
    return estimators.get(name, n_samples=2) if name == "rloo" else estimators.get(name)


def bitflip(
    out: Optional[Path] = None,
    *,
    t: float = 0.45,
    estimator_names: Sequence[str] = BITFLIP_ESTIMATORS,
    steps: int = 2000,
    lr: float = 0.01,
    probe_every: int = 50,
    probe_draws: int = 500,
    seed: int = 0,
    plot: bool = True,
) -> Dict[str, Any]:
    """Minimize E[(b - t)^2] over the logit theta (from 0) with Adam and each estimator.

    Every ``probe_every`` steps: the exact loss and the variance of the gradient estimate at
    the current theta, from ``probe_draws`` independent estimates (the estimator in eval mode,
    so the probe does not move its baselines). Estimators not defined for Bernoulli variables
    are skipped and listed in the summary; a name not registered is a ValueError (before any
    run).
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    estimators.check_registered(estimator_names, "estimator_names")
    runs, skipped = {}, {}
    for name in estimator_names:
        est = _bitflip_estimator(name)
        if "bernoulli" not in getattr(est, "distributions", ()):
            skipped[name] = "does not support Bernoulli variables"
            continue
        runs[name] = _bitflip_run(est, t, steps, lr, probe_every, probe_draws, seed)

    summary = {
        "toy": "bitflip", "t": t, "steps": steps, "lr": lr,
        "optimum": min(t, 1 - t) ** 2,
        "exact_gradient_at_0": (1 - 2 * t) / 4,
        "runs": runs, "skipped": skipped, "figures": [],
    }  # fmt: skip
    if plot and runs:
        summary["figures"].append(_plot_bitflip(out, summary))
    return summary


def _bitflip_run(
    est: Any, t: float, steps: int, lr: float, probe_every: int, probe_draws: int, seed: int
) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    theta = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    est = est.double()
    opt = torch.optim.Adam([theta, *est.parameters()], lr=lr)

    def f(z: Tensor) -> Tensor:
        return ((z - t) ** 2).sum(-1)

    log: Dict[str, List[float]] = {"step": [], "loss": [], "grad_variance": [], "grad_mean": []}
    start = time.perf_counter()
    for step in range(steps + 1):
        if step % probe_every == 0 or step == steps:
            est.eval()
            rep = theta.detach().expand(probe_draws, 1).clone().requires_grad_(True)
            (g,) = torch.autograd.grad(
                est(f, rep, distribution="bernoulli", generator=gen).sum(), rep
            )
            est.train()
            log["step"].append(step)
            log["loss"].append(float(bitflip_loss(theta.detach(), t).sum()))
            log["grad_variance"].append(float(g.var()))
            log["grad_mean"].append(float(g.mean()))
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        est(f, theta, distribution="bernoulli", generator=gen).sum().backward()
        opt.step()
        est.step()
    return {**log, "theta_final": float(theta.detach()), "seconds": time.perf_counter() - start}


def _plot_bitflip(out: Optional[Path], s: Dict[str, Any]) -> Any:
    from discograd.experiments import figure

    fig = figure((9.0, 3.4), dpi=90)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    # Variances below 1e-20 are rounding noise around an exact (zero-variance) estimate, such
    # as DisARM's at theta = 0: drawn at the floor of the axis with a marker, not at -30.
    positive = [v for r in s["runs"].values() for v in r["grad_variance"] if v > 1e-20]
    floor = math.floor(math.log10(min(positive))) - 1 if positive else -20
    for name, run in s["runs"].items():
        ax1.plot(run["step"], run["loss"], lw=1.2, label=name)
        logs = [math.log10(v) if v > 1e-20 else floor for v in run["grad_variance"]]
        line = ax2.plot(run["step"], logs, lw=1.2, label=name)[0]
        exact = [(x, y) for x, y, v in zip(run["step"], logs, run["grad_variance"]) if v <= 1e-20]
        if exact:
            ax2.plot(*zip(*exact), "v", color=line.get_color(), ms=5)
    ax1.axhline(s["optimum"], color="k", ls=":", lw=1, label=f"optimum {s['optimum']:.4g}")
    ax1.set_xlabel("step")
    ax1.set_ylabel("E[(b - t)^2] (exact)")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("step")
    ax2.set_ylabel("log10 variance of the gradient estimate")
    ax2.set_title("(a triangle: zero variance, an exact estimate)", fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(f"REBAR's toy, t = {s['t']}, Adam lr = {s['lr']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "bitflip.png")
