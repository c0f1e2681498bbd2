"""``discograd compare EXPERIMENT``: one experiment, several estimators and seeds, one table.

Options after EXPERIMENT that compare does not know are passed to the experiment's command
(``discograd vae`` / ``sbn`` / ``semisup``), e.g.::

    discograd compare sbn --estimators reinforce,st,gumbel-softmax --seeds 3 --steps 500
    discograd compare vae --preset jang-bernoulli --estimators st,gumbel-softmax --seeds 2

The work is :func:`discograd.experiments.compare.compare`.
"""

from __future__ import annotations

import argparse
import sys

from discograd.cli._common import INTERRUPTED, HelpFormatter, prepare_out

PAPER_ESTIMATORS = "reinforce,darn,muprop,st,gumbel-softmax,st-gumbel-softmax"


def _add_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    def default(value):
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--estimators",
        default=default(PAPER_ESTIMATORS),
        metavar="A,B,...",
        help="estimators to compare: NAME or NAME:KEY=VALUE:... (KEY a temperature option: "
        "tau, tau-schedule, tau-min, anneal-rate, anneal-every; or an estimator option), e.g. "
        "st-gumbel-softmax:tau-schedule=exp",
    )
    p.add_argument("--seeds", type=int, default=default(3), help="seeds per estimator")
    p.add_argument("--first-seed", type=int, default=default(0), help="the first seed")
    p.add_argument(
        "--metric",
        default=default(None),
        help="metric of the figures and of the bold best row (default: neg_elbo for vae, nll "
        "for sbn, accuracy for semisup)",
    )
    p.add_argument(
        "--preset",
        default=default(None),
        help="a preset of the experiment (discograd.experiments.presets), applied as defaults "
        "under the passed-through options",
    )
    p.add_argument(
        "--out", default=default(None), metavar="DIR", help="output folder (runs/compare-EXP)"
    )
    p.add_argument("--quiet", action="store_true", default=default(False), help="no progress")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from discograd.experiments.compare import EXPERIMENTS

    p = subparsers.add_parser(
        "compare",
        help="run one experiment with several estimators and seeds; table and figures",
        description=(
            "Run EXPERIMENT (vae, sbn, semisup) once per estimator and seed, sequentially, and "
            "write results.md (mean and std over seeds of the final test metrics, wall time, "
            "steps per second), results.json and figures of the validation metric against "
            "steps and against seconds, one line per estimator. Options that compare does not "
            "know are passed to 'discograd EXPERIMENT'."
        ),
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("experiment", choices=EXPERIMENTS, help="the experiment to run")
    _add_options(p)
    p.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="compare's options and the experiment's options (e.g. --steps 500)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from discograd.experiments.compare import compare, parse_specs

    # Everything after EXPERIMENT arrives in args.options: take compare's own options from it
    # (allow_abbrev=False, so that --seed is not read as --seeds) and pass the rest on.
    inner = argparse.ArgumentParser(prog="discograd compare", allow_abbrev=False, add_help=False)
    _add_options(inner, defaults=False)
    try:
        own, passed = inner.parse_known_args(args.options)
    except SystemExit:
        return 2
    for key, value in vars(own).items():
        setattr(args, key, value)
    if passed and passed[0] == "--":
        passed = passed[1:]
    out = Path(args.out or f"runs/compare-{args.experiment}")
    try:
        specs = parse_specs(args.estimators)
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        prepare_out(out)  # before the first run: ValueError "--out OUT: reason"
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))

        def say(msg: str) -> None:
            if not args.quiet:
                print(msg, flush=True)

        record = compare(
            args.experiment,
            specs,
            seeds,
            passed,
            out,
            metric=args.metric,
            preset=args.preset,
            say=say,
        )
    except ValueError as exc:
        print(f"discograd compare: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ndiscograd compare: interrupted; the finished runs are in "
            f"{out / 'runs'} (no table was written)",
            file=sys.stderr,
        )
        return INTERRUPTED
    print(record["table"], flush=True)
    files = [str(out / "results.md"), str(out / "results.json"), *record["figures"]]
    print("wrote: " + ", ".join(files), flush=True)
    ok = any(r["status"] == "ok" for e in record["estimators"] for r in e["runs"])
    return 0 if ok else 1
