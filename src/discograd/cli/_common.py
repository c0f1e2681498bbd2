"""What the training commands (vae, sbn, semisup, gan) share: option groups, the estimator and
its temperature, the checks, and the frame of a run.

Options (each command passes its own defaults)::

    add_estimator_options(g, default=..., tau=..., tau_min=..., anneal_rate=...)
    add_loop_options(g, steps=..., batch_size=..., lr=..., eval_every=...)  # + --nproc ...
    add_output_options(g, out="runs/NAME")

A run::

    def run(args):
        def setup():             # everything from the options; errors are usage errors (2)
            check_device(args.device)
            ...
            return experiment, train_config(args)

        def train(built):        # after the --nproc restart, in every process
            experiment, config = built
            return train_and_report(experiment, config, args, "NAME", draw=..., result_line=...)

        return run_command("NAME", args, setup, train)

:func:`run_command` restarts the command in N processes with ``--nproc N``
(:func:`launch_if_requested`) once ``setup`` has checked the options; under ``torchrun``
:func:`discograd.train.fit` joins the process group from the environment, and only rank 0
(:func:`discograd.distributed.is_main`) prints and writes files.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import math
import sys
import tempfile
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
)

from discograd._json import dumps as json_dumps
from discograd.distributed import is_main, launch, under_launcher

__all__ = [
    "SETUP_ERRORS",
    "HelpFormatter",
    "add_data_options",
    "add_estimator_options",
    "add_loop_options",
    "add_output_options",
    "add_preset_option",
    "add_temperature_options",
    "add_training_options",
    "build_estimator",
    "check_device",
    "check_enumeration",
    "describe_estimator",
    "int_list",
    "is_main",
    "launch_if_requested",
    "load_dataset",
    "precheck_enumeration",
    "prepare_out",
    "run_command",
    "speaker",
    "temperature",
    "timing",
    "train_and_report",
    "train_and_summarize",
    "train_config",
    "training_settings",
]

T = TypeVar("T")

# Errors of a command's setup that are the options' fault: reported in one line, exit status 2.
SETUP_ERRORS: Tuple[Type[Exception], ...] = (ValueError, ImportError, TypeError, OSError)

# Exit status of a run stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where there is none to show (``None``:
    the option's own help says what happens without it)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------
# Option groups.


def add_estimator_options(
    group: Any, *, default: str, choices: Optional[Sequence[str]] = None, **temperature: Any
) -> None:
    """``--estimator`` (any registered name, or one of ``choices``), the temperature options
    (:func:`add_temperature_options`, given ``temperature``: its defaults) and
    ``--estimator-option``."""
    if choices is None:
        from discograd.estimators import available

        names = available()
    else:
        names = list(choices)
    group.add_argument(
        "--estimator",
        default=default,
        metavar="NAME",
        choices=None if choices is None else names,
        help="gradient estimator, one of: " + ", ".join(names),
    )
    add_temperature_options(group, **temperature)
    group.add_argument(
        "--estimator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra option passed to the estimator, e.g. n_samples=4 (rloo), baseline=ema "
        "(reinforce), k=10 (gumbel-rao) (repeatable; values are Python literals or strings)",
    )


def add_data_options(group: Any, *, help: str) -> None:
    """``--dataset`` (``help``: the names the command takes) and ``--data-dir`` (the folder of
    the data files, :func:`discograd.data.load`'s ``data_dir``), both passed to
    :func:`load_dataset`."""
    group.add_argument("--dataset", default="digits", help=help)
    group.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder of the data files (read there, downloaded there when missing; default: "
        "$DISCOGRAD_DATA, else ~/.cache/discograd)",
    )


def add_preset_option(parser: Any, command: str, *, whose: str = "the paper's") -> None:
    """``--preset NAME``: named settings of ``command``
    (:mod:`discograd.experiments.presets`), ``whose`` they are in the help."""
    from discograd.experiments.presets import PresetAction

    parser.add_argument(
        "--preset",
        action=PresetAction,
        command=command,
        default=None,
        help=f"named settings ({whose}); options given on the command line win",
    )


def add_temperature_options(
    group: Any,
    *,
    tau: float,
    schedule: str = "constant",
    tau_min: float,
    anneal_rate: float,
    every: int = 100,
    note: str = "",
) -> None:
    """``--tau``, ``--tau-schedule``, ``--tau-min``, ``--anneal-rate``, ``--anneal-every``,
    with the command's defaults; :func:`temperature` reads them back. ``note``: a sentence
    added to --tau's help."""
    group.add_argument(
        "--tau",
        type=float,
        default=tau,
        help="temperature of the estimators that take one (the initial temperature with "
        "--tau-schedule exp)" + (f"; {note}" if note else ""),
    )
    group.add_argument(
        "--tau-schedule",
        choices=("constant", "exp"),
        default=schedule,
        help="constant, or exp: tau = max(tau_min, tau * exp(-rate * t)), t rounded down to a "
        "multiple of --anneal-every (Jang et al., 2016; discograd.schedules.ExponentialDecay)",
    )
    group.add_argument("--tau-min", type=float, default=tau_min, help="floor of the exp schedule")
    group.add_argument(
        "--anneal-rate", type=float, default=anneal_rate, help="rate of the exp schedule"
    )
    group.add_argument(
        "--anneal-every",
        type=int,
        default=every,
        help="steps between temperature updates of the exp schedule",
    )


def add_loop_options(
    group: Any,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    ckpt_every: int = 1000,
    log_every: int = 50,
    helps: Optional[Mapping[str, str]] = None,
) -> None:
    """The training loop's options (those of :class:`discograd.train.TrainConfig`, read back by
    :func:`train_config`): --steps, --batch-size, --lr, --seed, --eval-every, --ckpt-every,
    --log-every, --resume, --device, and --nproc, --precision, --compile
    (:func:`add_training_options`). ``helps``: help texts by option name (``"steps"``, ...)
    where a command says more than the generic one."""
    text = {
        "steps": "optimizer steps",
        "batch_size": "batch size",
        "lr": "Adam learning rate",
        "seed": "seed of every random stream",
        "eval_every": "evaluate on the validation split every N steps (0: only at the end)",
        **(helps or {}),
    }
    group.add_argument("--steps", type=int, default=steps, help=text["steps"])
    group.add_argument("--batch-size", type=int, default=batch_size, help=text["batch_size"])
    group.add_argument("--lr", type=float, default=lr, help=text["lr"])
    group.add_argument("--seed", type=int, default=0, help=text["seed"])
    group.add_argument("--eval-every", type=int, default=eval_every, help=text["eval_every"])
    group.add_argument(
        "--ckpt-every",
        type=int,
        default=ckpt_every,
        help="write a checkpoint every N steps (0: only at the end)",
    )
    group.add_argument(
        "--log-every",
        type=int,
        default=log_every,
        help="write a training row to metrics.jsonl every N steps",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out (same settings)",
    )
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    add_training_options(group)


def add_output_options(group: Any, *, out: str, figures: str = "the PNG figures") -> None:
    """``--out`` (default ``out``), ``--no-plots`` (do not draw ``figures``), ``--quiet``."""
    group.add_argument("--out", default=out, metavar="DIR", help="output folder")
    group.add_argument("--no-plots", action="store_true", help=f"do not draw {figures}")
    group.add_argument("--quiet", action="store_true", help="no progress bar or messages")


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


def int_list(text: str) -> Tuple[int, ...]:
    """An option's ``W1,W2,...``: positive integers."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# The options, read back.


def check_device(text: str) -> str:
    """``--device`` checked before any work: a torch device string this machine has.

    Returns it unchanged; ValueError naming --device for a malformed string, a device type
    without a backend here (cuda without a GPU, ...) or an index past the devices present.
    """
    from discograd.train import check_device as check

    check(text, name="--device", cpu_hint="--device cpu")
    return text


def training_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The TrainConfig keywords --precision and --compile set."""
    return {"precision": args.precision, "compile": bool(args.compile)}


def train_config(args: argparse.Namespace, **extra: Any) -> Any:
    """The :class:`~discograd.train.TrainConfig` of the training loop's options
    (``add_loop_options``) and --out, --quiet (ValueError if invalid); ``extra``: the
    command's own fields."""
    from discograd.train import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
        log_every=args.log_every,
        out_dir=args.out,
        resume=args.resume,
        quiet=args.quiet,
        device=args.device,
        **training_settings(args),
        **extra,
    )


