"""``discograd sbn``: structured output prediction with a stochastic binary network.

Predicts the lower half of a digit from its upper half (Jang et al., 2016, section 4.1) with
every stochastic layer differentiated by the chosen estimator, and reports the m-sample
negative log-likelihood of the lower half. The run itself is
:func:`discograd.experiments.sbn.run`; this module holds the parser. Its option groups are
those of :mod:`discograd.cli._common`, as in ``discograd vae`` and ``semisup`` (the same names,
so that ``discograd compare`` drives all three alike), with the defaults ``semisup`` shares.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict

from discograd.cli._common import (
    HelpFormatter,
    add_data_options,
    add_estimator_options,
    add_loop_options,
    add_output_options,
    add_preset_option,
    precheck_enumeration,
)

DEFAULTS: Dict[str, Any] = {"estimator": "gumbel-softmax"}
# The defaults of the options ``discograd semisup`` shares (--tau ..., --steps ...).
TEMPERATURE: Dict[str, Any] = {"tau": 1.0, "tau_min": 0.5, "anneal_rate": 3e-4}
LOOP: Dict[str, Any] = {"steps": 2000, "batch_size": 100, "lr": 1e-3, "eval_every": 500}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
        formatter_class=HelpFormatter,
    )
    add_preset_option(p, "sbn")
    g = p.add_argument_group("data")
    add_data_options(
        g,
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
    g = p.add_argument_group("estimator")
    add_estimator_options(g, default=DEFAULTS["estimator"], **TEMPERATURE)
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
    add_loop_options(p.add_argument_group("training"), **LOOP)
    g = p.add_argument_group("evaluation and output")
    g.add_argument(
        "--eval-samples",
        type=int,
        default=1000,
        help="m of the m-sample NLL estimate -log mean_i p(x_lower | h_i) (the paper: 1000)",
    )
    add_output_options(g, out="runs/sbn")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the command (:func:`discograd.experiments.sbn.run`). At module level, so that
    ``--nproc`` can hand it, pickled with the options, to the worker processes."""
    from discograd.experiments.sbn import run as run_sbn

    # --estimator exact would stop at the first step on too many configurations: say so now.
    # Each layer's estimator sees the layers below it inside its f, so the enumerations nest:
    # an example's joint configurations are the per-layer count to the power --n-layers (2^20
    # for two layers of 10 units, about 300 GB for one tensor of MNIST pixels).
    n = args.n_latent or (200 if args.latent == "bernoulli" else 20)
    bernoulli = args.latent == "bernoulli"
    per_layer = 2**n if bernoulli else args.n_classes**n
    units = (
        f"{n} Bernoulli units (--n-latent)"
        if bernoulli
        else f"{n} variables (--n-latent) of {args.n_classes} classes (--n-classes)"
    )
    code = precheck_enumeration(
        "sbn",
        args,
        per_layer**args.n_layers,
        f"--n-layers {args.n_layers} nested layers of {units}",
    )
    if code is not None:
        return code
    return run_sbn(args)
