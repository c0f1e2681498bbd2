"""``discograd semisup``: semi-supervised classification with M2, y marginalized or sampled.

Kingma et al.'s (2014) M2 with the class y of unlabeled images summed over every class
(``--estimator exact``: marginalization) or sampled by any estimator (Gumbel-softmax, ST
Gumbel-softmax, ...), as in Jang et al. (2016), section 4.3. ``--speed`` times training steps
of marginalization against sampling for several numbers of classes instead of training. The run
itself is :func:`discograd.experiments.semisup.run`.
"""

from __future__ import annotations

import argparse

from discograd.cli._common import (
    HelpFormatter,
    add_data_options,
    add_estimator_options,
    add_loop_options,
    add_output_options,
    add_preset_option,
    int_list,
)
from discograd.cli.sbn import LOOP, TEMPERATURE

DEFAULTS = {"estimator": "gumbel-softmax"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "semisup",
        help="semi-supervised classification with M2: marginalize the class or sample it",
        description=(
            "Train Kingma et al.'s M2 (classifier q(y|x), Gaussian q(z|x,y), decoder p(x|y,z)) "
            "on a few labeled and many unlabeled images. For unlabeled images the class y is "
            "summed over every class (--estimator exact: marginalization) or sampled with the "
            "chosen estimator (gumbel-softmax, st-gumbel-softmax, ...). Reports the test "
            "accuracy, the negative ELBO (y marginalized, nats) and training steps per second. "
            "--n-classes 100 makes 100 classes of (digit, random bucket) pairs; --speed times "
            "marginalization against sampling as the number of classes grows."
        ),
        formatter_class=HelpFormatter,
    )
    add_preset_option(p, "semisup")
    g = p.add_argument_group("data")
    add_data_options(
        g,
        help="'digits' (embedded 8x8), 'mnist', 'fashion-mnist' or 'mnist-npz:PATH' (labels "
        "needed)",
    )
    g.add_argument(
        "--n-classes",
        type=int,
        default=10,
        help="classes of y: 10 (the digits) or 10 b: (digit, bucket) pairs with a random "
        "bucket in 0..b-1 per image",
    )
    g.add_argument("--n-labeled", type=int, default=100, help="labeled training images")
    g.add_argument(
        "--label-seed", type=int, default=0, help="seed of the labeled subset and the buckets"
    )
    g = p.add_argument_group("estimator")
    add_estimator_options(g, default=DEFAULTS["estimator"], **TEMPERATURE)
    g = p.add_argument_group("model")
    g.add_argument(
        "--hidden",
        type=int_list,
        default="256",  # a string, so that --help shows it as typed (argparse applies type)
        metavar="W1,W2,...",
        help="hidden widths of the classifier and encoder (the decoder mirrors them)",
    )
    g.add_argument("--z-dim", type=int, default=32, help="dimension of the Gaussian latent z")
    g.add_argument(
        "--alpha",
        type=float,
        default=1.0,
        help="weight of the classification loss -log q(y|x) on labeled images (per example, "
        "batch means)",
    )
    add_loop_options(p.add_argument_group("training"), **LOOP)
    g = p.add_argument_group("speed test (--speed)")
    g.add_argument(
        "--speed",
        action="store_true",
        help="instead of training, time steps of each --speed-estimators for each "
        "--speed-classes (interleaved rounds) and print the speed-ups (one process, fp32: "
        "not with --nproc, --precision or --compile)",
    )
    g.add_argument(
        "--speed-classes",
        type=int_list,
        default="10,100",
        metavar="K1,K2,...",
        help="numbers of classes to time",
    )
    g.add_argument(
        "--speed-estimators",
        default="exact,gumbel-softmax,st-gumbel-softmax",
        metavar="A,B,...",
        help="estimators of y to time (exact = marginalization, the reference)",
    )
    g.add_argument("--speed-steps", type=int, default=20, help="steps per round")
    g.add_argument("--speed-rounds", type=int, default=3, help="interleaved rounds")
    add_output_options(p.add_argument_group("output"), out="runs/semisup")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the command (:func:`discograd.experiments.semisup.run`). At module level, so that
    ``--nproc`` can hand it, pickled with the options, to the worker processes."""
    from discograd.experiments.semisup import run as run_semisup

    return run_semisup(args)
