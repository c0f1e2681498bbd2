"""``discograd diagnose``: bias, variance, cosine, SNR and cost of gradient estimators.

Runs every chosen estimator ``--n`` times on each problem (:func:`discograd.diagnostics.compare`)
and prints one markdown table per problem; with ``--out DIR`` also writes ``diagnose.json``
(every number, per problem and estimator), ``diagnose.md`` (the tables) and one
``variance_bias_<problem>.png`` per problem (variance against bias on log scales, and the time
per call).

Problems are the built-in ones (:mod:`discograd.problems`, ``--problem NAME``) or your own
(``--function module:function``). The contract of a user function: it takes no arguments and
returns either a :class:`discograd.problems.Problem`, or a tuple ``(f, logits, distribution)``:

- ``f``: per-sample losses in the estimator contract: it receives samples with a leading sample
  dim, (S, ..., K) one-hot (categorical) or (S, *logits.shape) 0/1 (Bernoulli), possibly
  relaxed, and returns (S, *out_shape), out_shape a prefix of the rows' shape;
- ``logits``: a float tensor (the gradient is taken in a detached copy of it);
- ``distribution``: ``"categorical"`` or ``"bernoulli"``.

A 4-tuple ``(f, dist, "distribution", params)`` gives a ``torch.distributions.Distribution`` and
the tensors to differentiate in. The module is imported with the current directory on
``sys.path``. The exact gradient comes from enumeration when at most 2^16 configurations
(otherwise, or for a Distribution, the bias columns stay empty unless a Problem gives ``exact``).

Exit status: 0; 1 when an estimator failed on a problem (its row says why); 2 for bad options
(an unknown estimator or problem, an unloadable function).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, cast

if TYPE_CHECKING:
    from torch import Tensor

USER_FUNCTION_HELP = (
    "your own problem. FUNCTION takes no arguments and returns a "
    "discograd.problems.Problem, or a tuple (f, logits, distribution): f maps samples with a "
    "leading sample dim, (S, ..., K) one-hot or (S, *logits.shape) 0/1, possibly relaxed, to "
    "per-sample losses (S, *batch); logits is a float tensor; distribution is 'categorical' or "
    "'bernoulli'. A 4-tuple (f, dist, 'distribution', params) passes a torch Distribution and "
    "the tensors to differentiate in. The current directory is on the import path. Repeatable."
)


FOOTNOTE = (
    "bias ± SE: ||mean - exact|| and its noise floor sqrt(variance / n). bias p: normal-"
    "approximation test of 'unbiased' (Bonferroni over components); unreliable where the "
    "gradient hinges on configurations rarer than about 10 / n, which the draws rarely "
    "contain: raise --n before concluding. SNR: mean over components of |mean| / std."
)


class UsageError(Exception):
    """Bad command-line input: reported on stderr with exit status 2."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from discograd.problems import DEFAULT_PROBLEMS, available_problems

    p = subparsers.add_parser(
        "diagnose",
        help="bias, variance, cosine, SNR and cost of gradient estimators on small problems",
        description=(
            "Run gradient estimators many times on problems with exact gradients (by "
            "enumeration) and tabulate, per estimator: its own claim to be unbiased, the bias "
            "||mean - exact|| with its noise floor sqrt(variance / n), the p-value of the test "
            "'unbiased', the relative bias, the total variance of one estimate, its MSE, the "
            "cosine of the mean gradient to the exact one, the mean per-component signal-to-"
            "noise ratio |mean| / std, evaluations of f and milliseconds per call. See "
            "discograd.diagnostics for the definitions."
        ),
        epilog=(
            "example: discograd diagnose --problem vae-digits --estimators "
            "reinforce,rloo,st,gumbel-softmax --tau 0.5 --n 2000 --out diag. "
            "Exit status: 0; 1 if an estimator failed on a problem (its row says why); 2 for "
            "bad options."
        ),
    )
    p.add_argument(
        "--estimators",
        default=None,
        metavar="A,B,C",
        help="comma-separated estimator names (default: every registered estimator; those "
        "that do not support a problem's distribution are listed as skipped)",
    )
    p.add_argument(
        "--problem",
        action="append",
        default=None,
        metavar="NAME",
        help=f"built-in problem, repeatable or comma-separated, one of: "
        f"{', '.join(available_problems())} (default: {', '.join(DEFAULT_PROBLEMS)} unless "
        f"--function is given)",
    )
    p.add_argument(
        "--function",
        action="append",
        default=None,
        metavar="MODULE:FUNCTION",
        help=USER_FUNCTION_HELP,
    )
    p.add_argument(
        "--n", type=int, default=1000, help="gradient estimates per estimator (default: 1000)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every estimator's generator and initialization (default: 0)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write diagnose.json, diagnose.md and variance_bias_<problem>.png here",
    )
    p.add_argument(
        "--tau",
        type=float,
        default=None,
        help="relaxation temperature, for the estimators that take one (as tau, or as "
        "temperature for REBAR and RELAX; --estimator-option overrides it)",
    )
    p.add_argument(
        "--estimator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor option for the estimators that accept it, e.g. n_samples=4 "
        "(repeatable; values are Python literals or strings)",
    )
    p.add_argument(
        "--vectorize",
        action="store_true",
        help="one call on n replicas instead of n calls (faster; needs f to broadcast, and "
        "estimators that pool statistics over the batch then give correlated draws)",
    )
    p.add_argument("--list", action="store_true", help="list estimators and problems, and exit")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as exc:
        print(f"discograd diagnose: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from discograd import diagnostics
    from discograd.cli._common import prepare_out
    from discograd.estimators import available
    from discograd.problems import get_problem

    if args.list:
        _print_list()
        return 0
    if args.n < 2:
        raise UsageError(f"--n must be >= 2, got {args.n}")
    names = _estimator_names(args.estimators, available())
    options = _options(args.tau, args.estimator_option)
    problems = [_get(get_problem, name) for name in _problem_names(args.problem, args.function)]
    problems += [load_function(spec) for spec in args.function or []]
    if args.out:
        try:  # before the work: the files go there at the end
            prepare_out(args.out)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    results: List[Dict[str, Any]] = []
    sections: List[str] = []
    failed = False
    for prob in problems:
        rows = diagnostics.compare(
            names,
            prob.f,
            prob.logits,
            n=args.n,
            distribution=prob.distribution,
            exact=prob.exact,
            seed=args.seed,
            params=prob.params,
            options=options,
            vectorize=args.vectorize,
            errors="record",
        )
        failed |= any(isinstance(r, diagnostics.Skipped) and r.failed for r in rows)
        section = f"## {prob.name}\n\n{prob.description}\n\n{diagnostics.to_markdown(rows)}\n"
        print(section, flush=True)
        sections.append(section)
        results.append(
            {
                "problem": prob.name,
                "description": prob.description,
                "rows": [r.to_dict() for r in rows],
            }
        )
        if args.out:
            path = Path(args.out) / f"variance_bias_{_safe(prob.name)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            diagnostics.plot_variance_bias(rows, str(path), title=f"{prob.name}, n = {args.n}")
    print(FOOTNOTE, flush=True)
    if args.out:
        _write(Path(args.out), args, options, results, sections)
    return 1 if failed else 0


def _get(factory, name: str):
    try:
        return factory(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _estimator_names(spec: Optional[str], registered: Sequence[str]) -> List[str]:
    if spec is None:
        return list(registered)
    names = [s.strip().lower().replace("_", "-") for s in spec.split(",") if s.strip()]
    if not names:
        raise UsageError("--estimators is empty")
    from discograd.estimators import check_registered

    try:
        check_registered(names, "--estimators")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return names


def _problem_names(problem: Optional[List[str]], function: Optional[List[str]]) -> List[str]:
    from discograd.problems import DEFAULT_PROBLEMS

    if problem is None:
        return [] if function else list(DEFAULT_PROBLEMS)
    names = [s.strip() for item in problem for s in item.split(",") if s.strip()]
    if not names:
        raise UsageError("--problem is empty")
    return names


def _options(tau: Optional[float], items: Sequence[str]) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    if tau is not None:
        if not tau > 0:
            raise UsageError(f"--tau must be > 0, got {tau}")
        # The relaxation temperature is ``tau`` in the Gumbel-softmax family and ``temperature``
        # in REBAR / RELAX; each estimator receives only the name its constructor takes.
        options["tau"] = options["temperature"] = tau
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--estimator-option must be KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key.strip()] = value
    return options


def load_function(spec: str):
    """Import ``module:function``, call it, and return the Problem it describes."""
    from discograd.problems import Problem

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--function must be MODULE:FUNCTION, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--function {spec}: cannot import {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"--function {spec}: {module_name!r} has no function {attr!r}")
    result = fn()
    if isinstance(result, Problem):
        return result
    if isinstance(result, tuple) and len(result) in (3, 4):
        f, logits, distribution = result[:3]
        params = list(result[3]) if len(result) == 4 else None
        if not callable(f):
            raise UsageError(f"--function {spec}: the first element (f) is not callable")
        return Problem(
            name=spec,
            f=cast("Callable[[Tensor], Tensor]", f),  # the user's function, trusted as a loss
            logits=logits,
            distribution=distribution,
            description=f"user function {spec}",
            params=params,
        )
    raise UsageError(
        f"--function {spec} returned {type(result).__name__}; expected a "
        f"discograd.problems.Problem or a tuple (f, logits, distribution)"
    )


def _print_list() -> None:
    from discograd.diagnostics import estimator_class
    from discograd.estimators import available
    from discograd.problems import available_problems, problem_summary

    print("estimators (distributions they support; unbiased claim):")
    for name in available():
        cls = estimator_class(name)
        claim = "unbiased" if getattr(cls, "unbiased", False) else "biased"
        print(f"  {name:20s} {', '.join(getattr(cls, 'distributions', ())):40s} {claim}")
    print("problems:")
    for name in available_problems():
        print(f"  {name:20s} {problem_summary(name)}")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write(
    out: Path,
    args: argparse.Namespace,
    options: Dict[str, Any],
    results: List[Dict[str, Any]],
    sections: List[str],
) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "options": options,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    (out / "diagnose.json").write_text(
        json.dumps({"meta": meta, "problems": results}, indent=2, allow_nan=False) + "\n"
    )
    (out / "diagnose.md").write_text("\n".join(sections))
    print(f"wrote {out / 'diagnose.json'}, {out / 'diagnose.md'} and the figures", flush=True)
