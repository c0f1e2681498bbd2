"""Semi-supervised classification with M2 (``discograd semisup``), and the speed of sampling y
against marginalizing it as the number of classes grows (Jang et al., 2016, section 4.3).

``run`` trains :class:`~discograd.models.m2.M2` with :func:`discograd.train.fit` and writes
config.json, metrics.jsonl, checkpoint.pt, summary.json (test accuracy, negative ELBO with y
marginalized, training steps per second) and training_curve.png. With ``--nproc N`` it trains
in N processes (:meth:`~discograd.models.m2.SemiSupervisedExperiment.shard_batch` splits each
batch's labeled and unlabeled parts among them so that the averaged gradient is the
one-process batch's); rank 0 alone writes.

``measure_speed`` (``discograd semisup --speed``) times training steps of the same model with
each estimator of y (``exact`` = Kingma et al.'s marginalization, K passes of the encoder and
decoder per unlabeled example; ``gumbel-softmax`` / ``st-gumbel-softmax``: one pass) for each
number of classes, interleaving the estimators round by round so that a change in the machine's
load hits them alike, and reports the median steps per second and the speed-up of sampling over
marginalization. It is a timing harness around the experiment's ``loss`` and an Adam step (the
same work as one step of :func:`~discograd.train.fit`), not a second training loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from discograd import distributed
from discograd.models.m2 import SemiSupervisedExperiment

__all__ = ["build_experiment", "format_speed_table", "measure_speed", "run"]


def build_experiment(
    args: argparse.Namespace, data: Any, estimator: Optional[nn.Module] = None
) -> SemiSupervisedExperiment:
    """M2 and its experiment from the options (``estimator`` overrides --estimator)."""
    from discograd.experiments.sbn import build_estimators
    from discograd.models.m2 import M2
    from discograd.train import seeded

    settings: Dict[str, Any] = {}
    est: nn.Module
    if estimator is None:
        if args.estimator == "exact" and not any(
            o.startswith("batch_dims=") for o in args.estimator_option
        ):
            # f's batch dims are known (one: the examples); saves Exact's probing call of f.
            options = [*args.estimator_option, "batch_dims=1"]
            args = argparse.Namespace(**{**vars(args), "estimator_option": options})
        (est,), settings = build_estimators(args, 1, "categorical")
    else:
        est = estimator
    with seeded(args.seed):
        model = M2(data.dim, args.n_classes, z_dim=args.z_dim, hidden=args.hidden)
    model.init_output_bias(data.train.mean(0))
    experiment = SemiSupervisedExperiment(
        data,
        model,
        est,
        n_labeled=args.n_labeled,
        alpha=args.alpha,
        label_seed=args.label_seed,
        settings={**settings, "preset": getattr(args, "preset", None)},
    )
    return experiment


def run(args: argparse.Namespace) -> int:
    """The ``discograd semisup`` command (options in :mod:`discograd.cli.semisup`)."""
    from discograd.cli._common import (
        check_device,
        load_dataset,
        run_command,
        speaker,
        train_and_report,
        train_config,
    )

    say = speaker(args)
    if args.speed:  # time training steps instead of training; its errors are usage errors too
        return run_command("semisup", args, lambda: _run_speed(args, say), lambda code: code)

    def setup() -> Tuple[Any, SemiSupervisedExperiment, Any]:
        check_device(args.device)
        data = load_dataset(args.dataset, args.data_dir)
        return data, build_experiment(args, data), train_config(args)

    def train(built: Tuple[Any, SemiSupervisedExperiment, Any]) -> int:
        data, experiment, config = built
        say(
            f"data: {data.name}: {data.description}; {experiment.n_labeled} labeled / "
            f"{experiment.x_unlabeled.shape[0]} unlabeled training images, {args.n_classes} "
            f"classes"
        )
        say(
            f"model: M2, hidden {list(args.hidden)}, z {args.z_dim}; y on unlabeled data: "
            f"{args.estimator}{' (marginalization)' if args.estimator == 'exact' else ''}"
        )
        return train_and_report(
            experiment,
            config,
            args,
            "semisup",
            draw=lambda: _draw_curve(data, Path(args.out), args),
            result_line=lambda test: (
                f"test accuracy: {100 * test.get('accuracy', float('nan')):.1f}%; negative "
                f"ELBO (y marginalized): {test.get('neg_elbo', float('nan')):.3f} nats"
            ),
        )

    return run_command("semisup", args, setup, train)


def _draw_curve(data: Any, out: Path, args: argparse.Namespace) -> List[Path]:
    from discograd.plotting import PlottingUnavailable, read_jsonl, training_curve

    try:
        path = training_curve(
            read_jsonl(out / "metrics.jsonl"),
            out / "training_curve.png",
            eval_key="neg_elbo",
            title=f"M2 on {data.name}, {args.n_classes} classes, {args.estimator}",
        )
    except PlottingUnavailable as exc:
        print(f"discograd semisup: no figures: {exc}", file=sys.stderr)
        return []
    return [path]


# ---------------------------------------------------------------------------------------------
# Speed of sampling against marginalization.


def measure_speed(
    args: argparse.Namespace,
    data: Any,
    classes: Sequence[int],
    estimators: Sequence[str],
    steps: int = 20,
    rounds: int = 3,
    warmup: int = 2,
) -> List[Dict[str, Any]]:
    """Median training steps per second of M2, for each number of classes and estimator.

    Each (classes, estimator) pair gets its own model and Adam optimizer; rounds time
    ``steps`` steps of every estimator in turn. Rows: classes, estimator, steps_per_second
    (median over rounds), the per-round values, and ``speedup`` over ``exact`` when measured.
    """
    from discograd import estimators as registry

    device = torch.device(getattr(args, "device", "cpu"))
    rows: List[Dict[str, Any]] = []
    for k in classes:
        runs = {}
        for name in estimators:
            options = {"batch_dims": 1} if name == "exact" else {}
            sub = argparse.Namespace(**{**vars(args), "n_classes": k})
            exp = build_experiment(sub, data, registry.get(name, **options))
            exp.model.to(device)
            exp.estimator.to(device)
            opt = torch.optim.Adam(
                list(exp.model.parameters()) + list(exp.estimator.parameters()), lr=args.lr
            )
            data_gen = torch.Generator().manual_seed(args.seed)
            noise_gen = torch.Generator(device).manual_seed(args.seed)
            batches = _endless(exp, args.batch_size, data_gen, device)
            runs[name] = (exp, opt, noise_gen, batches)
            _steps(exp, opt, noise_gen, batches, warmup)
        rates: Dict[str, List[float]] = {name: [] for name in estimators}
        for _ in range(rounds):
            for name in estimators:
                exp, opt, noise_gen, batches = runs[name]
                _sync(device)
                start = time.perf_counter()
                _steps(exp, opt, noise_gen, batches, steps)
                _sync(device)
                rates[name].append(steps / (time.perf_counter() - start))
        for name in estimators:
            rows.append(
                {
                    "classes": k,
                    "estimator": name,
                    "steps_per_second": statistics.median(rates[name]),
                    "rounds": [round(r, 2) for r in rates[name]],
                }
            )
        if "exact" in rates:
            base = statistics.median(rates["exact"])
            for row in rows[-len(estimators) :]:
                row["speedup"] = row["steps_per_second"] / base
    return rows


def _endless(exp: Any, batch_size: int, gen: torch.Generator, device: torch.device):
    while True:
        for batch in exp.batches(batch_size, gen):
            yield {key: value.to(device) for key, value in batch.items()}


def _sync(device: torch.device) -> None:
    # CUDA runs asynchronously: wait for the queued work before reading the clock.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steps(exp: Any, opt: torch.optim.Optimizer, gen: torch.Generator, batches, n: int) -> None:
    exp.model.train()
    for step in range(n):
        loss, _ = exp.loss(next(batches), step, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def format_speed_table(rows: List[Dict[str, Any]]) -> str:
    """A markdown table of :func:`measure_speed`'s rows."""
    lines = [
        "| classes | estimator of y | steps/s (median) | per round | speed-up vs marginalization |",
        "|---:|---|---:|---|---:|",
    ]
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        label = r["estimator"] + (" (marginalization)" if r["estimator"] == "exact" else "")
        rounds = ", ".join(f"{v:.1f}" for v in r["rounds"])
        lines.append(
            f"| {r['classes']} | {label} | {r['steps_per_second']:.1f} | {rounds} | {speedup} |"
        )
    return "\n".join(lines)


