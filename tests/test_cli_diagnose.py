"""``discograd diagnose`` end to end: real subprocesses for the entry point, in-process calls of
``discograd.cli.main`` (whose return value is the exit status) for the error paths."""

from __future__ import annotations

import json
import textwrap

import pytest

from discograd.cli import main
from tests.test_vae import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _table_rows(text, name):
    return [line for line in text.splitlines() if line.startswith(f"| {name} |")]


USER_MODULE = """
import torch

def problem():
    logits = torch.tensor([[0.5, -0.2, 0.1]], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    return (lambda z: ((z * c).sum(-1) ** 2).sum(-1)), logits, "categorical"

def hard_only():
    logits = torch.zeros(3, dtype=torch.float64)

    def f(z):
        if not bool(((z == 0) | (z == 1)).all()):
            raise ValueError("f needs hard samples")
        return z.sum(-1)

    return f, logits, "bernoulli"

def not_a_problem():
    return 42
"""


@pytest.fixture()
def user_module(tmp_path):
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "usermod_diag.py").write_text(textwrap.dedent(USER_MODULE))
    return folder


def test_end_to_end_in_a_subprocess(user_module, tmp_path):
    # One run covers a built-in problem and a user function found through PYTHONPATH (the
    # working directory is elsewhere): one interpreter start instead of two.
    out = tmp_path / "out"
    proc = run_cli(
        "diagnose",
        *["--n", "20", "--estimators", "reinforce,st,exact,reparam", "--problem", "rebar-0.45"],
        *["--function", "usermod_diag:problem", "--out", str(out)],
        cwd=tmp_path,
        extra_path=user_module,
    )
    assert proc.returncode == 0, proc.stderr
    sections = proc.stdout.split("## ")
    assert sections[1].startswith("rebar-0.45") and sections[2].startswith("usermod_diag:problem")
    for text in sections[1:]:
        assert "| estimator | unbiased? (claim) | bias ± SE |" in text
        for name in ("reinforce", "st", "exact"):
            assert len(_table_rows(text, name)) == 1
        assert _table_rows(text, "exact")[0].split("|")[3].strip() == "0 ± 0"
    assert "unsupported: bernoulli" in _table_rows(sections[1], "reparam")[0]
    assert "unsupported: categorical" in _table_rows(sections[2], "reparam")[0]

    for name in ("rebar-0.45", "usermod_diag_problem"):
        png = out / f"variance_bias_{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = pytest.importorskip("matplotlib.image").imread(str(png))
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    data = json.loads((out / "diagnose.json").read_text())
    assert [p["problem"] for p in data["problems"]] == ["rebar-0.45", "usermod_diag:problem"]
    rows = {r["estimator"]: r for r in data["problems"][0]["rows"]}
    assert rows["exact"]["variance"] == 0.0 and rows["reinforce"]["variance"] > 0
    assert rows["reinforce"]["n"] == 20 and data["meta"]["arguments"]["n"] == 20
    assert "## usermod_diag:problem" in (out / "diagnose.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--estimators", "reinforce,nope"], "unknown estimator 'nope'; available:"),
        (["--problem", "nope"], "unknown problem 'nope'; available:"),
        (["--problem", "rebar-0.45,"], None),  # a trailing comma is harmless: runs
        (["--function", "no_colon"], "must be MODULE:FUNCTION"),
        (["--function", "no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
        (["--function", "usermod_diag:missing"], "has no function 'missing'"),
        (["--function", "usermod_diag:not_a_problem"], "returned int"),
        (["--n", "1"], "--n must be >= 2"),
        (["--tau", "0"], "--tau must be > 0"),
        (["--estimator-option", "oops"], "must be KEY=VALUE"),
    ],
)
def test_bad_options_exit_2_with_a_message(args, message, user_module, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(user_module))
    code = main(["diagnose", "--n", "3", "--estimators", "exact", *args])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
    else:
        assert code == 2
        assert message in err


def test_a_failing_estimator_is_reported_in_its_row_and_exits_1(user_module, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(user_module))
    code = main(
        [
            "diagnose",
            "--n",
            "5",
            "--estimators",
            "reinforce,gumbel-softmax",
            "--function",
            "usermod_diag:hard_only",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "failed: ValueError: f needs hard samples" in _table_rows(out, "gumbel-softmax")[0]
    assert "failed" not in _table_rows(out, "reinforce")[0]


def test_tau_reaches_estimators_that_take_it(tmp_path, capsys):
    code = main(
        [
            "diagnose",
            "--n",
            "3",
            "--estimators",
            "gumbel-softmax,reinforce,rebar",
            "--tau",
            "0.25",
            "--problem",
            "categorical-10",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "diagnose.json").read_text())["problems"][0]["rows"]
    assert rows[0]["options"]["tau"] == 0.25
    assert "tau" not in rows[1]["options"]
    assert rows[2]["options"]["temperature"] == pytest.approx(0.25)  # REBAR learns it: rounding


def test_list_and_help(capsys):
    assert main(["diagnose", "--list"]) == 0
    out = capsys.readouterr().out
    assert "reinforce" in out and "vae-digits" in out
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", "--help"])
    assert exc.value.code == 0
    assert "MODULE:FUNCTION" in capsys.readouterr().out
