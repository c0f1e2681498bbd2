"""``discograd gan``: a GAN over discrete sequences, trained with a chosen gradient estimator.

Builds the data (:func:`discograd.experiments.sequences.make_data`), the generator and
discriminator (:mod:`discograd.experiments.gan`) and trains them with
:func:`discograd.train.fit`. Writes, in the output folder: config.json, metrics.jsonl,
checkpoint.pt, summary.json, samples.txt (generated sequences, each marked) and curves.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

from discograd.cli._common import (
    add_training_options,
    estimator_parameters,
    is_main,
    launch_if_requested,
    parse_estimator_options,
    training_settings,
)

DEFAULTS = {
    "estimator": "gumbel-softmax",
    "steps": 2000,
    "batch_size": 64,
    "lr": 1e-3,
    "d_lr": 1e-3,
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from discograd.experiments.gan import PATHWISE, SCORE_FUNCTION

    p = subparsers.add_parser(
        "gan",
        help="train a GAN on discrete sequences (grammar or Markov-oracle data)",
        description=(
            "Train a GAN whose generator is an LSTM emitting one token per step, the tokens "
            "drawn and differentiated by the chosen estimator: pathwise ("
            + ", ".join(PATHWISE)
            + "; the sample is fed back into the LSTM) or score function ("
            + ", ".join(SCORE_FUNCTION)
            + "; the discriminator's score rewards the whole sequence). The discriminator and "
            "generator are updated alternately (the seeds' Algorithm 1). Reports the fraction "
            "of generated sequences the grammar accepts (grammar data) or their NLL under the "
            "true chain (Markov data), and their diversity."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data (made by the library, no download)")
    g.add_argument(
        "--data",
        choices=("grammar", "markov"),
        default="grammar",
        help="grammar: strings of a context-free grammar, padded with '_'; markov: "
        "sequences of a random first-order Markov chain (the 'oracle')",
    )
    g.add_argument(
        "--grammar",
        choices=("arithmetic", "parentheses"),
        default="arithmetic",
        help="arithmetic: S -> x | S+S | S-S | S*S | S/S (Kusner & Hernandez-Lobato "
        "2016); parentheses: S -> x | S+S | S*S | (S)",
    )
    g.add_argument(
        "--length",
        type=int,
        default=12,
        help="sequence length L (grammar: maximum string length, padded to L)",
    )
    g.add_argument("--vocab-size", type=int, default=10, help="markov: number of tokens")
    g.add_argument(
        "--oracle-scale",
        type=float,
        default=2.0,
        help="markov: scale of the random transition logits (larger: more predictable chain)",
    )
    g.add_argument("--n-train", type=int, default=5000, help="training sequences")
    g.add_argument(
        "--n-valid",
        type=int,
        default=1000,
        help="held-out sequences (for the generator's NLL of data)",
    )
    g.add_argument(
        "--data-seed", type=int, default=0, help="seed of the data (and of the Markov oracle)"
    )
    g = p.add_argument_group("estimator")
    g.add_argument(
        "--estimator",
        default=DEFAULTS["estimator"],
        metavar="NAME",
        choices=PATHWISE + SCORE_FUNCTION,
        help="gradient estimator, one of: " + ", ".join(PATHWISE + SCORE_FUNCTION),
    )
    g.add_argument(
        "--tau",
        type=float,
        default=0.5,
        help="temperature of the estimators that take one (initial value with the exp "
        "schedule); reinmax's paper recommends tau >= 1 with --tau-schedule constant",
    )
    g.add_argument(
        "--tau-schedule",
        choices=("constant", "exp"),
        default="exp",
        help="exp: tau = max(tau_min, tau * exp(-rate * t)), t rounded down to a "
        "multiple of --anneal-every (discograd.schedules.ExponentialDecay)",
    )
    g.add_argument("--tau-min", type=float, default=0.1, help="floor of the exp schedule")
    g.add_argument("--anneal-rate", type=float, default=3e-3, help="rate of the exp schedule")
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
        help="extra option for the estimator, e.g. n_samples=4 (rloo), "
        "baseline=ema (reinforce), k=10 (gumbel-rao); repeatable",
    )
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, default=64, help="LSTM units of the generator")
    g.add_argument("--embed", type=int, default=32, help="token embedding size (G and D)")
    g.add_argument(
        "--discriminator",
        choices=("cnn", "lstm"),
        default="cnn",
        help="discriminator: 1-D CNN (widths 2, 3, 4) or LSTM over token vectors",
    )
    g.add_argument(
        "--d-hidden",
        type=int,
        default=64,
        help="discriminator channels per width (cnn) or units (lstm)",
    )
    g.add_argument(
        "--no-minibatch-std",
        action="store_true",
        help="drop the discriminator's minibatch-spread feature (the guard against mode collapse)",
    )
    g.add_argument(
        "--g-ema",
        type=float,
        default=0.995,
        help="decay of the moving average of the generator's weights, which evaluation and "
        "samples.txt use (0: the raw generator); the raw one's numbers are logged as raw_*",
    )
    g.add_argument(
        "--g-loss",
        choices=("logit", "nonsaturating"),
        default="logit",
        help="generator loss: logit = -log(D / (1 - D)) (the seeds' Algorithm 1) "
        "or nonsaturating = -log D",
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--steps",
        type=int,
        default=DEFAULTS["steps"],
        help="generator updates (each preceded by --d-steps discriminator updates)",
    )
    g.add_argument(
        "--d-steps", type=int, default=2, help="discriminator updates per generator update"
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS["batch_size"],
        help="real and generated sequences per update",
    )
    g.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="generator Adam rate")
    g.add_argument(
        "--grad-clip",
        type=float,
        default=0.0,
        help="clip the generator's gradient to this global norm (0: no clipping)",
    )
    g.add_argument(
        "--d-lr",
        type=float,
        default=DEFAULTS["d_lr"],
        help="discriminator Adam rate (betas 0.5, 0.999)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the models and training")
    g.add_argument(
        "--eval-every", type=int, default=250, help="evaluate every N steps (0: only at the end)"
    )
    g.add_argument(
        "--eval-samples", type=int, default=1000, help="sequences drawn at each evaluation"
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
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out (same settings)",
    )
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    # With --nproc each process trains on its share of the batch; the discriminator's
    # gradients are averaged over the processes too (GANExperiment.loss), and with
    # --precision fp16 its updates get their own loss scaler.
    add_training_options(g)
    g = p.add_argument_group("output")
    g.add_argument("--out", default="runs/gan", metavar="DIR", help="output folder")
    g.add_argument(
        "--n-show", type=int, default=100, help="generated sequences written to samples.txt"
    )
    g.add_argument("--no-plots", action="store_true", help="do not draw curves.png")
    g.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from discograd.experiments.gan import (
        Discriminator,
        GANExperiment,
        Generator,
        SequenceGAN,
        plot_curves,
    )
    from discograd.experiments.sequences import make_data
    from discograd.train import CheckpointError, NonFiniteLossError, TrainConfig, fit, seeded

    def say(msg: str) -> None:
        if not args.quiet and is_main():  # rank 0 speaks for a multi-process run
            print(msg, flush=True)

    try:
        estimator, settings = build_estimator(args)
        data = make_data(
            args.data,
            n_train=args.n_train,
            n_valid=args.n_valid,
            length=args.length,
            seed=args.data_seed,
            grammar=args.grammar,
            vocab_size=args.vocab_size,
            oracle_scale=args.oracle_scale,
        )
        with seeded(args.seed):
            model = SequenceGAN(
                Generator(data.vocab_size, args.hidden, args.embed),
                Discriminator(
                    data.vocab_size,
                    args.discriminator,
                    args.d_hidden,
                    args.embed,
                    minibatch_std=not args.no_minibatch_std,
                ),
                d_lr=args.d_lr,
                g_ema=args.g_ema,
            )
        experiment = GANExperiment(
            data,
            model,
            estimator,
            g_loss=args.g_loss,
            d_steps=args.d_steps,
            eval_samples=args.eval_samples,
            settings=settings,
        )
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            grad_clip=args.grad_clip,
            seed=args.seed,
            eval_every=args.eval_every,
            ckpt_every=args.ckpt_every,
            log_every=args.log_every,
            out_dir=args.out,
            resume=args.resume,
            quiet=args.quiet,
            eval_splits=("samples",),
            final_splits=("samples",),
            device=args.device,
            **training_settings(args),
        )
    except (ValueError, TypeError) as exc:
        print(f"discograd gan: error: {exc}", file=sys.stderr)
        return 2
    # --nproc N: the settings are valid; run them in N processes instead of this one.
    code = launch_if_requested(args)
    if code is not None:
        return code

    say(
        f"data: {data.name}: {data.description} ({data.train.shape[0]} train / "
        f"{data.valid.shape[0]} held out)"
    )
    say(f"estimator: {_describe(args, settings)}; discriminator: {args.discriminator}")
    say(f"output: {Path(args.out).resolve()}")
    try:
        result = fit(experiment, config)
    except (NonFiniteLossError, CheckpointError) as exc:
        print(f"discograd gan: {exc}", file=sys.stderr)
        return 1
    if not is_main():
        return 0  # rank 0 writes the files and prints the result

    out = Path(args.out)
    final = result.final["samples"]
    tokens = experiment.samples(max(args.n_show, 1), seed=args.seed)
    write_samples(out / "samples.txt", data, tokens[: args.n_show], final, args)
    summary = {
        "steps": result.step,
        "seconds": round(result.elapsed, 2),
        "torch_threads": torch.get_num_threads(),
        "processes": result.world_size,
        "final": final,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_plots:
        from discograd.plotting import PlottingUnavailable, read_jsonl

        try:
            path = plot_curves(
                read_jsonl(out / "metrics.jsonl"),
                out / "curves.png",
                title=f"sequence GAN on {data.name}, {args.estimator}",
            )
            say(f"figure: {path}")
        except PlottingUnavailable as exc:
            print(f"discograd gan: no figure: {exc}", file=sys.stderr)
    print(summary_line(final, result.step, result.elapsed), flush=True)
    return 0


def summary_line(final: Dict[str, Any], steps: int, seconds: float) -> str:
    n = final.get("samples", "?")
    if "grammatical" in final:
        head = f"grammatical: {100 * final['grammatical']:.1f}% of {n} samples"
    else:
        head = (
            f"oracle NLL: {final['oracle_nll']:.3f} nats/token (entropy rate "
            f"{final['oracle_entropy_rate']:.3f})"
        )
    line = (
        f"{head}; distinct sequences: {final['distinct_seqs']}; distinct 3-grams: "
        f"{final['distinct_3grams']}; G's NLL of held-out data: {final['g_nll']:.3f} "
        f"nats/token"
    )
    if "raw_distinct_seqs" in final:
        quality = (
            f"{100 * final['raw_grammatical']:.1f}% grammatical"
            if "raw_grammatical" in final
            else f"oracle NLL {final['raw_oracle_nll']:.3f}"
        )
        line = (
            f"averaged generator: {line}; raw generator: {quality}, "
            f"{final['raw_distinct_seqs']} distinct"
        )
    return line + (f"  [{steps} steps, {seconds:.1f} s]" if seconds else "")


def write_samples(
    path: Path, data: Any, tokens: Any, final: Dict[str, Any], args: argparse.Namespace
) -> None:
    """samples.txt: the final metrics, then one generated sequence a line with its mark."""
    lines = [
        f"# {len(tokens)} sequences from the generator ({args.estimator}, "
        f"{args.data}), seed {args.seed}" + (", weights averaged" if args.g_ema else ""),
        "# " + summary_line(final, args.steps, 0.0),
    ]
    texts = data.decode(tokens)
    if hasattr(data, "grammar"):
        from discograd.experiments.sequences import grammatical_fraction

        lines.append("# mark: ok = the grammar accepts it, -- = it does not")
        lines += [
            f"{'ok' if grammatical_fraction([t], data.grammar) else '--'}  {t}" for t in texts
        ]
    else:
        nll = data.oracle.nll(tokens).tolist()
        lines.append("# each line: oracle NLL (nats/token), then the tokens")
        lines += [f"{v:6.3f}  {t}" for v, t in zip(nll, texts)]
    path.write_text("\n".join(lines) + "\n")


def build_estimator(args: argparse.Namespace) -> Tuple[Any, Dict[str, Any]]:
    """The estimator, given the temperature schedule when it takes a temperature."""
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


def _describe(args: argparse.Namespace, settings: Dict[str, Any]) -> str:
    text = args.estimator
    tau = settings.get("tau")
    if tau and tau["schedule"] == "constant":
        text += f" (tau {tau['tau']})"
    elif tau:
        text += f" (tau {tau['tau0']} -> {tau['tau_min']}, exp rate {tau['rate']})"
    if settings["estimator_options"]:
        text += " " + ", ".join(f"{k}={v}" for k, v in settings["estimator_options"].items())
    return text