def _check_speed_options(args: argparse.Namespace) -> None:
    # The timing harness is one process in fp32: refuse rather than time something else.
    if args.nproc > 1 or distributed.world_size() > 1:
        raise ValueError("--speed times one process; drop --nproc (and do not start torchrun)")
    if args.precision != "fp32" or args.compile:
        raise ValueError("--speed times fp32 eager steps; drop --precision and --compile")


def _run_speed(args: argparse.Namespace, say) -> int:
    from discograd.cli._common import check_device, load_dataset

    check_device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    _check_speed_options(args)
    classes = [int(c) for c in args.speed_classes]
    names = [n.strip() for n in args.speed_estimators.split(",") if n.strip()]
    say(
        f"timing M2 training steps on {data.name}: batch {args.batch_size}, hidden "
        f"{list(args.hidden)}, z {args.z_dim}; {args.speed_rounds} interleaved rounds of "
        f"{args.speed_steps} steps; torch threads {torch.get_num_threads()}"
    )
    rows = measure_speed(
        args, data, classes, names, steps=args.speed_steps, rounds=args.speed_rounds
    )
    table = format_speed_table(rows)
    print(table, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(table + "\n")
    record = {"rows": rows, "torch_threads": torch.get_num_threads(), "options": _jsonable(args)}
    (out / "speed.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _jsonable(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list, tuple))}