def temperature(args: argparse.Namespace) -> Tuple[Any, Dict[str, Any]]:
    """The temperature the options describe, and its record for config.json: ``--tau``, or
    with ``--tau-schedule exp`` the :class:`~discograd.schedules.ExponentialDecay` schedule
    max(tau_min, tau exp(-rate t)) updated every --anneal-every steps."""
    from discograd import schedules

    # Checked here, by the options' names: the schedule's own errors name its arguments.
    _check_number("--tau", args.tau, low=0.0)
    if args.tau_schedule == "exp":
        _check_number("--tau-min", args.tau_min, low=0.0)
        _check_number("--anneal-rate", args.anneal_rate, low=0.0, strict=False)
        if args.anneal_every < 1:
            raise ValueError(f"--anneal-every must be >= 1, got {args.anneal_every}")
        schedule = schedules.ExponentialDecay(
            args.tau, args.anneal_rate, args.tau_min, args.anneal_every
        )
        record = {
            "schedule": "exp",
            "tau0": args.tau,
            "rate": args.anneal_rate,
            "tau_min": args.tau_min,
            "every": args.anneal_every,
        }
        return schedule, record
    return args.tau, {"schedule": "constant", "tau": args.tau}


def _check_number(option: str, value: float, *, low: float, strict: bool = True) -> None:
    """ValueError naming ``option`` unless ``value`` is finite and > ``low`` (>= if not
    ``strict``)."""
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        sign = ">" if strict else ">="
        raise ValueError(f"{option} must be finite and {sign} {low:g}, got {value}")


