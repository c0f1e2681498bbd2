"""The ``discograd`` command line: one subcommand a module of this package.

Each command module defines ``add_parser(subparsers)`` that adds its parser and sets
``func=run`` on it; ``main`` dispatches; ``entry`` (the ``discograd`` script and
``python -m discograd``) calls it and exits with its status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, NoReturn, Optional

# Subcommand modules, in the order ``discograd --help`` lists them.
COMMANDS = ("vae", "diagnose", "gan", "toy", "sbn", "semisup", "compare", "doctor")


def build_parser() -> argparse.ArgumentParser:
    from discograd import __version__

    parser = argparse.ArgumentParser(
        prog="discograd",
        description=(
            "Sample, relax and differentiate through discrete random variables: experiments "
            "and diagnostics of gradient estimators. Run 'discograd COMMAND --help' for the "
            "options of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"discograd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"discograd.cli.{name}").add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def entry() -> NoReturn:
    """The ``discograd`` script and ``python -m discograd``: :func:`main`, then exit with its
    status through :func:`discograd.distributed.exit_process` (which a rank of a multi-process
    run needs to end without aborting)."""
    from discograd.distributed import exit_process

    exit_process(main())
