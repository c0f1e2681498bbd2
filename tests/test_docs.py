"""The documentation cannot rot: its code runs, its links resolve, every module is documented.

- Every ```python block of ``docs/**/*.md`` runs, page by page (the blocks of a page share one
  namespace, top to bottom, as a reader would run them), and so do the README's (the
  quickstart). A block preceded by a ``% docs-test: skip REASON`` line is skipped, with that
  reason shown by pytest.
- Every relative link and image of the Markdown pages points to a file that exists.
- Every public module of the package has an ``automodule`` in ``docs/api/`` (the command
  modules are documented by the ``cli-reference`` directive).
- With ``DISCOGRAD_DOCS_BUILD=1`` (set by ``.ci/docs``, which installs Sphinx and Chromium): the
  strict Sphinx build (warnings, broken links and unresolved references are errors) and the
  headless-browser check of the built site (tests/docs_browser_check.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SITE = DOCS / "_build" / "html"
README = ROOT / "README.md"

FENCE = re.compile(
    r"^(?P<fence>```+|~~~+)(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S
)
SKIP = re.compile(r"^%\s*docs-test:\s*skip\b\s*(?P<reason>.*)$")


@dataclass
class Block:
    page: Path
    line: int
    code: str
    skip: Optional[str]


def python_blocks(page: Path) -> List[Block]:
    """The ```python blocks of a Markdown page, with their line numbers and skip reasons."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        info = match.group("info").strip()
        if info.split(" ", 1)[0] not in ("python", "py", "{code-block} python"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.match(before.strip())
        reason = (skip.group("reason").strip() or "marked to skip") if skip else None
        blocks.append(Block(page, line + 1, match.group("body"), reason))
    return blocks


def doc_pages() -> List[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


PAGES_WITH_CODE = [p for p in doc_pages() + [README] if python_blocks(p)]


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_rel)
def test_code_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocks = python_blocks(page)
    monkeypatch.chdir(tmp_path)  # whatever an example writes lands in a scratch folder
    namespace: Dict[str, object] = {"__name__": f"docs_example_{page.stem}"}
    skipped = []
    # Examples may draw from torch's global generator: seed it, and give it back afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for block in blocks:
            if block.skip:
                skipped.append(f"{_rel(page)}:{block.line}: {block.skip}")
                continue
            # Line numbers in tracebacks are those of the page.
            code = "\n" * (block.line - 1) + block.code
            exec(compile(code, str(page), "exec"), namespace)
    if skipped:
        pytest.skip("examples not run: " + "; ".join(skipped))


def test_every_guide_has_examples():
    """The guides teach by example: each has at least one block that runs."""
    guides = [p for p in doc_pages() if p.parent.name == "guides"]
    assert guides, "no guides found in docs/guides"
    for page in guides:
        runnable = [b for b in python_blocks(page) if not b.skip]
        assert runnable, f"{_rel(page)} has no runnable python example"


def test_readme_quickstart_is_collected():
    blocks = python_blocks(README)
    assert any("estimators.get" in b.code and ".backward()" in b.code for b in blocks), (
        "the README's quickstart block was not found"
    )


LINK = re.compile(r"(?<!\!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<target>[^)\s]+)\)")
DIRECTIVE_PATH = re.compile(r"^```\{(?:figure|image|include)\}\s+(?P<target>\S+)", re.M)


def _strip_code(text: str) -> str:
    return FENCE.sub(lambda m: "" if not m.group("info").startswith("{") else m.group(0), text)


@pytest.mark.parametrize("page", doc_pages(), ids=_rel)
def test_links_and_images_resolve(page: Path):
    text = _strip_code(page.read_text(encoding="utf-8"))
    targets = [m.group("target") for m in LINK.finditer(text)]
    targets += [m.group("target") for m in IMAGE.finditer(text)]
    targets += [m.group("target") for m in DIRECTIVE_PATH.finditer(text)]
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page (Sphinx checks anchors)
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{_rel(page)}: links to missing files: {broken}"


