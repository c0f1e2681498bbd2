"""What every command does alike (discograd.cli._common and each command's setup): a bad --out,
an impossible enumeration, an unknown name or a bad number is one line naming the option, with
exit status 2, before any work; Ctrl-C is one line and exit status 130; --data-dir reaches
discograd.data.load; --help shows defaults as they are typed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from discograd.cli import build_parser, main

TINY_VAE = ["vae", "--steps", "4", "--batch-size", "16", "--hidden", "8", "--n-latent", "2",
            "--n-classes", "3", "--iw-samples", "0", "--eval-every", "0", "--no-plots",
            "--quiet", "--threads", "0"]  # fmt: skip

# Each command's cheapest invocation (--out is added by the tests).
COMMANDS = {
    "vae": TINY_VAE,
    "sbn": ["sbn", "--steps", "2", "--quiet"],
    "semisup": ["semisup", "--steps", "2", "--quiet"],
    "gan": ["gan", "--steps", "2", "--quiet"],
    "toy": ["toy", "gumbel-max", "--n", "100"],
    "diagnose": ["diagnose", "--problem", "categorical-10", "--n", "10"],
    "compare": ["compare", "vae", "--seeds", "1", "--estimators", "st", "--steps", "2"],
}


def _no_work(monkeypatch: pytest.MonkeyPatch) -> list:
    """Make every command's work fail the test if it starts: the trainer, the toys, the
    diagnostics. Returns the list the calls would be recorded in."""
    import discograd.diagnostics as diagnostics
    import discograd.experiments.toys as toys
    import discograd.train as train

    calls: list = []

    def forbidden(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran although the options were refused")

        return call

    monkeypatch.setattr(train, "fit", forbidden("fit"))
    monkeypatch.setattr(toys, "gumbel_max", forbidden("gumbel_max"))
    monkeypatch.setattr(diagnostics, "compare", forbidden("diagnostics.compare"))
    return calls


def _bad_outs(tmp_path: Path) -> dict:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    outs = {"a file": (a_file, "is a file"), "under a file": (a_file / "run", "is under")}
    if Path("/proc/self").is_dir():  # Linux: nobody can make a folder in /proc
        outs["in /proc"] = (Path("/proc/discograd-run"), "cannot create the folder")
    return outs


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_out_is_one_line_and_status_2_before_any_work(tmp_path, capsys, monkeypatch, command):
    calls = _no_work(monkeypatch)
    for what, (out, reason) in _bad_outs(tmp_path).items():
        rc = main([*COMMANDS[command], "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, (what, err)
        prog = " ".join(COMMANDS[command][:2]) if command == "toy" else command
        assert err.startswith(f"discograd {prog}: error: --out {out}: ") and reason in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert calls == []


def test_prepare_out_creates_checks_and_tidies(tmp_path):
    from discograd.cli._common import prepare_out, remove_empty

    out = tmp_path / "a" / "b"
    created = prepare_out(out)
    assert out.is_dir() and list(out.iterdir()) == []  # the write test left nothing
    assert created == [tmp_path / "a", out]
    remove_empty(created)
    assert not (tmp_path / "a").exists()
    assert prepare_out(tmp_path) == []  # an existing folder: nothing created


def test_setup_error_leaves_no_out_folder(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main([*TINY_VAE, "--tau", "-1", "--out", str(out)]) == 2
    assert "--tau" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # made for the check, removed with the error


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["vae", "--estimator", "exact"], "--estimator-option max_configurations=16777216"),
        (["vae", "--estimator", "exact", "--latent", "bernoulli", "--n-latent", "20"],
         "--estimator-option max_configurations=1048576"),
        (["sbn", "--estimator", "exact"], "far too many to enumerate"),
        # The layers' enumerations nest: 2 layers of 10 units are 2^20 configurations (that
        # run was let through, and took all 24 GB of memory before it was killed).
        (["sbn", "--estimator", "exact", "--n-latent", "10"],
         "2 nested layers of 10 Bernoulli units (--n-latent): 1048576"),
        (["sbn", "--estimator", "exact", "--n-latent", "17", "--n-layers", "1"],
         "--estimator-option max_configurations=131072"),
    ],
)  # fmt: skip
def test_exact_enumeration_too_large_is_refused_before_training(
    tmp_path, capsys, monkeypatch, argv, hint
):
    calls = _no_work(monkeypatch)
    out = tmp_path / "run"
    assert main([*argv, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"discograd {argv[0]}: error: --estimator exact") and hint in err
    assert "Traceback" not in err and calls == [] and not out.exists()


def test_exact_enumeration_within_the_limit_trains(tmp_path, capsys):
    # 3^2 = 9 configurations; and a raised limit lets a larger one through the check.
    assert main([*TINY_VAE, "--estimator", "exact", "--out", str(tmp_path / "a")]) == 0
    from discograd.cli._common import check_enumeration
    from discograd.estimators import get

    check_enumeration(get("exact", max_configurations=8**8), 8**8, "8 latents")
    check_enumeration(get("reinforce"), 10**100, "anything")  # samples: no limit


def test_toy_bitflip_rejects_unknown_estimators(tmp_path, capsys, monkeypatch):
    import discograd.experiments.toys as toys

    monkeypatch.setattr(toys, "_bitflip_run", lambda *a, **k: pytest.fail("ran"))
    out = tmp_path / "toy"
    rc = main(["toy", "bitflip", "--estimators", "rloo,foo", "--steps", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("discograd toy bitflip: error: --estimators: unknown estimator 'foo'")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*TINY_VAE, "--tau-schedule", "exp", "--anneal-every", "0"], "--anneal-every must be"),
        ([*TINY_VAE, "--tau-schedule", "exp", "--anneal-rate", "-1"], "--anneal-rate must be"),
        ([*TINY_VAE, "--tau-schedule", "exp", "--tau-min", "0"], "--tau-min must be"),
        ([*TINY_VAE, "--tau", "inf"], "--tau must be"),
        ([*TINY_VAE, "--dataset", "foo"], "unknown --dataset 'foo'; one of: digits, mnist"),
        ([*TINY_VAE, "--iw-samples", "-1"], "--iw-samples must be >= 0"),
        (["sbn", "--dataset", "foo", "--quiet"], "unknown --dataset 'foo'"),
        (["gan", "--tau-schedule", "exp", "--anneal-every", "0", "--quiet"], "--anneal-every"),
    ],
)
def test_bad_numbers_and_names_name_the_option(tmp_path, capsys, monkeypatch, argv, message):
    calls = _no_work(monkeypatch)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"discograd {argv[0]}: error: ") and message in err, err
    assert calls == []


@pytest.mark.parametrize("command", ["vae", "sbn", "semisup"])
def test_data_dir_reaches_data_load(tmp_path, capsys, monkeypatch, command):
    import discograd.data as data

    seen = {}

    def load(name, **kwargs):
        seen.update(kwargs, name=name)
        raise ValueError("stop here")

    monkeypatch.setattr(data, "load", load)
    folder = tmp_path / "data"
    argv = [command, "--dataset", "fashion-mnist", "--data-dir", str(folder), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert seen == {"name": "fashion-mnist", "data_dir": str(folder)}
    assert "stop here" in capsys.readouterr().err
    seen.clear()  # without --data-dir: the data package's own default
    assert main([command, "--dataset", "mnist", "--quiet", "--out", str(tmp_path / "b")]) == 2
    assert seen == {"name": "mnist"}


def test_help_shows_defaults_as_typed(capsys):
    def help_of(command):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    semisup = help_of("semisup")
    assert "(default: 256)" in semisup and "(default: 10,100)" in semisup
    assert "(256,)" not in semisup
    args = build_parser().parse_args(["semisup"])
    assert args.hidden == (256,) and args.speed_classes == (10, 100)
    for command in ("sbn", "vae", "semisup", "gan", "compare"):
        assert "(default: None)" not in help_of(command), command
    assert "(default: 200 Bernoulli, 20 categorical" in help_of("sbn")


def _interrupt_after(checkpoint: bool):
    def fit(experiment, config):
        os.makedirs(config.out_dir, exist_ok=True)
        if checkpoint:
            Path(config.out_dir, "checkpoint.pt").write_bytes(b"state")
        raise KeyboardInterrupt

    return fit


@pytest.mark.parametrize("checkpoint", [True, False])
def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch, checkpoint):
    import discograd.train as train

    monkeypatch.setattr(train, "fit", _interrupt_after(checkpoint))
    out = tmp_path / "run"
    assert main([*TINY_VAE, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    if checkpoint:
        assert err == (
            f"discograd vae: interrupted; the last checkpoint is in {out}; rerun the same "
            f"command with --resume to continue from it"
        )
    else:
        assert "before the first checkpoint" in err and "nothing to resume" in err


def test_ctrl_c_stops_compare_too(tmp_path, capsys, monkeypatch):
    import discograd.train as train

    monkeypatch.setattr(train, "fit", _interrupt_after(True))
    out = tmp_path / "cmp"
    argv = ["compare", "vae", "--estimators", "st,reinforce", "--seeds", "2", "--quiet"]
    assert main([*argv, *TINY_VAE[1:], "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "discograd compare: interrupted" in err and "Traceback" not in err
    # The first run was interrupted and nothing after it ran.
    assert [p.name for p in (out / "runs").iterdir()] == ["st"]
    assert not (out / "results.md").exists()
