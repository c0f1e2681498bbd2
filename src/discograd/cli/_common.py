"""Options every training command shares: processes, precision, compilation.

A command adopts them in four places::

    add_training_options(group)                  # add_parser: --nproc, --precision, --compile
    TrainConfig(..., **training_settings(args))  # run(): precision=, compile=
    code = launch_if_requested(args)             # run(), once the settings are checked
    if code is not None:
        return code

and, after :func:`discograd.train.fit`, writes its own files (summary, figures) only where
:func:`discograd.distributed.is_main` holds. Under ``torchrun`` the command needs nothing
else: :func:`~discograd.train.fit` joins the process group from the environment.
"""

from __future__ import annotations

import argparse
import ast
import inspect
from typing import Any, Dict, List, Optional

from discograd.distributed import is_main, launch, under_launcher

__all__ = ["add_training_options", "is_main", "launch_if_requested", "training_settings"]


def add_training_options(group: Any) -> None:
    """Add ``--nproc``, ``--precision`` and ``--compile`` to a parser or argument group."""
    group.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        metavar="N",
        help="train in N processes on this machine (DistributedDataParallel; starts torchrun "
        "itself; gloo on CPU, nccl on GPU); --batch-size stays the global batch. For several "
        "machines, start the command with torchrun instead",
    )
    group.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="mixed precision of the training step (torch.autocast; fp16 adds loss scaling); "
        "bf16 is the CPU's (faster than fp32 where the CPU has bf16 instructions), fp16 on "
        "CPU is much slower; evaluation stays fp32",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step (the first steps are slow while it compiles)",
    )


def launch_if_requested(args: argparse.Namespace) -> Optional[int]:
    """With ``--nproc N`` > 1 outside torchrun: run the command in N processes and return the
    exit status; otherwise None (carry on in this process)."""
    nproc = getattr(args, "nproc", 1)
    if nproc <= 1 or under_launcher():
        return None
    return launch(args, nproc)


def training_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The TrainConfig keywords these options set."""
    return {"precision": args.precision, "compile": bool(args.compile)}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_estimator_options(items: List[str]) -> Dict[str, Any]:
    """``--estimator-option KEY=VALUE`` items as keyword arguments (Python literals or strings)."""
    options: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--estimator-option must be KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key.strip()] = text
    return options


def estimator_parameters(name: str) -> List[str]:
    """The constructor arguments of the estimator registered as ``name`` ([] if unknown)."""
    from discograd.estimators import estimator_class

    try:
        cls = estimator_class(name)
    except ValueError:
        return []
    return list(inspect.signature(cls.__init__).parameters)