def public_modules() -> List[str]:
    """Every module of the package whose own name does not start with an underscore."""
    import discograd

    names = ["discograd"]
    for info in pkgutil.walk_packages(discograd.__path__, "discograd."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return sorted(names)


def test_every_public_module_is_in_the_api_reference():
    api = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.md"))
    documented = set(re.findall(r"^\.\. automodule:: (\S+)", api, re.M))
    if "{cli-reference}" in api:
        from discograd.cli import COMMANDS

        documented |= {f"discograd.cli.{name}" for name in COMMANDS}
    missing = [name for name in public_modules() if name not in documented]
    assert not missing, f"modules missing from docs/api/*.md: {missing}"
    # ... and nothing documented that no longer exists (found, not imported: contrib modules
    # need optional packages).
    gone = [name for name in documented if importlib.util.find_spec(name) is None]
    assert not gone, f"docs/api/*.md documents modules that do not exist: {gone}"


# -- the strict build and the browser check (.ci/docs) ------------------------------------


def _docs_build_requested() -> bool:
    return os.environ.get("DISCOGRAD_DOCS_BUILD") == "1"


build_only = pytest.mark.skipif(
    not _docs_build_requested(),
    reason="the strict Sphinx build and the headless-browser check run in .ci/docs "
    "(DISCOGRAD_DOCS_BUILD=1), which installs Sphinx and Chromium",
)


@build_only
def test_strict_build_and_browser_check():
    # .ci/docs asked for this: missing tools are a failure, not a skip.
    sys.path.insert(0, str(Path(__file__).parent))
    import docs_browser_check

    browser = docs_browser_check.find_browser()
    assert browser, "no Chromium: apt-get install -y chromium"
    if SITE.exists():
        shutil.rmtree(SITE)
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-b",
        "html",
        "-W",
        "--keep-going",
        "-n",
        "-E",
        "-q",
        str(DOCS),
        str(SITE),
    ]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"strict build failed:\n{build.stdout}\n{build.stderr}"
    print(f"strict build: {SITE} ({sum(1 for _ in SITE.rglob('*.html'))} pages)")
    summary = docs_browser_check.check_site(SITE, browser)
    for page in ("home", "api"):
        seen = summary[page]
        print(f"{seen['path']}: {seen['mathNodes']} formulas typeset; {seen['screenshot']}")
        assert Path(seen["screenshot"]).stat().st_size > 10_000
    print(f"sidebar: {', '.join(summary['home']['nav'])}")
    print(f"{summary['requests']} requests, all to the local server, none failed")
    assert summary["api"]["mathNodes"] >= docs_browser_check.MIN_API_FORMULAS


# -- the command lines of the pages parse ---------------------------------------------------

SHELL_INFOS = ("", "bash", "sh", "shell", "console", "text")


def cli_commands(page: Path) -> List[tuple]:
    """The ``discograd ...`` command lines in the shell blocks of a page, as (line, argv):
    backslash continuations joined, comments and a leading ``$`` dropped; ``python -m
    discograd`` and ``torchrun ... -m discograd`` count too."""
    import shlex

    text = page.read_text(encoding="utf-8")
    commands = []
    for match in FENCE.finditer(text):
        if match.group("info").strip().lower() not in SHELL_INFOS:
            continue
        first = text.count("\n", 0, match.start()) + 2
        logical, start = "", first
        for i, raw in enumerate(match.group("body").split("\n")):
            if not logical:
                start = first + i
            line = raw.rstrip()
            if line.endswith("\\"):
                logical += line[:-1] + " "
                continue
            logical += line
            tokens = shlex.split(logical.strip().lstrip("$ "), comments=True)
            logical = ""
            for j, token in enumerate(tokens):
                is_script = token == "discograd" and all("=" in t for t in tokens[:j])
                if is_script or (token == "discograd" and j and tokens[j - 1] == "-m"):
                    commands.append((start, tokens[j + 1 :]))
                    break
    return commands


def check_command(argv: List[str]) -> None:
    """``argv`` parses with ``discograd``'s parser and names only registered estimators and
    built-in problems (AssertionError saying what is wrong otherwise)."""
    import contextlib
    import io

    from discograd.cli import build_parser
    from discograd.estimators import available
    from discograd.problems import available_problems

    def parse(words: List[str]):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                return build_parser().parse_args(words)
        except SystemExit:
            raise AssertionError(f"does not parse: {err.getvalue().strip()}") from None

    def names(text, known, what):
        unknown = [n.split(":")[0] for n in text.split(",") if n.split(":")[0] not in known]
        assert not unknown, f"unknown {what} {unknown}"

    args = parse(argv)
    estimators = available()
    if getattr(args, "estimator", None) is not None:
        names(args.estimator, estimators, "--estimator")
    if args.command == "diagnose":
        for item in args.problem or []:
            names(item, available_problems(), "--problem")
        if args.estimators:
            names(args.estimators, estimators, "--estimators")
    if args.command == "toy" and args.toy == "bitflip":
        names(",".join(args.estimators), estimators, "--estimators")
    if args.command == "compare":
        from discograd.cli.compare import _add_options

        inner = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        _add_options(inner)
        own, passed = inner.parse_known_args(args.options)
        names(own.estimators, estimators, "--estimators")
        parse([args.experiment, *passed])  # the options compare passes on


DOC_PAGES = doc_pages() + [README]


@pytest.mark.parametrize("page", [p for p in DOC_PAGES if cli_commands(p)], ids=_rel)
def test_command_lines_parse(page: Path):
    bad = []
    for line, argv in cli_commands(page):
        try:
            check_command(argv)
        except AssertionError as exc:
            bad.append(f"{_rel(page)}:{line}: discograd {' '.join(argv)}: {exc}")
    assert not bad, "\n".join(bad)


def test_command_line_check_can_fail():
    """The checks above reject what a reader could not run: a wrong problem (the README once
    had bitflip-0.45), an unknown estimator or option; and they find README's commands."""
    for argv in (
        ["diagnose", "--problem", "bitflip-0.45,categorical-10"],
        ["vae", "--estimator", "foo"],
        ["vae", "--no-such-option"],
        ["toy", "bitflip", "--estimators", "rloo,foo"],
        ["compare", "vae", "--estimators", "st,foo"],
        ["compare", "sbn", "--steps", "x"],
    ):
        with pytest.raises(AssertionError):
            check_command(argv)
    found = [argv[:1] for _, argv in cli_commands(README)]
    assert ["diagnose"] in found and ["toy"] in found and ["vae"] in found
