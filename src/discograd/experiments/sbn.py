"""Structured output prediction with a stochastic binary network (``discograd sbn``).

Builds the data (binarized images cut into upper and lower halves), the
:class:`~discograd.models.sbn.StochasticBinaryNetwork` and one estimator per stochastic layer,
trains with :func:`discograd.train.fit`, and writes in the output folder: config.json,
metrics.jsonl, checkpoint.pt, summary.json and two figures (completions.png: test digits and
sampled completions of their lower halves; training_curve.png).

The frame of the run, the loop's settings from the options and the loop itself (which writes
summary.json with the wall time and the training steps per second, evaluation time excluded)
are those of every training command (:mod:`discograd.cli._common`). With ``--nproc N`` the
command restarts itself in N processes once its settings are checked; every process trains,
rank 0 alone prints and writes files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from discograd.cli._common import (
    build_estimator,
    check_device,
    describe_estimator,
    load_dataset,
    run_command,
    speaker,
    train_and_report,
    train_and_summarize,
    train_config,
)

# train_and_summarize and train_config (discograd.cli._common's) stay importable from here.
__all__ = ["build_estimators", "run", "train_and_summarize", "train_config"]


def build_estimators(args: argparse.Namespace, n: int, distribution: str) -> Tuple[list, dict]:
    """``n`` independent instances of the estimator the options name (one per layer), and
    the settings describing them; ValueError if it does not support ``distribution``."""
    built = [build_estimator(args) for _ in range(n)]
    estimators = [est for est, _ in built]
    supported = getattr(estimators[0], "distributions", (distribution,))
    if distribution not in supported:
        raise ValueError(
            f"estimator {args.estimator!r} does not support {distribution} variables "
            f"(it supports: {', '.join(supported)})"
        )
    return estimators, built[0][1]


def run(args: argparse.Namespace) -> int:
    """The ``discograd sbn`` command (see :mod:`discograd.cli.sbn` for the options)."""
    from discograd.models.sbn import PerLayer, SBNExperiment, StochasticBinaryNetwork, split_halves
    from discograd.train import seeded

    say = speaker(args)

    def setup() -> Tuple[Any, Dict[str, Any], Any]:
        check_device(args.device)
        n_latent = args.n_latent or (200 if args.latent == "bernoulli" else 20)
        data = load_dataset(args.dataset, args.data_dir)
        upper, lower = split_halves(data.train[:1], data.image_shape)
        estimators, settings = build_estimators(args, args.n_layers, args.latent)
        with seeded(args.seed):
            model = StochasticBinaryNetwork(
                upper.shape[-1],
                lower.shape[-1],
                n_latent=n_latent,
                n_classes=args.n_classes,
                n_layers=args.n_layers,
                latent=args.latent,
            )
        experiment = SBNExperiment(
            data,
            model,
            PerLayer(estimators),
            eval_samples=args.eval_samples,
            binarization=args.binarization,
            settings={**settings, "preset": args.preset},
        )
        model.init_output_bias(
            split_halves(experiment.binarized("train"), data.image_shape)[1].mean(0)
        )
        return experiment, settings, train_config(args)

    def train(built: Tuple[Any, Dict[str, Any], Any]) -> int:
        experiment, settings, config = built
        data, model = experiment.data, experiment.model
        n_tr, n_va, n_te = (int(getattr(data, s).shape[0]) for s in ("train", "valid", "test"))
        say(
            f"data: {data.name}: {data.description} ({n_tr} train / {n_va} valid / {n_te} "
            f"test; {args.binarization} binarization; upper {model.in_dim} -> lower "
            f"{model.out_dim} pixels)"
        )
        say(
            f"model: SBN {model.describe()}; estimator on every layer: "
            f"{describe_estimator(args.estimator, settings)}"
        )
        return train_and_report(
            experiment,
            config,
            args,
            "sbn",
            draw=lambda: draw_figures(experiment, Path(args.out), args),
            result_line=lambda test: (
                f"test NLL of the lower half (m={args.eval_samples}): "
                f"{test.get('nll', float('nan')):.3f} nats; single-sample objective: "
                f"{test.get('nll_1', float('nan')):.3f} nats"
            ),
        )

    return run_command("sbn", args, setup, train)


def draw_figures(experiment: Any, out: Path, args: argparse.Namespace) -> List[Path]:
    """completions.png (test digits, then 3 sampled completions each) and training_curve.png."""
    from discograd.models.sbn import split_halves
    from discograd.plotting import PlottingUnavailable, image_grid, read_jsonl, training_curve

    model, shape = experiment.model.eval(), experiment.data.image_shape
    try:
        with torch.no_grad():
            x = experiment.binarized("test")[:8]
            upper, _ = split_halves(x, shape)
            gen = torch.Generator().manual_seed(args.seed)
            rows = [x] + [torch.cat([upper, model.complete(upper, gen)], -1) for _ in range(3)]
        return [
            image_grid(
                torch.cat(rows),
                out / "completions.png",
                image_shape=shape,
                row_labels=["test", "sample 1", "sample 2", "sample 3"],
                title=f"lower halves completed by the SBN ({args.estimator})",
            ),
            training_curve(
                read_jsonl(out / "metrics.jsonl"),
                out / "training_curve.png",
                eval_key="nll",
                title=f"SBN {model.describe()} on {experiment.data.name}, {args.estimator}",
            ),
        ]
    except PlottingUnavailable as exc:
        print(f"discograd sbn: no figures: {exc}", file=sys.stderr)
        return []
