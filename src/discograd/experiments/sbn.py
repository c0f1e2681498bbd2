"""Structured output prediction with a stochastic binary network (``discograd sbn``).

Builds the data (binarized images cut into upper and lower halves), the
:class:`~discograd.models.sbn.StochasticBinaryNetwork` and one estimator per stochastic layer,
trains with :func:`discograd.train.fit`, and writes in the output folder: config.json,
metrics.jsonl, checkpoint.pt, summary.json and two figures (completions.png: test digits and
sampled completions of their lower halves; training_curve.png).

:func:`train_config` and :func:`train_and_summarize` are shared with ``discograd semisup``:
the loop's settings from the options, and the loop itself, which writes summary.json with the
wall time and the training steps per second (evaluation time excluded). With ``--nproc N`` the
command restarts itself in N processes (:func:`discograd.cli._common.launch_if_requested`) once
its settings are checked; every process trains, rank 0 alone prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

__all__ = ["build_estimators", "run", "train_and_summarize", "train_config"]

Say = Callable[[str], None]


def build_estimators(args: argparse.Namespace, n: int, distribution: str) -> Tuple[list, dict]:
    """``n`` independent instances of the estimator the options name (one per layer), and
    the settings describing them; ValueError if it does not support ``distribution``."""
    from discograd.cli.vae import build_estimator

    built = [build_estimator(args) for _ in range(n)]
    estimators = [est for est, _ in built]
    supported = getattr(estimators[0], "distributions", (distribution,))
    if distribution not in supported:
        raise ValueError(
            f"estimator {args.estimator!r} does not support {distribution} variables "
            f"(it supports: {', '.join(supported)})"
        )
    return estimators, built[0][1]


def train_config(args: argparse.Namespace) -> Any:
    """The :class:`~discograd.train.TrainConfig` the options describe (ValueError if invalid),
    the shared ones (--precision, --compile) included."""
    from discograd.cli._common import training_settings
    from discograd.train import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
        log_every=args.log_every,
        out_dir=args.out,
        resume=args.resume,
        quiet=args.quiet,
        device=args.device,
        **training_settings(args),
    )


def train_and_summarize(
    experiment: Any, config: Any, say: Say, name: str
) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """fit() with ``config``; on rank 0, writes summary.json and returns its content with the
    result (other ranks of a multi-process run: the result and None).

    ``steps_per_second`` counts training only: the experiment's ``eval_seconds`` (time spent
    in evaluate) is subtracted from the wall time. Under several processes it is the steps of
    the whole run (each step one global batch) per second.
    """
    from discograd.cli._common import is_main
    from discograd.train import fit

    say(f"output: {Path(config.out_dir).resolve()}")
    result = fit(experiment, config)
    if not is_main():
        return result, None
    train_seconds = max(result.elapsed - getattr(experiment, "eval_seconds", 0.0), 1e-9)
    summary = {
        "experiment": name,
        "steps": result.step,
        "seconds": round(result.elapsed, 2),
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(result.step / train_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "processes": result.world_size,
        **{split: metrics for split, metrics in result.final.items()},
    }
    (Path(config.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result, summary


def run(args: argparse.Namespace) -> int:
    """The ``discograd sbn`` command (see :mod:`discograd.cli.sbn` for the options)."""
    from discograd.cli._common import is_main, launch_if_requested
    from discograd.cli.vae import load_dataset
    from discograd.models.sbn import PerLayer, SBNExperiment, StochasticBinaryNetwork, split_halves
    from discograd.train import CheckpointError, NonFiniteLossError, seeded

    def say(msg: str) -> None:
        if not args.quiet and is_main():  # rank 0 speaks for a multi-process run
            print(msg, flush=True)

    try:
        n_latent = args.n_latent or (200 if args.latent == "bernoulli" else 20)
        data = load_dataset(args.dataset)
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
        config = train_config(args)
    except (ValueError, ImportError, TypeError, OSError) as exc:
        print(f"discograd sbn: error: {exc}", file=sys.stderr)
        return 2
    # --nproc N: the settings are valid; run them in N processes instead of this one.
    code = launch_if_requested(args)
    if code is not None:
        return code

    n_tr, n_va, n_te = (int(getattr(data, s).shape[0]) for s in ("train", "valid", "test"))
    say(
        f"data: {data.name}: {data.description} ({n_tr} train / {n_va} valid / {n_te} test; "
        f"{args.binarization} binarization; upper {upper.shape[-1]} -> lower "
        f"{lower.shape[-1]} pixels)"
    )
    say(f"model: SBN {model.describe()}; estimator on every layer: {args.estimator} {settings}")
    try:
        result, summary = train_and_summarize(experiment, config, say, "sbn")
    except (NonFiniteLossError, CheckpointError) as exc:
        print(f"discograd sbn: {exc}", file=sys.stderr)
        return 1
    if summary is None:
        return 0  # not rank 0: rank 0 writes the files and prints the result
    if not args.no_plots:
        figures = draw_figures(experiment, Path(args.out), args)
        if figures:
            say("figures: " + ", ".join(str(f) for f in figures))
    test = result.final.get("test", {})
    print(
        f"test NLL of the lower half (m={args.eval_samples}): {test.get('nll', float('nan')):.3f} "
        f"nats; single-sample objective: {test.get('nll_1', float('nan')):.3f} nats  "
        f"[{result.step} steps, {result.elapsed:.1f} s, {summary['steps_per_second']} steps/s]",
        flush=True,
    )
    return 0


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
