"""Run one experiment with several estimators and seeds, and tabulate and plot the results
(``discograd compare``).

Each run is the experiment's own command (``discograd vae``, ``sbn`` or ``semisup``) called
in-process, one after another, with ``--estimator``, ``--seed`` and ``--out`` set by compare
and every other option passed through; its summary.json and metrics.jsonl are then read back.
Writes in the output folder:

- ``results.md``: one row per estimator: mean +- standard deviation over seeds of every final
  test metric, the wall time and the training steps per second;
- ``results.json``: the same and every run's numbers;
- ``METRIC_vs_steps.png`` and ``METRIC_vs_seconds.png``: the validation metric during training
  (averaged over seeds), one line per estimator;
- ``runs/LABEL/seed-S/``: each run's own files.

An estimator is given as ``NAME`` or ``NAME:KEY=VALUE:KEY=VALUE``: the keys ``tau``,
``tau-schedule``, ``tau-min``, ``anneal-rate`` and ``anneal-every`` set the temperature options,
any other key is an estimator option (``--estimator-option KEY=VALUE``). Example: the paper's
annealed straight-through is approximated by ``st-gumbel-softmax:tau-schedule=exp``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from discograd._json import dumps as json_dumps
from discograd._json import numbers
from discograd.train import read_metrics

__all__ = [
    "DEFAULT_METRIC",
    "EXPERIMENTS",
    "Spec",
    "compare",
    "format_table",
    "parse_specs",
    "plot_curves",
]

EXPERIMENTS = ("vae", "sbn", "semisup")
DEFAULT_METRIC = {"vae": "neg_elbo", "sbn": "nll", "semisup": "accuracy"}
# Metrics where larger is better (the table marks the best mean with either direction).
HIGHER_IS_BETTER = {"accuracy", "digit_accuracy"}
_TEMPERATURE_KEYS = ("tau", "tau-schedule", "tau-min", "anneal-rate", "anneal-every")
_SET_BY_COMPARE = ("--estimator", "--seed", "--out", "--resume")
_CONSTANT_KEYS = {"iw_samples", "eval_samples"}


@dataclass
class Spec:
    """One estimator of the comparison: its label, registry name and the options it adds."""

    label: str
    name: str
    argv: List[str] = field(default_factory=list)


def parse_specs(text: str) -> List[Spec]:
    """``"st,gumbel-softmax:tau=0.5"`` -> specs; ValueError on an empty list or a bad option."""
    specs = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, *options = item.split(":")
        argv: List[str] = []
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(f"estimator option must be KEY=VALUE, got {option!r} in {item!r}")
            key = key.strip()
            if key.replace("_", "-") in _TEMPERATURE_KEYS:
                argv += [f"--{key.replace('_', '-')}", value.strip()]
            else:
                argv += ["--estimator-option", f"{key}={value.strip()}"]
        specs.append(Spec(label=item, name=name.strip(), argv=argv))
    if not specs:
        raise ValueError(f"estimators must name at least one estimator, got {text!r}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"estimators are listed twice in {text!r}")
    return specs


def compare(
    experiment: str,
    specs: Sequence[Spec],
    seeds: Sequence[int],
    options: Sequence[str],
    out: Path,
    *,
    metric: Optional[str] = None,
    preset: Optional[str] = None,
    say: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Run every (estimator, seed) and write the table, the JSON record and the figures."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {experiment!r}")
    clash = [o for o in options if o.split("=")[0] in _SET_BY_COMPARE]
    if clash:
        raise ValueError(
            f"{', '.join(clash)}: compare sets --estimator, --seed and --out itself; use "
            "--estimators, --seeds and compare's --out"
        )
    metric = metric or DEFAULT_METRIC[experiment]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: List[Dict[str, Any]] = []
    for spec in specs:
        runs = []
        for seed in seeds:
            run_dir = out / "runs" / _slug(spec.label) / f"seed-{seed}"
            argv = [
                experiment,
                *options,
                "--estimator",
                spec.name,
                *spec.argv,
                "--seed",
                str(seed),
                "--out",
                str(run_dir),
                "--quiet",
                "--no-plots",
            ]
            say(f"[{spec.label} seed {seed}] discograd {' '.join(argv)}")
            runs.append(_run_one(experiment, argv, preset, run_dir, seed))
            if runs[-1]["status"] != "ok":
                say(f"[{spec.label} seed {seed}] {runs[-1]['status']}: {runs[-1]['error']}")
                break  # the other seeds would fail alike (unsupported, bad option)
        results.append({"label": spec.label, "estimator": spec.name, "runs": runs})
    record = {
        "experiment": experiment,
        "metric": metric,
        "seeds": list(seeds),
        "options": list(options),
        "preset": preset,
        "estimators": results,
    }
    table = format_table(record)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json_dumps(record, indent=2, default=str) + "\n")
    record["table"] = table
    record["figures"] = plot_curves(record, out)
    return record


def _run_one(
    experiment: str, argv: List[str], preset: Optional[str], run_dir: Path, seed: int
) -> Dict[str, Any]:
    from discograd.cli import build_parser
    from discograd.experiments.presets import apply_preset

    row: Dict[str, Any] = {"seed": seed, "out": str(run_dir)}
    err = io.StringIO()
    start = time.perf_counter()
    try:
        parser = build_parser()
        if preset:
            apply_preset(_subparser(parser, experiment), experiment, preset)
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
            rc = int(args.func(args) or 0)
    except SystemExit as exc:  # argparse rejected an option
        rc = int(exc.code or 2) if not isinstance(exc.code, str) else 2
    if rc == 130:  # the command caught Ctrl-C (its own message is in err): stop every run
        raise KeyboardInterrupt
    row["wall_seconds"] = round(time.perf_counter() - start, 2)
    messages = [line for line in err.getvalue().splitlines() if line.strip()]
    summary_path = run_dir / "summary.json"
    if rc != 0 or not summary_path.exists():
        row.update(status="failed", error=messages[-1] if messages else f"exit status {rc}")
        return row
    summary = numbers(json.loads(summary_path.read_text()))
    row.update(status="ok", summary=summary, curve=_curve(run_dir / "metrics.jsonl"))
    return row


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise ValueError(f"the command line has no subcommand {name!r}")


def _curve(path: Path) -> List[Dict[str, Any]]:
    """The validation rows (intermediate and final) of a run's metrics.jsonl."""
    return [row for row in read_metrics(path) if row.get("split") == "valid"]


