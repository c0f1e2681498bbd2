"""``discograd doctor``: run as a user would (a subprocess), and its fallbacks in-process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

import discograd
from discograd.cli import doctor


def test_doctor_in_a_subprocess(tmp_path):
    # The fast-path check is forced to the reference (no kernel build in a cold cache), and the
    # data folder comes from the environment. The same process reports which optional packages
    # the command imported: none (versions come from package metadata).
    env = dict(os.environ, DISCOGRAD_DISABLE_KERNELS="1", DISCOGRAD_DATA=str(tmp_path / "data"))
    code = (
        "import sys\n"
        "from discograd.cli import main\n"
        "rc = main(['doctor'])\n"
        "heavy = ('pyro', 'matplotlib', 'triton', 'discograd.contrib.pyro')\n"
        "print('IMPORTED:', [m for m in heavy if m in sys.modules])\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for section in ("versions", "devices", "fast paths", "caches"):
        assert f"\n{section}\n" in f"\n{text}"
    assert f"discograd   {discograd.__version__}" in text
    import numpy
    import torch

    assert f"torch       {torch.__version__}" in text and f"numpy       {numpy.__version__}" in text
    for optional in ("matplotlib", "triton", "pyro-ppl"):
        assert f"  {optional}" in text
    assert f"{os.cpu_count()} cores" in text
    assert "cuda" in text
    assert "reference: DISCOGRAD_DISABLE_KERNELS is set" in text
    assert f"data          {tmp_path / 'data'}" in text
    assert "IMPORTED: []" in text


def test_doctor_json_and_help(capsys):
    from discograd.cli import main

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"versions", "devices", "fast_paths", "caches"}
    assert report["versions"]["discograd"].startswith(discograd.__version__)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "doctor" in capsys.readouterr().out


def test_doctor_without_a_kernels_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "discograd.kernels", None)  # import raises ImportError
    monkeypatch.delattr(discograd, "kernels", raising=False)
    report = doctor.collect()
    assert report["fast_paths"]["error"].startswith("kernels module not available")
    assert "kernels module not available" in doctor.render(report)


def test_doctor_reports_a_failing_status(monkeypatch, capsys):
    import discograd.kernels

    def broken():
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(discograd.kernels, "status", broken)
    assert doctor.run(argparse.Namespace(json=False)) == 0
    assert "kernels.status() failed: RuntimeError: compiler exploded" in capsys.readouterr().out