def build_estimator(args: argparse.Namespace) -> Tuple[Any, Dict[str, Any]]:
    """The estimator named by --estimator with its --estimator-option items, given the
    temperature of the options (``temperature(args)``) when it takes one and no tau option
    was given; and the settings that describe it (``estimator_options``, ``tau``)."""
    from discograd import estimators

    options = parse_estimator_options(args.estimator_option)
    settings: Dict[str, Any] = {"estimator_options": {k: repr(v) for k, v in options.items()}}
    if "tau" in estimator_parameters(args.estimator) and "tau" not in options:
        options["tau"], settings["tau"] = temperature(args)
    return estimators.get(args.estimator, **options), settings


def describe_estimator(name: str, settings: Dict[str, Any]) -> str:
    """One line for the log: the estimator's name, temperature and options."""
    text = name
    tau = settings.get("tau")
    if tau and tau["schedule"] == "constant":
        text += f" (tau {tau['tau']})"
    elif tau:
        text += f" (tau {tau['tau0']} -> {tau['tau_min']}, exp rate {tau['rate']})"
    if settings["estimator_options"]:
        text += " " + ", ".join(f"{k}={v}" for k, v in settings["estimator_options"].items())
    return text


def check_enumeration(estimator: Any, configurations: int, what: str) -> None:
    """For an estimator that enumerates (``exact``, with ``max_configurations``): ValueError
    before any work when the ``configurations`` of ``what`` (e.g. ``"--n-latent 8 latents of
    --n-classes 8 classes"``) exceed its limit, naming the option that raises it (the
    estimator itself would stop the run at its first step). Other estimators pass."""
    limit = getattr(estimator, "max_configurations", None)
    if limit is None or configurations <= limit:
        return
    name = getattr(estimator, "name", None) or "exact"
    if configurations <= 2**32:
        count = str(configurations)
        fix = (
            f"raise the limit with --estimator-option max_configurations={configurations} "
            f"(time and memory grow with it), use fewer or smaller latents,"
        )
    else:
        count = f"about 10^{len(str(configurations)) - 1}"
        fix = "far too many to enumerate: use fewer or smaller latents"
    raise ValueError(
        f"--estimator {name} enumerates every configuration of {what}: {count}, above its "
        f"limit max_configurations={limit}; {fix} or choose a sampling estimator"
    )


def precheck_enumeration(
    command: str, args: argparse.Namespace, configurations: int, what: str
) -> Optional[int]:
    """:func:`check_enumeration` for a command whose setup is not in this package: with an
    enumerating --estimator, builds it from the options and checks ``configurations``; prints
    the error and returns 2 if it (or the estimator's options) is refused, None otherwise."""
    if "max_configurations" not in estimator_parameters(args.estimator):
        return None
    try:
        estimator, _ = build_estimator(args)
        check_enumeration(estimator, configurations, what)
    except (ValueError, TypeError) as exc:
        print(f"discograd {command}: error: {exc}", file=sys.stderr)
        return 2
    return None


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


