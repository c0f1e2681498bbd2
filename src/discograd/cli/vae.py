"""``discograd vae``: train a discrete VAE with any gradient estimator and report its bounds.

Trains :class:`discograd.models.DiscreteVAE` with :func:`discograd.train.fit`, then writes,
in the output folder: config.json, metrics.jsonl, checkpoint.pt, summary.json and three
figures (reconstructions.png, samples.png, training_curve.png); prints the final test negative
ELBO and importance-weighted bound in nats per example.

summary.json: ``seconds`` is the whole run's wall time (a resumed run's includes the time
before the interruption); ``train_seconds`` and ``steps_per_second`` leave out the time this
process spent evaluating (periodic and final evaluations; checkpoints stay in).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from discograd.cli._common import (
    HelpFormatter,
    add_data_options,
    add_estimator_options,
    add_loop_options,
    add_output_options,
    add_preset_option,
    build_estimator,
    check_device,
    check_enumeration,
    describe_estimator,
    int_list,
    load_dataset,
    run_command,
    speaker,
    train_and_report,
    train_config,
)

# build_estimator, check_device and load_dataset (the shared ones) stay importable from here.
__all__ = [
    "DEFAULTS",
    "add_parser",
    "build_estimator",
    "check_device",
    "draw_figures",
    "load_dataset",
    "run",
]

# Chosen by measurement on the embedded digits (test negative ELBO after 3000 steps, nats):
# st-gumbel-softmax beat gumbel-softmax (whose relaxed training transfers badly to exact
# samples) and reinforce; batch 256 and tau 0.5 beat batch 64/128 and tau 1.0 or 0.3.
LOOP = {"steps": 3000, "batch_size": 256, "lr": 2e-3, "eval_every": 500}
DEFAULTS = {
    "estimator": "st-gumbel-softmax",
    "tau": 0.5,
    "hidden": "256",  # parsed by --hidden's type
    **LOOP,
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "vae",
        help="train a discrete VAE on digits with a chosen gradient estimator",
        description=(
            "Train a discrete variational autoencoder (categorical or Bernoulli latents) by "
            "minimising the negative ELBO, its reconstruction term differentiated by the chosen "
            "estimator, and report the test negative ELBO and importance-weighted bound "
            "(nats per example, lower is better)."
        ),
        formatter_class=HelpFormatter,
    )
    add_preset_option(p, "vae", whose="Jang et al.'s, the official demo's")
    add_data_options(
        p.add_argument_group("data"),
        help="'digits' (embedded 8x8), 'mnist', 'fashion-mnist', 'binarized-mnist' or "
        "'mnist-npz:PATH' (e.g. mnist-npz:/work/shared/data/mnist-10k.npz)",
    )
    g = p.add_argument_group("estimator")
    add_estimator_options(
        g, default=DEFAULTS["estimator"], tau=DEFAULTS["tau"], tau_min=0.5, anneal_rate=3e-4
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--latent",
        choices=("categorical", "bernoulli"),
        default="categorical",
        help="kind of latent variables",
    )
    g.add_argument("--n-latent", type=int, default=8, help="number of latent variables N")
    g.add_argument(
        "--n-classes",
        type=int,
        default=8,
        help="classes K of each categorical latent (ignored for bernoulli)",
    )
    g.add_argument(
        "--hidden",
        type=int_list,
        default=DEFAULTS["hidden"],
        metavar="W1,W2,...",
        help="hidden layer widths of the encoder (the decoder mirrors them)",
    )
    g = p.add_argument_group("training")
    add_loop_options(g, **LOOP)
    g.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); models this small run fastest on one, "
        "and more threads on a busy machine slow them down many times over",
    )
    g = p.add_argument_group("evaluation and output")
    g.add_argument(
        "--iw-samples",
        type=int,
        default=100,
        help="samples m of the importance-weighted bound (0: skip it)",
    )
    add_output_options(g, out="runs/vae")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from discograd.models import DiscreteVAE, VAEExperiment
    from discograd.train import seeded

    say = speaker(args)

    def setup() -> Tuple[Any, Any, Dict[str, Any], Any]:
        if args.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {args.threads}")
        if args.iw_samples < 0:
            raise ValueError(
                f"--iw-samples must be >= 0 (0: skip the bound), got {args.iw_samples}"
            )
        if args.threads:  # this process is ours: the command line's choice
            torch.set_num_threads(args.threads)
        check_device(args.device)
        data = load_dataset(args.dataset, args.data_dir)
        estimator, est_settings = build_estimator(args)
        categorical = args.latent == "categorical"
        check_enumeration(
            estimator,
            args.n_classes**args.n_latent if categorical else 2**args.n_latent,
            f"--n-latent {args.n_latent} latents of --n-classes {args.n_classes} classes"
            if categorical
            else f"--n-latent {args.n_latent} Bernoulli latents",
        )
        if args.latent not in getattr(estimator, "distributions", (args.latent,)):
            raise ValueError(
                f"estimator {args.estimator!r} does not support --latent {args.latent} "
                f"(it supports: {', '.join(estimator.distributions)})"
            )
        with seeded(args.seed):
            model = DiscreteVAE(
                data.dim, args.n_latent, args.n_classes, args.hidden, latent=args.latent
            )
        model.init_output_bias(data.train.mean(0))
        experiment = VAEExperiment(
            data, model, estimator, iw_samples=args.iw_samples, settings=est_settings
        )
        return data, experiment, est_settings, train_config(args)

    def train(built: Tuple[Any, Any, Dict[str, Any], Any]) -> int:
        data, experiment, est_settings, config = built
        n_tr, n_va, n_te = (int(getattr(data, s).shape[0]) for s in ("train", "valid", "test"))
        h, w = data.image_shape
        say(
            f"data: {data.name}: {data.description} ({n_tr} train / {n_va} valid / {n_te} "
            f"test, {h}x{w}, dynamically binarized)"
        )
        latent = (
            f"{args.n_latent} categorical x {experiment.model.n_classes} classes"
            if args.latent == "categorical"
            else f"{args.n_latent} Bernoulli"
        )
        estimator = experiment.estimator
        name = getattr(estimator, "name", type(estimator).__name__)
        say(
            f"model: DiscreteVAE, {latent}, hidden {list(args.hidden)}; estimator: "
            f"{describe_estimator(name, est_settings)}"
        )
        return train_and_report(
            experiment,
            config,
            args,
            "vae",
            draw=lambda: draw_figures(experiment, data, Path(args.out), args),
            result_line=lambda test: result_line(test, args.iw_samples),
            rate=False,
        )

    return run_command("vae", args, setup, train)


# ---------------------------------------------------------------------------------------------


def result_line(test: Dict[str, Any], iw_samples: int) -> str:
    """The test bounds, as the command prints them."""
    line = f"test negative ELBO: {test.get('neg_elbo', float('nan')):.3f} nats"
    if "neg_iw" in test:
        line += f"; importance-weighted bound (m={iw_samples}): {test['neg_iw']:.3f} nats"
    return line


def draw_figures(experiment: Any, data: Any, out: Path, args: argparse.Namespace) -> List[Path]:
    import torch

    from discograd.plotting import PlottingUnavailable, image_grid, read_jsonl, training_curve

    model = experiment.model.eval()
    shape = data.image_shape
    name = args.estimator
    try:
        with torch.no_grad():
            x = experiment.binarized("test")[:16]
            recon = model.reconstruct(x.to(model.decoder[-1].weight.device)).cpu()
            pics = torch.cat([x[:8], recon[:8], x[8:16], recon[8:16]])
            gen = torch.Generator(model.decoder[-1].weight.device).manual_seed(args.seed)
            samples = model.sample_prior(32, gen).cpu()
        return [
            image_grid(
                pics,
                out / "reconstructions.png",
                image_shape=shape,
                row_labels=["test", "recon.", "test", "recon."],
                title=f"test digits, reconstructions ({name})",
            ),
            image_grid(
                samples,
                out / "samples.png",
                image_shape=shape,
                title=f"prior samples, decoder means ({name})",
            ),
            training_curve(
                read_jsonl(out / "metrics.jsonl"),
                out / "training_curve.png",
                title=f"discrete VAE on {data.name}, {name}",
            ),
        ]
    except PlottingUnavailable as exc:
        print(f"discograd vae: no figures: {exc}", file=sys.stderr)
        return []
