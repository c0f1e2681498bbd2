"""The package as published: the wheel's contents and metadata, and (slow, opt-in) a fresh
virtual environment that installs the wheel and the sdist and runs a smoke test.

Builds run on a copy of the source tree in a temporary folder, without build isolation
(offline, and no ``build/`` or ``*.egg-info`` left in the checkout).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Dict, List

import pytest

import discograd

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "discograd"
SLOW = pytest.mark.skipif(
    not os.environ.get("DISCOGRAD_SLOW_TESTS"),
    reason="slow (a fresh venv with torch, minutes): set DISCOGRAD_SLOW_TESTS=1",
)

pytest.importorskip("setuptools", reason="building the wheel needs setuptools (the [dev] extra)")


def _copy_tree(dest: Path) -> Path:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=ignore)
    return dest


def _build(tmp: Path) -> Dict[str, Path]:
    """Build a copy of the tree: {"sdist": ..., "wheel": ...}, the wheel built from the sdist
    (so a file missing from the sdist is missing from the wheel too). Without the ``build``
    package, pip builds the wheel alone from the tree."""
    tree = _copy_tree(tmp / "tree")
    out = tmp / "dist"
    try:
        import build  # noqa: F401
    except ImportError:  # pip's own builder, also offline
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w"]
        cmd += [str(out), str(tree)]
    else:
        cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    built = {}
    for p in out.iterdir():
        built["wheel" if p.name.endswith(".whl") else "sdist"] = p
    return built


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Dict[str, Path]:
    return _build(tmp_path_factory.mktemp("pkg"))


@pytest.fixture(scope="module")
def wheel(dists) -> Path:
    return dists["wheel"]


def test_sdist_contents(dists):
    if "sdist" not in dists:
        pytest.skip("building an sdist needs the 'build' package (the [dev] extra)")
    with tarfile.open(dists["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert dists["sdist"].name == f"discograd-{discograd.__version__}.tar.gz"
    for name in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "src/discograd/py.typed",
    ):
        assert name in names, name
    for path in SRC.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert f"src/discograd/{path.relative_to(SRC).as_posix()}" in names, path


def test_wheel_contents(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        meta = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    files = set(names)

    assert wheel.name == f"discograd-{discograd.__version__}-py3-none-any.whl"
    assert meta["Version"] == discograd.__version__
    # Every module of the source tree, and the data files, are in the wheel.
    for path in SRC.rglob("*.py"):
        assert f"discograd/{path.relative_to(SRC).as_posix()}" in files, path
    assert "discograd/py.typed" in files
    assert "discograd/data/digits8x8.npz" in files
    assert "discograd/data/DIGITS_LICENSE.txt" in files
    for cpp in SRC.glob("kernels/*.cpp"):  # kernel sources compiled at first use
        assert f"discograd/kernels/{cpp.name}" in files
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]
    # Licence and the console script.
    assert meta["License-Expression"] == "MIT"
    assert f"{info}/licenses/LICENSE" in files
    assert re.search(r"\[console_scripts\]\s*\ndiscograd\s*=\s*discograd\.cli:entry", entry_points)
    # A minimal install pulls only torch, numpy, tqdm (and ninja, which builds the CPU kernel
    # at first use); the rest are extras.
    requires = meta.get_all("Requires-Dist")
    core = {re.split(r"[<>=!~ ;\[]", r)[0] for r in requires if "extra ==" not in r}
    assert {"numpy", "torch"} <= core <= {"numpy", "torch", "tqdm", "ninja"}, core
    assert {"plots", "triton", "pyro", "dev"} <= set(meta.get_all("Provides-Extra"))
    pyro_req = [r for r in requires if r.startswith("pyro-ppl")]
    assert pyro_req and all("extra ==" in r for r in pyro_req)
    assert "Typing :: Typed" in meta.get_all("Classifier")


def test_version_is_defined_once():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    attr = config["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "discograd._version.__version__"
    assert f"## [{discograd.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def _venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"


def _installed(py: Path) -> set:
    listing = json.loads(_run([py, "-m", "pip", "list", "--format=json"]))
    return {d["name"].lower() for d in listing}


def _run(cmd: List[str], **kw) -> str:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


SMOKE = """
import sys, torch, discograd
from discograd import estimators
logits = torch.randn(4, 3, requires_grad=True)
z = discograd.gumbel_max(logits, generator=torch.Generator().manual_seed(0))
y = discograd.gumbel_softmax(logits, tau=0.5, hard=True)
est = estimators.get("reinmax", tau=1.0)
s = est(lambda z: (z * torch.arange(3.0)).sum(-1).sum(-1), logits)
s.mean().backward()
assert z.shape == (4,) and torch.equal(y.sum(-1), torch.ones(4))
assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
layer = discograd.nn.StochasticCategorical("st")
assert layer(torch.randn(2, 3)).shape == (2, 3)
from discograd.data import load_digits  # the embedded data file
assert load_digits().train.shape[0] > 0
print("SMOKE OK", discograd.__version__, discograd.__file__)
"""


@SLOW
def test_fresh_venv_installs_wheel_and_sdist(tmp_path):
    """A new venv (no system site-packages) with torch==2.13.0, numpy and tqdm installs the
    wheel, pulling nothing optional (ninja at most); it imports, samples, runs an estimator,
    a layer and the CLI. The sdist then builds and installs in its place."""
    built = _build(tmp_path)
    wheel, sdist = built["wheel"], built["sdist"]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = _venv_python(env_dir)
    pip = [py, "-m", "pip", "install", "-q"]
    _run(pip + ["torch==2.13.0", "numpy", "tqdm"], timeout=1200)
    before = _installed(py)
    _run(pip + [wheel], timeout=600)
    added = _installed(py) - before
    assert "discograd" in added and added <= {"discograd", "ninja"}, added  # nothing optional
    outside = {"cwd": tmp_path, "timeout": 600}  # not the checkout: import the installed copy
    out = _run([py, "-c", SMOKE], **outside)
    assert "SMOKE OK" in out and "site-packages" in out
    scripts = py.parent
    assert "doctor" in _run([scripts / "discograd", "--help"], **outside)
    assert "fast paths" in _run([scripts / "discograd", "doctor"], **outside)
    # The sdist: it builds (setuptools from PyPI in pip's isolated build env) and installs.
    _run(pip + ["--force-reinstall", "--no-deps", sdist], timeout=900)
    assert "SMOKE OK" in _run([py, "-c", SMOKE], **outside)
