"""``discograd sbn``: structured output prediction with a stochastic binary network.

Predicts the lower half of a digit from its upper half (Jang et al., 2016, section 4.1) with
every stochastic layer differentiated by the chosen estimator, and reports the m-sample
negative log-likelihood of the lower half. The run itself is
:func:`discograd.experiments.sbn.run`; this module holds the parser, and the option groups
that ``discograd semisup`` shares (the same names as ``discograd vae``, so that
``discograd compare`` drives all three alike).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict

DEFAULTS: Dict[str, Any] = {
    "estimator": "gumbel-softmax",
    "steps": 2000,
    "batch_size": 100,
    "lr": 1e-3,
    "eval_every": 500,
    "ckpt_every": 1000,
    "log_every": 50,
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from discograd.experiments.presets import PresetAction

    p = subparsers.add_parser(
        "sbn",
        help="structured output prediction (lower half of a digit from its upper half) with a "
        "stochastic binary network",
        description=(
            "Train a stochastic binary network x_upper -> h_1 -> h_2 -> x_lower (Bernoulli or "
            "categorical layers; Jang et al. 2016, section 4.1) with every layer's gradient from "
            "the chosen estimator, and report the m-sample negative log-likelihood of the lower "
            "half (nats per example, lower is better). The default data are the embedded 8x8 "
            "digits, split into 32 upper and 32 lower pixels (no download); the paper's setting "
            "is --preset jang-bernoulli or jang-categorical (binarized MNIST, 392 + 392 pixels)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        action=PresetAction,
        command="sbn",
        default=None,
        help="named settings (the paper's); options given on the command line win",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="digits",
        help="'digits' (embedded 8x8), 'mnist', 'fashion-mnist', 'binarized-mnist' or "
        "'mnist-npz:PATH' (e.g. mnist-npz:/work/shared/data/mnist-10k.npz)",
    )
    g.add_argument(
        "--binarization",
        choices=("static", "dynamic"),
        default="static",
        help="static: one fixed Bernoulli draw of the images (the paper); dynamic: a new draw "
        "of the training images every epoch",
    )
    add_estimator_arguments(p, DEFAULTS["estimator"])
    g = p.add_argument_group("model")
    g.add_argument(
        "--latent",
        choices=("bernoulli", "categorical"),
        default="bernoulli",
        help="kind of stochastic units",
    )
    g.add_argument(
        "--n-latent",
        type=int,
        default=None,
        help="units per layer: Bernoulli units, or categorical variables (default: 200 "
        "Bernoulli, 20 categorical: the paper's sizes)",
    )
    g.add_argument("--n-classes", type=int, default=10, help="classes of each categorical unit")
    g.add_argument("--n-layers", type=int, default=2, help="stochastic layers")
    add_training_arguments(p, DEFAULTS)
    g = p.add_argument_group("evaluation and output")
    g.add_argument(
        "--eval-samples",
        type=int,
        default=1000,
        help="m of the m-sample NLL estimate -log mean_i p(x_lower | h_i) (the paper: 1000)",
    )
    add_output_arguments(p, "runs/sbn")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the command (:func:`discograd.experiments.sbn.run`). At module level, so that
    ``--nproc`` can hand it, pickled with the options, to the worker processes."""
    from discograd.experiments.sbn import run as run_sbn

    return run_sbn(args)


# ---------------------------------------------------------------------------------------------
# Option groups shared with ``discograd semisup`` (names as in ``discograd vae``).


def add_estimator_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """--estimator, the temperature and its schedule, --estimator-option."""
    from discograd.estimators import available

    g = p.add_argument_group("estimator")
    g.add_argument(
        "--estimator",
        default=default,
        metavar="NAME",
        help="gradient estimator, one of: " + ", ".join(available()),
    )
    g.add_argument(
        "--tau",
        type=float,
        default=1.0,
        help="temperature (initial temperature with --tau-schedule exp), for estimators that "
        "take one",
    )
    g.add_argument(
        "--tau-schedule",
        choices=("constant", "exp"),
        default="constant",
        help="constant, or exp: tau = max(tau_min, tau * exp(-rate * t)), t rounded down to a "
        "multiple of --anneal-every (Jang et al., 2016)",
    )
    g.add_argument("--tau-min", type=float, default=0.5, help="floor of the exp schedule")
    g.add_argument("--anneal-rate", type=float, default=3e-4, help="rate of the exp schedule")
    g.add_argument(
        "--anneal-every", type=int, default=100, help="steps between temperature updates"
    )
    g.add_argument(
        "--estimator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra option passed to the estimator, e.g. n_samples=4 or baseline=ema "
        "(repeatable; values are Python literals or strings)",
    )


def add_training_arguments(p: argparse.ArgumentParser, defaults: Dict[str, Any]) -> None:
    """--steps, --batch-size, --lr, --seed, --eval-every, --ckpt-every, --log-every, --resume,
    --device, and the options every training command shares (--nproc, --precision,
    --compile: :func:`discograd.cli._common.add_training_options`)."""
    from discograd.cli._common import add_training_options

    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=defaults["steps"], help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="batch size")
    g.add_argument("--lr", type=float, default=defaults["lr"], help="Adam learning rate")
    g.add_argument("--seed", type=int, default=0, help="seed of every random stream")
    g.add_argument(
        "--eval-every",
        type=int,
        default=defaults["eval_every"],
        help="evaluate on the validation split every N steps (0: only at the end)",
    )
    g.add_argument(
        "--ckpt-every",
        type=int,
        default=defaults["ckpt_every"],
        help="write a checkpoint every N steps (0: only at the end)",
    )
    g.add_argument(
        "--log-every",
        type=int,
        default=defaults["log_every"],
        help="write a training row to metrics.jsonl every N steps",
    )
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    add_training_options(g)


def add_output_arguments(p: argparse.ArgumentParser, default_out: str) -> None:
    """--out, --no-plots, --quiet."""
    g = p.add_argument_group("output")
    g.add_argument("--out", default=default_out, metavar="DIR", help="output folder")
    g.add_argument("--no-plots", action="store_true", help="do not draw the PNG figures")
    g.add_argument("--quiet", action="store_true", help="no progress bar or messages")
