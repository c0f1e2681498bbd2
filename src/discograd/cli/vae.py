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
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from discograd.cli._common import (
    add_training_options,
    estimator_parameters,
    is_main,
    launch_if_requested,
    parse_estimator_options,
    training_settings,
)

# Chosen by measurement on the embedded digits (test negative ELBO after 3000 steps, nats):
# st-gumbel-softmax beat gumbel-softmax (whose relaxed training transfers badly to exact
# samples) and reinforce; batch 256 and tau 0.5 beat batch 64/128 and tau 1.0 or 0.3.
DEFAULTS = {
    "estimator": "st-gumbel-softmax",
    "tau": 0.5,
    "steps": 3000,
    "batch_size": 256,
    "lr": 2e-3,
    "hidden": "256",  # parsed by --hidden's type
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from discograd.experiments.presets import PresetAction

    p.add_argument(
        "--preset",
        action=PresetAction,
        command="vae",
        default=None,
        help="named settings (Jang et al.'s, the official demo's); options given on the command "
        "line win",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="digits",
        help="data set: 'digits' (embedded 8x8 digits) or a name discograd.data.load knows",
    )
    g = p.add_argument_group("estimator")
    g.add_argument(
        "--estimator",
        default=DEFAULTS["estimator"],
        metavar="NAME",
        help="gradient estimator, one of: " + ", ".join(_estimator_names()),
    )
    g.add_argument(
        "--tau",
        type=float,
        default=DEFAULTS["tau"],
        help="temperature (initial temperature with --tau-schedule exp); used by "
        "estimators that take a temperature",
    )
    g.add_argument(
        "--tau-schedule",
        choices=("constant", "exp"),
        default="constant",
        help="constant, or exp: tau = max(tau_min, tau * exp(-rate * t)), t rounded "
        "down to a multiple of --anneal-every (Jang et al., 2016)",
    )
    g.add_argument("--tau-min", type=float, default=0.5, help="floor of the exp schedule")
    g.add_argument("--anneal-rate", type=float, default=3e-4, help="rate of the exp schedule")
    g.add_argument(
        "--anneal-every",
        type=int,
        default=100,
        help="steps between temperature updates of the exp schedule",
    )
    g.add_argument(
        "--estimator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra option passed to the estimator, e.g. n_samples=4 or "
        "baseline=ema (repeatable; values are Python literals or strings)",
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
        type=_int_list,
        default=DEFAULTS["hidden"],
        metavar="W1,W2,...",
        help="hidden layer widths of the encoder (the decoder mirrors them)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="batch size")
    g.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate")
    g.add_argument("--seed", type=int, default=0, help="seed of every random stream")
    g.add_argument(
        "--eval-every",
        type=int,
        default=500,
        help="evaluate on the validation split every N steps (0: only at the end)",
    )
    g.add_argument(
        "--ckpt-every",
        type=int,
        default=1000,
        help="write a checkpoint every N steps (0: only at the end)",
    )
    g.add_argument(
        "--log-every",
        type=int,
        default=50,
        help="write a training row to metrics.jsonl every N steps",
    )
    g.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, ...)")
    g.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); models this small run fastest on one, "
        "and more threads on a busy machine slow them down many times over",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out (same settings)",
    )
    add_training_options(g)
    g = p.add_argument_group("evaluation and output")
    g.add_argument(
        "--iw-samples",
        type=int,
        default=100,
        help="samples m of the importance-weighted bound (0: skip it)",
    )
    g.add_argument("--out", default="runs/vae", metavar="DIR", help="output folder")
    g.add_argument("--no-plots", action="store_true", help="do not draw the PNG figures")
    g.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from discograd.models import DiscreteVAE, VAEExperiment
    from discograd.train import CheckpointError, NonFiniteLossError, TrainConfig, fit, seeded

    def say(msg: str) -> None:
        if not args.quiet and is_main():  # rank 0 speaks for a multi-process run
            print(msg, flush=True)

    if args.threads < 0:
        print("discograd vae: error: --threads must be >= 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)  # this process is ours: the command line's choice
    try:
        device = check_device(args.device)
        data = load_dataset(args.dataset)
        estimator, est_settings = build_estimator(args)
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
        config = TrainConfig(
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
            device=device,
            **training_settings(args),
        )
    except (ValueError, ImportError, TypeError, OSError) as exc:
        print(f"discograd vae: error: {exc}", file=sys.stderr)
        return 2
    # --nproc N: the settings are valid; run them in N processes instead of this one.
    code = launch_if_requested(args)
    if code is not None:
        return code

    n_tr, n_va, n_te = (int(getattr(data, s).shape[0]) for s in ("train", "valid", "test"))
    h, w = data.image_shape
    say(
        f"data: {data.name}: {data.description} ({n_tr} train / {n_va} valid / {n_te} test, "
        f"{h}x{w}, dynamically binarized)"
    )
    latent = (
        f"{args.n_latent} categorical x {model.n_classes} classes"
        if args.latent == "categorical"
        else f"{args.n_latent} Bernoulli"
    )
    say(
        f"model: DiscreteVAE, {latent}, hidden {list(args.hidden)}; estimator: "
        f"{_describe(estimator, est_settings)}"
    )
    say(f"output: {Path(args.out).resolve()}")
    torch_threads = torch.get_num_threads()
    eval_timer = _time_evaluations(experiment)
    try:
        result = fit(experiment, config)
    except (NonFiniteLossError, CheckpointError) as exc:
        print(f"discograd vae: {exc}", file=sys.stderr)
        return 1
    if not is_main():
        return 0  # rank 0 writes the files and prints the result

    out = Path(args.out)
    if not args.no_plots:
        figures = draw_figures(experiment, data, out, args)
        if figures:
            say("figures: " + ", ".join(str(f) for f in figures))
    # Training only: the evaluations' time (periodic and final) is not part of a step's cost.
    train_seconds = max(result.elapsed - eval_timer.seconds, 1e-9)
    summary = {
        "steps": result.step,
        "seconds": round(result.elapsed, 2),
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(result.step / train_seconds, 2),
        "device": device,
        "torch_threads": torch_threads,
        "processes": result.world_size,
        **{split: metrics for split, metrics in result.final.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    test = result.final.get("test", {})
    line = f"test negative ELBO: {test.get('neg_elbo', float('nan')):.3f} nats"
    if "neg_iw" in test:
        line += f"; importance-weighted bound (m={args.iw_samples}): {test['neg_iw']:.3f} nats"
    print(line + f"  [{result.step} steps, {result.elapsed:.1f} s]", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------


def check_device(text: str) -> str:
    """``--device`` checked before any work: a torch device string this machine has.

    Returns it unchanged; ValueError naming --device for a malformed string, a device type
    without a backend here (cuda without a GPU, ...) or an index past the devices present.
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"--device {text!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps): {exc}"
        ) from None
    if device.type == "cpu":
        return text
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if not callable(available) or not available():
        raise ValueError(
            f"--device {text!r}: no {device.type} device is available to this torch "
            f"({torch.__version__}); use --device cpu"
        )
    count = getattr(backend, "device_count", None)
    present = count() if callable(count) else None
    if device.index is not None and isinstance(present, int) and device.index >= present:
        raise ValueError(
            f"--device {text!r}: this machine has {present} {device.type} device(s), numbered "
            f"from 0"
        )
    return text


class _EvalTimer:
    seconds = 0.0


def _time_evaluations(experiment: Any) -> _EvalTimer:
    """Wrap ``experiment.evaluate`` to add up its wall time (to report training-only rates)."""
    import time

    timer, evaluate = _EvalTimer(), experiment.evaluate

    def timed(split: str, generator: Any) -> Any:
        start = time.perf_counter()
        try:
            return evaluate(split, generator)
        finally:
            timer.seconds += time.perf_counter() - start

    experiment.evaluate = timed
    return timer


def load_dataset(name: str) -> Any:
    """'digits' from the package itself; any other name through ``discograd.data.load``."""
    from discograd import data as data_module

    if name == "digits":
        return data_module.load_digits()
    load = getattr(data_module, "load", None)
    if load is None:
        raise ValueError(f"unknown --dataset {name!r}; this version of discograd has: digits")
    try:
        return load(name)
    except (ValueError, ImportError, TypeError, OSError):
        raise  # the data package's errors name the file already
    except Exception as exc:  # e.g. zipfile.BadZipFile from a truncated .npz
        raise ValueError(
            f"--dataset {name!r} could not be read ({type(exc).__name__}: {exc}); is the file "
            f"truncated or corrupt?"
        ) from exc


def build_estimator(args: argparse.Namespace) -> Tuple[Any, Dict[str, Any]]:
    """The estimator named by --estimator, given the temperature schedule when it takes one."""
    from discograd import estimators, schedules

    options = parse_estimator_options(args.estimator_option)
    settings: Dict[str, Any] = {"estimator_options": {k: repr(v) for k, v in options.items()}}
    if "tau" in estimator_parameters(args.estimator) and "tau" not in options:
        if args.tau_schedule == "exp":
            options["tau"] = schedules.ExponentialDecay(
                args.tau, args.anneal_rate, args.tau_min, args.anneal_every
            )
            settings["tau"] = {
                "schedule": "exp",
                "tau0": args.tau,
                "rate": args.anneal_rate,
                "tau_min": args.tau_min,
                "every": args.anneal_every,
            }
        else:
            options["tau"] = args.tau
            settings["tau"] = {"schedule": "constant", "tau": args.tau}
    return estimators.get(args.estimator, **options), settings


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


def _estimator_names() -> List[str]:
    from discograd.estimators import available

    return available()


def _describe(estimator: Any, settings: Dict[str, Any]) -> str:
    text = getattr(estimator, "name", type(estimator).__name__)
    tau = settings.get("tau")
    if tau and tau["schedule"] == "constant":
        text += f" (tau {tau['tau']})"
    elif tau:
        text += f" (tau {tau['tau0']} -> {tau['tau_min']}, exp rate {tau['rate']})"
    if settings["estimator_options"]:
        text += " " + ", ".join(f"{k}={v}" for k, v in settings["estimator_options"].items())
    return text


def _int_list(text: str) -> Tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values
