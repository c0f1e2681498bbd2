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
    HelpFormatter,
    add_estimator_options,
    add_loop_options,
    add_output_options,
    build_estimator,
    check_device,
    describe_estimator,
    is_main,
    run_command,
    speaker,
    train_config,
)

LOOP = {"steps": 2000, "batch_size": 64, "lr": 1e-3, "eval_every": 250}
DEFAULTS = {"estimator": "gumbel-softmax", "d_lr": 1e-3, **LOOP}


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
        formatter_class=HelpFormatter,
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
    add_estimator_options(
        g,
        default=DEFAULTS["estimator"],
        choices=PATHWISE + SCORE_FUNCTION,
        tau=0.5,
        schedule="exp",
        tau_min=0.1,
        anneal_rate=3e-3,
        note="reinmax's paper recommends tau >= 1 with --tau-schedule constant",
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
    # With --nproc each process trains on its share of the batch; the discriminator's
    # gradients are averaged over the processes too (GANExperiment.loss), and with
    # --precision fp16 its updates get their own loss scaler.
    add_loop_options(
        g,
        **LOOP,
        helps={
            "steps": "generator updates (each preceded by --d-steps discriminator updates)",
            "batch_size": "real and generated sequences per update",
            "lr": "generator Adam rate",
            "seed": "seed of the models and training",
            "eval_every": "evaluate every N steps (0: only at the end)",
        },
    )
    g.add_argument(
        "--d-steps", type=int, default=2, help="discriminator updates per generator update"
    )
    g.add_argument(
        "--d-lr",
        type=float,
        default=DEFAULTS["d_lr"],
        help="discriminator Adam rate (betas 0.5, 0.999)",
    )
    g.add_argument(
        "--grad-clip",
        type=float,
        default=0.0,
        help="clip the generator's gradient to this global norm (0: no clipping)",
    )
    g.add_argument(
        "--eval-samples", type=int, default=1000, help="sequences drawn at each evaluation"
    )
    g = p.add_argument_group("output")
    add_output_options(g, out="runs/gan", figures="curves.png")
    g.add_argument(
        "--n-show", type=int, default=100, help="generated sequences written to samples.txt"
    )
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
    from discograd.train import fit, seeded

    say = speaker(args)

    def setup() -> Tuple[Any, Any, Dict[str, Any], Any]:
        check_device(args.device)
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
        config = train_config(
            args,
            grad_clip=args.grad_clip,
            eval_splits=("samples",),
            final_splits=("samples",),
        )
        return data, experiment, settings, config

    def train(built: Tuple[Any, Any, Dict[str, Any], Any]) -> int:
        data, experiment, settings, config = built
        say(
            f"data: {data.name}: {data.description} ({data.train.shape[0]} train / "
            f"{data.valid.shape[0]} held out)"
        )
        say(
            f"estimator: {describe_estimator(args.estimator, settings)}; discriminator: "
            f"{args.discriminator}"
        )
        say(f"output: {Path(args.out).resolve()}")
        result = fit(experiment, config)
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

    return run_command("gan", args, setup, train, errors=(ValueError, TypeError))


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
