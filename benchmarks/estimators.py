"""Bias, variance and time per call of every registered estimator on the built-in problems.

    python benchmarks/estimators.py            # n = 1000 estimates each; rewrites RESULTS.md
    python benchmarks/estimators.py --n 200 --no-write

For each problem of :mod:`discograd.problems` and each estimator in
``discograd.estimators.available()`` (whatever is registered when it runs), the statistics of
:func:`discograd.diagnostics.compare` (n independent calls, bias against the exact gradient by
enumeration or in closed form), and the time per call measured separately: every estimator
runs ``--calls`` calls in each of ``--rounds`` rounds, the estimators interleaved round by
round, and the median round is kept, so that load from other processes on a shared machine
hits all of them alike. Ratios are to REINFORCE (one sample, no baseline) in the same process.

Prints one markdown table per problem and writes them into benchmarks/RESULTS.md as the section
"## Estimators" (replacing that section, leaving the others), with the command, the machine
and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from discograd import diagnostics as D
from discograd.estimators import available
from discograd.problems import Problem, get_problem

PROBLEMS = ("rebar-0.45", "rebar-0.499", "categorical-10", "vae-digits", "gaussian")
RESULTS = Path(__file__).with_name("RESULTS.md")
REFERENCE = "reinforce"


def interleaved_ms_per_call(
    estimators: Dict[str, object], prob: Problem, calls: int, rounds: int, seed: int
) -> Dict[str, float]:
    """Median over rounds of the mean milliseconds of one call (forward and backward)."""
    times: Dict[str, List[float]] = {name: [] for name in estimators}
    gens = {name: torch.Generator().manual_seed(seed) for name in estimators}
    for _ in range(rounds):
        for name, est in estimators.items():
            start = time.perf_counter()
            for _ in range(calls):
                if prob.params:
                    x, wrt = prob.logits, list(prob.params)
                else:
                    x = prob.logits.detach().clone().requires_grad_(True)
                    wrt = [x]
                s = est(prob.f, x, distribution=prob.distribution, generator=gens[name])
                torch.autograd.grad(s.sum(), wrt, allow_unused=True, retain_graph=bool(prob.params))
            times[name].append(1e3 * (time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def table(rows: List[D.Row], ms: Dict[str, float]) -> str:
    ref = next(
        (r for r in rows if isinstance(r, D.GradientStats) and r.estimator == REFERENCE), None
    )
    header = (
        "| estimator | unbiased? (claim) | bias ± SE | bias p | rel. bias | variance "
        f"| var / {REFERENCE} | MSE | cosine | f evals/call | ms/call | time / {REFERENCE} |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    unsupported = []
    for r in rows:
        claim = "-" if r.unbiased_claim is None else ("yes" if r.unbiased_claim else "no")
        if isinstance(r, D.Skipped) and not r.failed:
            unsupported.append(r.estimator)
            continue
        if isinstance(r, D.Skipped):
            cells = [r.estimator, claim, r.reason] + ["-"] * 9
        else:
            var_ratio = r.variance / ref.variance if ref and ref.variance > 0 else None
            t = ms.get(r.estimator)
            t_ref = ms.get(REFERENCE)
            cells = [
                r.estimator,
                claim,
                "-" if r.bias is None else f"{r.bias:.3g} ± {r.bias_se:.2g}",
                _fmt(r.bias_pvalue, 2),
                _fmt(r.relative_bias),
                _fmt(r.variance),
                _fmt(var_ratio),
                _fmt(r.mse),
                _fmt(r.cosine),
                _fmt(r.evaluations_per_call),
                _fmt(t),
                _fmt(t / t_ref if t is not None and t_ref else None),
            ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if unsupported:
        lines += ["", f"Not run (distribution not supported): {', '.join(unsupported)}."]
    return "\n".join(lines)


def replace_section(text: str, title: str, body: str) -> str:
    """``text`` with the markdown section ``## title`` (up to the next ``## ``) replaced by
    ``body``, or with ``body`` appended when there is no such section."""
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: body.rstrip("\n") + "\n\n", text, count=1).rstrip("\n") + "\n"
    head = text.rstrip("\n") + "\n\n" if text.strip() else "# Benchmark results\n\n"
    return head + body.rstrip("\n") + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="estimates per estimator")
    parser.add_argument("--calls", type=int, default=20, help="calls per timing round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    names = available()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    started = time.perf_counter()
    sections = []
    for pname in [p for p in args.problems.split(",") if p]:
        prob = get_problem(pname)
        rows = D.compare(
            names,
            prob.f,
            prob.logits,
            n=args.n,
            distribution=prob.distribution,
            exact=prob.exact,
            seed=args.seed,
            params=prob.params,
            errors="record",
        )
        # The timing pass reuses compare's construction (same options, dtype and seed).
        built = {
            name: D.build_estimator(
                name, prob.f, prob.logits, distribution=prob.distribution, seed=args.seed
            )
            for name in names
            if any(isinstance(r, D.GradientStats) and r.estimator == name for r in rows)
        }
        ms = interleaved_ms_per_call(built, prob, args.calls, args.rounds, args.seed)
        section = f"### {prob.name}\n\n{prob.description}.\n\n{table(rows, ms)}\n"
        print(section, flush=True)
        sections.append(section)
    elapsed = time.perf_counter() - started

    command = " ".join(
        ["python benchmarks/estimators.py", *(sys.argv[1:] if argv is None else argv)]
    )
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(
        [
            "## Estimators",
            "",
            f"Command: `{command}` (n = {args.n} independent estimates per estimator, seed "
            f"{args.seed}; {elapsed:.0f} s in all).",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (load average "
            f"{load:.1f} at the start: times are noisy where it exceeds the cores), torch "
            f"{torch.__version__}, Python {platform.python_version()}, "
            f"{torch.get_num_threads()} torch threads. Date: {date}.",
            "",
            "Gradients are in the logits (in the Normal's mean and scale for `gaussian`) of "
            "E[sum of f's outputs]; float64. *bias* is ||mean - exact|| ± its noise floor "
            "sqrt(variance / n); *bias p* is the Bonferroni-corrected normal p-value of the "
            "largest per-component z-score (small: the bias is real, provided n is large "
            "enough for the normal approximation: where the gradient hinges on configurations "
            "rarer than about 10 / n, as class 0 of the first variable of `categorical-10` "
            "with probability 0.009, unbiased score-function estimators are rejected too, "
            "because their draws rarely contain those configurations and the sample variance "
            "underestimates the true one; read it next to *bias ± SE* and *cosine*); "
            "*variance* is the total "
            "variance of one estimate (sum over components); *MSE* is E||g - exact||^2 of one "
            "estimate; *cosine* is that of the mean gradient to the exact one; *ms/call* is "
            "the median over interleaved rounds of one call with its backward. Learned parts "
            "(baselines, control variates) stay at their initialization: nothing is trained "
            "here. Definitions: `discograd.diagnostics`.",
            "",
            *sections,
        ]
    )
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else ""
        RESULTS.write_text(replace_section(old, "Estimators", body))
        print(f"wrote the section 'Estimators' of {RESULTS} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
