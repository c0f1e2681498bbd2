"""``discograd compare`` (table, JSON, figures) and the experiments' presets."""

from __future__ import annotations

import argparse
import json
import statistics

import pytest

from discograd.cli import build_parser, main
from discograd.experiments.compare import parse_specs
from discograd.experiments.presets import DESCRIPTIONS, apply_preset, presets_for

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_specs_map_options_to_flags():
    specs = parse_specs(
        "st, st-gumbel-softmax:tau-schedule=exp:anneal_rate=0.01,reinforce:baseline=ema"
    )
    assert [s.name for s in specs] == ["st", "st-gumbel-softmax", "reinforce"]
    assert specs[1].argv == ["--tau-schedule", "exp", "--anneal-rate", "0.01"]
    assert specs[2].argv == ["--estimator-option", "baseline=ema"]
    assert specs[1].label == "st-gumbel-softmax:tau-schedule=exp:anneal_rate=0.01"
    for bad in ("", "st,st", "st:tau"):
        with pytest.raises(ValueError):
            parse_specs(bad)


def test_compare_writes_table_json_and_figures(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "sbn", "--estimators", "st,gumbel-softmax,arm", "--seeds", "2"]
    argv += ["--steps", "6", "--eval-every", "3", "--eval-samples", "5", "--latent"]
    argv += ["categorical", "--n-latent", "3", "--n-classes", "3", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["metric"] == "nll" and record["seeds"] == [0, 1]
    st, gs, arm = record["estimators"]
    assert [r["seed"] for r in st["runs"]] == [0, 1]
    assert all(r["status"] == "ok" for r in st["runs"] + gs["runs"])
    assert arm["runs"][0]["status"] == "failed" and "does not support" in arm["runs"][0]["error"]
    # The table's mean and std are those of the runs' own summaries.
    table = (out / "results.md").read_text()
    values = [r["summary"]["test"]["nll"] for r in gs["runs"]]
    expected = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
    cells = [line.split("|") for line in table.splitlines() if line.startswith("| ")]
    row = next(c for c in cells if c[1].strip().strip("*") == "gumbel-softmax")
    assert row[2].strip() == "2" and row[3].strip() == expected
    assert "| arm | 0 | failed:" in table
    # The note under the table is a paragraph of its own: a line right after a table would be
    # rendered (on GitHub) as one more row of it.
    lines = table.rstrip("\n").splitlines()
    last_row = max(i for i, line in enumerate(lines) if line.startswith("|"))
    assert lines[last_row + 1] == "" and lines[last_row + 2].startswith("sbn: mean")
    assert values[0] != values[1]  # the seeds differ
    for name in ("nll_vs_steps.png", "nll_vs_seconds.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "results.md" in capsys.readouterr().out
    # Each run kept its own files, its seed and its estimator.
    config = json.loads((out / "runs" / "st" / "seed-1" / "config.json").read_text())
    assert config["train"]["seed"] == 1 and config["experiment"]["estimator"] == "st"


def test_compare_runs_semisup_and_vae(tmp_path):
    out = tmp_path / "semi"
    argv = ["compare", "semisup", "--estimators", "exact", "--seeds", "1", "--steps", "3"]
    argv += ["--eval-every", "0", "--hidden", "8", "--z-dim", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert "test accuracy" in (out / "results.md").read_text()
    out = tmp_path / "vae"
    argv = ["compare", "vae", "--estimators", "st-gumbel-softmax:tau=0.5", "--seeds", "1"]
    argv += ["--steps", "3", "--eval-every", "0", "--iw-samples", "2", "--out", str(out)]
    assert main(argv + ["--quiet", "--metric", "neg_iw"]) == 0
    record = json.loads((out / "results.json").read_text())
    config = json.loads(
        (out / "runs" / "st-gumbel-softmax_tau=0.5" / "seed-0" / "config.json").read_text()
    )
    assert record["metric"] == "neg_iw" and config["experiment"]["tau"]["tau"] == 0.5
    assert (out / "neg_iw_vs_steps.png").exists()


def test_compare_rejects_options_it_sets_itself(tmp_path, capsys):
    argv = ["compare", "sbn", "--estimators", "st", "--seed", "3", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "compare sets --estimator, --seed and --out" in capsys.readouterr().err


def _subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices[name]


@pytest.mark.parametrize("command", ["vae", "sbn", "semisup"])
def test_every_preset_sets_existing_options(command):
    _, sub = _subparser(command)
    dests = {a.dest for a in sub._actions}
    for name, preset in presets_for(command).items():
        assert set(preset) <= dests, (command, name, set(preset) - dests)
        assert name in DESCRIPTIONS[command]
    parser, sub = _subparser("vae")
    apply_preset(sub, "vae", "demo")
    args = parser.parse_args(["vae", "--steps", "7"])
    assert args.steps == 7 and args.hidden == (512, 256) and args.n_latent == 30


def test_preset_option_yields_to_the_command_line():
    parser = build_parser()
    for argv in (
        ["sbn", "--preset", "jang-categorical", "--steps", "5"],
        ["sbn", "--steps", "5", "--preset", "jang-categorical"],
    ):
        args = parser.parse_args(argv)
        assert args.steps == 5 and args.n_latent == 20 and args.latent == "categorical"
        assert args.dataset == "binarized-mnist" and args.eval_samples == 1000
    with pytest.raises(SystemExit):
        parser.parse_args(["sbn", "--preset", "nope"])


def test_curves_read_non_finite_metrics_as_floats(tmp_path):
    # metrics.jsonl is strict JSON: a diverged run's NaN is the string "nan"; the readers
    # turn it back into a float (statistics over the runs failed on the string).
    import math

    from discograd import plotting
    from discograd._json import dumps
    from discograd.experiments.compare import _curve

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "split": "valid", "neg_elbo": math.nan}, {"step": 2, "loss": math.inf}]
    path.write_text("".join(dumps(r) + "\n" for r in rows))
    assert '"nan"' in path.read_text()
    (curve,) = _curve(path)
    assert math.isnan(curve["neg_elbo"])
    assert plotting.read_jsonl(path)[1]["loss"] == math.inf