# ---------------------------------------------------------------------------------------------
# The table and the figures.


def _stats(values: List[float]) -> Dict[str, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def _summaries(entry: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [r["summary"] for r in entry["runs"] if r["status"] == "ok"]


def format_table(record: Dict[str, Any]) -> str:
    """Markdown: one row per estimator, mean +- std over seeds of every final test metric."""
    metric = record["metric"]
    keys: List[str] = []
    for entry in record["estimators"]:
        for summary in _summaries(entry):
            for key, value in summary.get("test", {}).items():
                if (
                    isinstance(value, (int, float))
                    and key not in _CONSTANT_KEYS
                    and key not in keys
                ):
                    keys.append(key)
    keys.sort(key=lambda k: (k != metric, k))
    best = _best_label(record, metric)
    head = ["estimator", "seeds"] + [f"test {k}" for k in keys] + ["wall s", "steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in record["estimators"]:
        summaries = _summaries(entry)
        if not summaries:
            failed = entry["runs"][-1]
            cells = [entry["label"], "0", f"failed: {failed.get('error', '?')}"]
            cells += [""] * (len(head) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        label = f"**{entry['label']}**" if entry["label"] == best else entry["label"]
        cells = [label, str(len(summaries))]
        for key in keys:
            values = [s["test"][key] for s in summaries if key in s.get("test", {})]
            cells.append(_format_stat(_stats(values), key) if values else "")
        walls = [s["seconds"] for s in summaries]
        rates = [s["steps_per_second"] for s in summaries]  # training only, every command
        cells += [f"{statistics.fmean(walls):.1f}", f"{statistics.fmean(rates):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = record["seeds"]
    # A blank line: text right after a table would be read as one more row of it.
    note = (
        f"\n\n{record['experiment']}: mean ± std over seeds {seeds[0]}..{seeds[-1]} "
        f"(std 0 with one seed); bold: best mean test {metric}; wall s: the whole run; "
        "steps/s: training steps per second, evaluation time excluded"
    )
    return "\n".join(lines) + note


def _format_stat(stat: Dict[str, float], key: str) -> str:
    scale = 100.0 if key in HIGHER_IS_BETTER else 1.0
    unit = "%" if key in HIGHER_IS_BETTER else ""
    return f"{scale * stat['mean']:.2f}{unit} ± {scale * stat['std']:.2f}"


def _best_label(record: Dict[str, Any], metric: str) -> Optional[str]:
    means: Dict[str, float] = {}
    for entry in record["estimators"]:
        values = [s["test"][metric] for s in _summaries(entry) if metric in s.get("test", {})]
        if values and all(math.isfinite(v) for v in values):
            means[entry["label"]] = statistics.fmean(values)
    if not means:
        return None
    pick = max if metric in HIGHER_IS_BETTER else min
    return pick(means, key=means.__getitem__)


def _mean_curve(entry: Dict[str, Any], metric: str) -> Dict[str, Sequence[float]]:
    """Steps, seconds and the metric averaged over the seeds at each evaluated step."""
    by_step: Dict[int, List[tuple]] = {}
    for run in entry["runs"]:
        if run["status"] != "ok":
            continue
        for row in run["curve"]:
            if metric in row:
                by_step.setdefault(row["step"], []).append((row["time"], row[metric]))
    steps = sorted(by_step)
    return {
        "steps": steps,
        "seconds": [statistics.fmean(t for t, _ in by_step[s]) for s in steps],
        "values": [statistics.fmean(v for _, v in by_step[s]) for s in steps],
    }


def plot_curves(record: Dict[str, Any], out: Path) -> List[str]:
    """METRIC_vs_steps.png and METRIC_vs_seconds.png; [] without matplotlib."""
    from discograd.experiments import figure
    from discograd.plotting import PlottingUnavailable

    metric = record["metric"]
    curves = {e["label"]: _mean_curve(e, metric) for e in record["estimators"]}
    paths = []
    for axis, xlabel in (("steps", "training step"), ("seconds", "wall-clock seconds")):
        try:
            fig = figure((9.0, 4.2))
        except PlottingUnavailable:
            return []
        ax = fig.add_subplot(1, 1, 1)
        for i, (label, curve) in enumerate(curves.items()):
            if curve["steps"]:
                # tab10's colours repeat after ten lines; the line style tells those apart.
                style = ("-", "--", ":")[i // 10 % 3]
                ax.plot(
                    curve[axis],
                    curve["values"],
                    marker="o",
                    ls=style,
                    color=f"C{i % 10}",
                    label=label,
                    markersize=3,
                    lw=1.2,
                )
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation {metric} (mean over seeds)")
        ax.set_title(f"{record['experiment']}: {metric} against {axis}", fontsize=10)
        ax.grid(alpha=0.3)
        if any(c["steps"] for c in curves.values()):
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / f"{metric}_vs_{axis}.png"
        fig.savefig(path, format="png")
        paths.append(str(path))
    return paths


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