def _squash(name: str) -> str:
    return "".join(c for c in name.strip().lower() if c.isalnum())


def load_dataset(name: str, data_dir: Optional[str] = None) -> Any:
    """--dataset: 'digits' from the package itself; any other name through
    ``discograd.data.load``, its files in ``data_dir`` (--data-dir; None: the data package's
    default folders). ValueError naming --dataset for an unknown name."""
    from discograd import data as data_module

    if name == "digits":
        return data_module.load_digits()
    load = getattr(data_module, "load", None)
    if load is None:
        raise ValueError(f"unknown --dataset {name!r}; this version of discograd has: digits")
    names = getattr(data_module, "dataset_names", lambda: ())()
    is_npz = name.startswith(("mnist-npz:", "npz:"))
    if names and not is_npz and _squash(name) not in {_squash(n) for n in names}:
        raise ValueError(
            f"unknown --dataset {name!r}; one of: {', '.join(names)}, or mnist-npz:PATH (a "
            f".npz file of images and labels)"
        )
    try:
        return load(name, data_dir=data_dir) if data_dir is not None else load(name)
    except (ValueError, ImportError, TypeError, OSError):
        raise  # the data package's errors name the file already
    except Exception as exc:  # e.g. zipfile.BadZipFile from a truncated .npz
        raise ValueError(
            f"--dataset {name!r} could not be read ({type(exc).__name__}: {exc}); is the file "
            f"truncated or corrupt?"
        ) from exc


