"""``discograd toy NAME``: the seeds' worked examples, with figures.

``gaussian`` (score function against reparameterization), ``gumbel-max`` (the Gumbel-max trick
against softmax), ``concrete`` (the Concrete distribution on the simplex as tau -> 0) and
``bitflip`` (REBAR's toy problem with several estimators). Each writes NAME.png and NAME.json
(every number) to --out and prints a short summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from discograd.cli._common import HelpFormatter, prepare_out

TOYS = ("gaussian", "gumbel-max", "concrete", "bitflip")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "toy",
        help="run one of the seeds' worked examples (gaussian, gumbel-max, concrete, bitflip)",
        description=(
            "The seeds' worked examples. Run 'discograd toy NAME --help' for the options of "
            "each; every toy writes its figure (PNG) and its numbers (JSON) to --out."
        ),
    )
    sub = p.add_subparsers(dest="toy", metavar="NAME")
    fmt = HelpFormatter

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--out", default="runs/toy", metavar="DIR", help="output folder")
        q.add_argument("--seed", type=int, default=0, help="seed of every random draw")
        q.add_argument("--no-plots", action="store_true", help="do not draw the figure")

    q = sub.add_parser(
        "gaussian",
        formatter_class=fmt,
        help="min E[z^2], z ~ N(a theta + b, 1): score function vs reparameterization",
        description=(
            "Minimize E[z^2] over theta with z ~ N(a theta + b, 1) (minimum at theta = -b/a). "
            "Estimates the gradient with the score function (reinforce, given a "
            "torch.distributions.Normal) and with reparameterization (reparam): their mean "
            "against the exact 2a(a theta + b), their variance against the number of draws S "
            "(with the exact variances), and gradient descent with each."
        ),
    )
    q.add_argument("--a", type=float, default=2.0, help="slope a of the mean")
    q.add_argument("--b", type=float, default=1.0, help="offset b of the mean")
    q.add_argument(
        "--theta0",
        type=float,
        default=1.0,
        help="starting theta, also where the variance is measured",
    )
    q.add_argument(
        "--sample-counts",
        type=_int_list,
        default=(1, 2, 4, 8, 16, 32, 64, 128),
        metavar="S1,S2,...",
        help="draws per estimate for the variance curve",
    )
    q.add_argument(
        "--repeats",
        type=int,
        default=2000,
        help="independent estimates per point of the variance curve",
    )
    q.add_argument("--steps", type=int, default=200, help="gradient descent steps")
    q.add_argument("--lr", type=float, default=0.02, help="gradient descent step size")
    q.add_argument("--n-samples", type=int, default=4, help="draws per descent step")
    common(q)

    q = sub.add_parser(
        "gumbel-max",
        formatter_class=fmt,
        help="frequencies of argmax(mu + G) against softmax(mu), with a chi-square test",
        description=(
            "Draw n samples argmax_i(mu_i + G_i), G_i ~ Gumbel(0, 1), and compare their "
            "frequencies with softmax(mu): Pearson's chi-square statistic and p-value."
        ),
    )
    q.add_argument(
        "--logits",
        type=_float_list,
        default=(1.0, 0.5, 0.0, -0.5, -1.0, -2.0),
        metavar="M1,M2,...",
        help="the logits mu",
    )
    q.add_argument("--n", type=int, default=100_000, help="number of draws")
    common(q)

    q = sub.add_parser(
        "concrete",
        formatter_class=fmt,
        help="Concrete samples on the 2-simplex at several temperatures, beside the density",
        description=(
            "Sample Concrete(tau, logits) with K = 3 at each temperature and draw them on a "
            "ternary plot beside the exact log-density (discograd.distributions.Concrete); "
            "prints how close the samples are to the vertices, and the vertex frequencies "
            "against softmax(logits)."
        ),
    )
    q.add_argument(
        "--logits",
        type=_float_list,
        default=(1.0, 0.3, -0.5),
        metavar="L1,L2,L3",
        help="the three logits",
    )
    q.add_argument(
        "--temperatures",
        type=_float_list,
        default=(5.0, 1.0, 0.5, 0.1),
        metavar="T1,T2,...",
        help="temperatures tau, one column each",
    )
    q.add_argument("--n", type=int, default=1000, help="samples per temperature")
    common(q)

    q = sub.add_parser(
        "bitflip",
        formatter_class=fmt,
        help="REBAR's E[(b - t)^2] optimized with several estimators",
        description=(
            "Minimize E[(b - t)^2], b ~ Bernoulli(sigmoid(theta)), over theta (from 0) with "
            "Adam, once per estimator; plots the exact loss and log10 of the variance of the "
            "gradient estimate (from --probe-draws estimates every --probe-every steps). "
            "Estimators not defined for Bernoulli variables are skipped; an unknown name is "
            "an error."
        ),
    )
    q.add_argument("--t", type=float, default=0.45, help="the target t")
    q.add_argument(
        "--estimators",
        type=_str_list,
        default=("reinforce", "rloo", "rebar", "relax", "disarm", "st-gumbel-softmax"),
        metavar="NAME,NAME,...",
        help="estimators to compare (rloo uses 2 samples)",
    )
    q.add_argument("--steps", type=int, default=2000, help="Adam steps")
    q.add_argument("--lr", type=float, default=0.01, help="Adam step size")
    q.add_argument(
        "--probe-every",
        type=int,
        default=50,
        help="steps between measurements of loss and gradient variance",
    )
    q.add_argument(
        "--probe-draws", type=int, default=500, help="gradient estimates per variance measurement"
    )
    common(q)

    p.set_defaults(func=run, toy_parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    from discograd.estimators import check_registered
    from discograd.plotting import PlottingUnavailable

    if not getattr(args, "toy", None):
        args.toy_parser.print_help()
        return 2
    fn, kwargs, report = _TOYS[args.toy](args)
    out = Path(args.out)
    try:
        if args.toy == "bitflip":  # before --out is made: a typo leaves nothing behind
            check_registered(args.estimators, "--estimators")
        prepare_out(out)  # before the work: the figure and the JSON go there at the end
        summary = fn(out, plot=not args.no_plots, seed=args.seed, **kwargs)
    except ValueError as exc:
        print(f"discograd toy {args.toy}: error: {exc}", file=sys.stderr)
        return 2
    except PlottingUnavailable as exc:
        print(f"discograd toy {args.toy}: no figure: {exc}", file=sys.stderr)
        summary = fn(out, plot=False, seed=args.seed, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    name = args.toy.replace("-", "_")
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    for line in report(summary):
        print(line)
    for path in summary["figures"]:
        print(f"figure: {path}")
    return 0


# ---------------------------------------------------------------------------------------------
# Per toy: the function, its keyword arguments from the options, and the printed summary.


def _gaussian(args: argparse.Namespace) -> Tuple[Callable, Dict[str, Any], Callable]:
    from discograd.experiments import toys

    kwargs = {
        "a": args.a,
        "b": args.b,
        "theta0": args.theta0,
        "sample_counts": args.sample_counts,
        "repeats": args.repeats,
        "steps": args.steps,
        "lr": args.lr,
        "n_samples": args.n_samples,
    }

    def report(s: Dict[str, Any]) -> List[str]:
        lines = [f"exact gradient at theta = {s['theta0']:g}: {s['exact_gradient_at_theta0']:.4f}"]
        for name, rows in s["variance"].items():
            r = rows[0]
            lines.append(
                f"{name:9s} S={r['n_samples']}: mean {r['mean']:.4f} +- {r['se']:.4f} (SE), "
                f"variance {r['variance']:.4g} (exact {r['variance_exact']:.4g})"
            )
        ratio = s["variance"]["reinforce"][0]["variance"] / s["variance"]["reparam"][0]["variance"]
        lines.append(f"variance ratio score/reparam at S=1: {ratio:.1f}")
        for name, d in s["descent"].items():
            lines.append(
                f"{name:9s} descent: theta -> {d['theta_final']:.4f} "
                f"(sd {d['theta_final_sd']:.4f} over the last half; -b/a = "
                f"{s['theta_star']:.4f})"
            )
        return lines

    return toys.gaussian, kwargs, report


def _gumbel_max(args: argparse.Namespace) -> Tuple[Callable, Dict[str, Any], Callable]:
    from discograd.experiments import toys

    def report(s: Dict[str, Any]) -> List[str]:
        c = s["chi_square"]
        return [
            "softmax(mu): " + " ".join(f"{p:.4f}" for p in s["softmax"]),
            "frequency:   " + " ".join(f"{p:.4f}" for p in s["frequencies"]),
            f"chi-square {c['statistic']:.3f} on {c['df']} df, p-value {c['pvalue']:.3f} "
            f"(n = {s['n']})",
        ]

    return toys.gumbel_max, {"logits": args.logits, "n": args.n}, report


def _concrete(args: argparse.Namespace) -> Tuple[Callable, Dict[str, Any], Callable]:
    from discograd.experiments import toys

    def report(s: Dict[str, Any]) -> List[str]:
        lines = ["softmax(logits): " + " ".join(f"{p:.3f}" for p in s["softmax"])]
        for r in s["temperatures"]:
            lines.append(
                f"tau {r['tau']:>6g}: mean max coordinate {r['mean_max_coordinate']:.3f}, "
                f"{100 * r['near_vertex_0.99']:.1f}% within 0.01 of a vertex, vertex "
                f"frequencies "
                + " ".join(f"{p:.3f}" for p in r["vertex_frequencies"])
                + f" (chi-square p {r['vertex_chi_square']['pvalue']:.2f})"
            )
        return lines

    kwargs = {"logits": args.logits, "temperatures": args.temperatures, "n": args.n}
    return toys.concrete, kwargs, report


def _bitflip(args: argparse.Namespace) -> Tuple[Callable, Dict[str, Any], Callable]:
    from discograd.experiments import toys

    def report(s: Dict[str, Any]) -> List[str]:
        lines = [
            f"t = {s['t']}: optimum {s['optimum']:.4f}; exact gradient at theta = 0 "
            f"{s['exact_gradient_at_0']:.4f}"
        ]
        for name, r in s["runs"].items():
            lines.append(
                f"{name:18s} final loss {r['loss'][-1]:.4f}, theta {r['theta_final']:+.3f}, "
                f"gradient variance at start {r['grad_variance'][0]:.3g}, "
                f"mean gradient at start {r['grad_mean'][0]:+.4f}  [{r['seconds']:.1f} s]"
            )
        for name, why in s["skipped"].items():
            lines.append(f"{name:18s} skipped: {why}")
        return lines

    kwargs = {
        "t": args.t,
        "estimator_names": args.estimators,
        "steps": args.steps,
        "lr": args.lr,
        "probe_every": args.probe_every,
        "probe_draws": args.probe_draws,
    }
    return toys.bitflip, kwargs, report


_TOYS = {
    "gaussian": _gaussian,
    "gumbel-max": _gumbel_max,
    "concrete": _concrete,
    "bitflip": _bitflip,
}


def _split(text: str, cast: Callable[[str], Any], what: str) -> Tuple[Any, ...]:
    try:
        values = tuple(cast(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return values


def _int_list(text: str) -> Tuple[int, ...]:
    values = _split(text, int, "integers")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_list(text: str) -> Tuple[float, ...]:
    return _split(text, float, "numbers")


def _str_list(text: str) -> Tuple[str, ...]:
    return _split(text, str, "names")