def prepare_out(out: Any) -> List[Path]:
    """``--out`` checked before any work: the folder is created (with its parents) and a file
    is written in it and removed. Returns the folders it created, the outermost first (to
    remove again if the run stops before writing anything). ValueError ``--out OUT: reason``
    for a path under a file, a file, or a folder this process cannot create or write to."""
    path = Path(out)
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        where = "is a file" if parent == path else f"is under {parent}, a file"
        raise ValueError(f"--out {out}: {where}, not a folder")
    created: List[Path] = []
    doing = "cannot create the folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        created = [p for p in reversed(missing) if p.is_dir()]
        doing = "cannot write in the folder"
        with tempfile.NamedTemporaryFile(dir=path, prefix=".discograd-write-test-"):
            pass
    except OSError as exc:
        remove_empty(created)
        reason = exc.strerror or str(exc)
        raise ValueError(f"--out {out}: {doing} ({reason})") from None
    return created


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (from :func:`prepare_out`), innermost first, where still empty."""
    for folder in reversed(list(folders)):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or gone): leave it and its parents


# ---------------------------------------------------------------------------------------------
# The frame of a run.


def run_command(
    command: str,
    args: argparse.Namespace,
    setup: Callable[[], T],
    train: Callable[[T], int],
    *,
    errors: Tuple[Type[Exception], ...] = SETUP_ERRORS,
) -> int:
    """Run a training command: ``--out`` is checked (:func:`prepare_out`), then ``setup()``
    builds everything from the options; a bad --out or one of ``errors`` in setup is reported
    as ``discograd COMMAND: error: ...`` with exit status 2 (nothing trained, nothing written:
    the folders made for --out are removed again); with ``--nproc N`` the command then
    restarts in N processes and returns their status; otherwise ``train(built)`` returns the
    status, a :class:`~discograd.train.ConfigError` ending it with status 2 as well, a
    non-finite loss or an unusable checkpoint with status 1, Ctrl-C with status 130 and one
    line saying where the last checkpoint is."""
    from discograd.train import CheckpointError, ConfigError, NonFiniteLossError

    out = getattr(args, "out", None)
    try:
        created = prepare_out(out) if out is not None else []
    except ValueError as exc:
        print(f"discograd {command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        built = setup()
    except errors as exc:
        remove_empty(created)
        print(f"discograd {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        remove_empty(created)
        return _interrupted(command, None)
    try:
        # --nproc N: the settings are valid; run them in N processes instead of this one.
        code = launch_if_requested(args)
        if code is not None:
            return code
        return train(built)
    except ConfigError as exc:  # found by fit before it trained or wrote anything
        print(f"discograd {command}: error: {exc}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointError) as exc:
        print(f"discograd {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted(command, out)


def _interrupted(command: str, out: Optional[str]) -> int:
    """Ctrl-C: one line instead of the traceback (rank 0 speaks), exit status 130. The trainer
    writes checkpoint.pt atomically every --ckpt-every steps, so the file in --out is whole:
    the last one written before the interruption."""
    from discograd.train import CHECKPOINT_FILE

    if is_main():
        if out is None:
            text = "interrupted before training started; nothing was written"
        elif (Path(out) / CHECKPOINT_FILE).is_file():
            text = (
                f"interrupted; the last checkpoint is in {out}; rerun the same command with "
                f"--resume to continue from it"
            )
        else:
            text = (
                f"interrupted before the first checkpoint (written every --ckpt-every steps); "
                f"nothing to resume in {out}"
            )
        print(f"\ndiscograd {command}: {text}", file=sys.stderr, flush=True)
    return INTERRUPTED


def launch_if_requested(args: argparse.Namespace) -> Optional[int]:
    """With ``--nproc N`` > 1 outside torchrun: run the command in N processes and return the
    exit status; otherwise None (carry on in this process)."""
    nproc = getattr(args, "nproc", 1)
    if nproc <= 1 or under_launcher():
        return None
    return launch(args, nproc)


def speaker(args: argparse.Namespace) -> Callable[[str], None]:
    """``say(msg)``: print a progress message, unless --quiet or not rank 0 (rank 0 speaks
    for a multi-process run)."""

    def say(msg: str) -> None:
        if not args.quiet and is_main():
            print(msg, flush=True)

    return say


def train_and_summarize(
    experiment: Any, config: Any, say: Callable[[str], None], name: str
) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """fit() with ``config``; on rank 0, writes summary.json and returns its content with the
    result (other ranks of a multi-process run: the result and None).

    summary.json: ``seconds`` is the whole run's wall time (a resumed run's includes the time
    before the interruption); ``train_seconds`` and ``steps_per_second`` leave out the time
    this process spent in ``experiment.evaluate`` (``FitResult.eval_seconds``: periodic and
    final evaluations; checkpoints stay in). Under several processes ``steps_per_second``
    counts the steps of the whole run (each step one global batch).
    """
    import torch

    from discograd.train import fit

    say(f"output: {Path(config.out_dir).resolve()}")
    torch_threads = torch.get_num_threads()
    result = fit(experiment, config)
    if not is_main():
        return result, None
    train_seconds = max(result.elapsed - result.eval_seconds, 1e-9)
    summary = {
        "experiment": name,
        "steps": result.step,
        "seconds": round(result.elapsed, 2),
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(result.step / train_seconds, 2),
        "device": config.device,
        "torch_threads": torch_threads,
        "processes": result.world_size,
        **{split: metrics for split, metrics in result.final.items()},
    }
    # Strict JSON: a diverged run's NaN metric is the string "nan" (as in metrics.jsonl).
    (Path(config.out_dir) / "summary.json").write_text(json_dumps(summary, indent=2) + "\n")
    return result, summary


def train_and_report(
    experiment: Any,
    config: Any,
    args: argparse.Namespace,
    name: str,
    *,
    draw: Callable[[], Sequence[Path]],
    result_line: Callable[[Dict[str, Any]], str],
    rate: bool = True,
) -> int:
    """:func:`train_and_summarize`, then on rank 0 the figures (``draw()``, unless
    --no-plots) and one line: ``result_line`` of the final test metrics and :func:`timing`
    (with the training steps per second if ``rate``). Returns the exit status, 0."""
    say = speaker(args)
    result, summary = train_and_summarize(experiment, config, say, name)
    if summary is None:
        return 0  # not rank 0: rank 0 writes the files and prints the result
    if not args.no_plots:
        figures = draw()
        if figures:
            say("figures: " + ", ".join(str(f) for f in figures))
    line = result_line(result.final.get("test", {}))
    print(f"{line}  {timing(result, summary if rate else None)}", flush=True)
    return 0


def timing(result: Any, summary: Optional[Dict[str, Any]] = None) -> str:
    """The end of a run's result line: ``[steps, seconds]``, and the training steps per second
    of ``summary`` when given."""
    rate = f", {summary['steps_per_second']} steps/s" if summary else ""
    return f"[{result.step} steps, {result.elapsed:.1f} s{rate}]"
