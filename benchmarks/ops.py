"""Gumbel-softmax forward + backward: discograd's fused kernel against PyTorch.

Contenders, timed interleaved in one process (round-robin, median of the rounds):

- ``torch``: ``torch.nn.functional.gumbel_softmax`` (exponential_ noise, composite autograd).
- ``composite``: the best pure-PyTorch version we know: uniform noise, two in-place logs,
  softmax, and a custom autograd function that saves only the sample.
- ``discograd``: ``discograd.gumbel_softmax`` (the fused kernel where one is active).
- ``reference``: ``discograd.gumbel_softmax`` with ``DISCOGRAD_DISABLE_KERNELS=1`` (the
  pure-PyTorch fallback, with its input validation).

Peak memory is the peak of the bytes allocated during one forward + backward (torch
profiler's allocation events), above what existed before. The memory-traffic floor is the
time to move the bytes that forward + backward must move at the copy bandwidth measured in
the same run: read x, write y (forward), read the incoming gradient and y, write the logits'
gradient (backward): 5 tensors, i.e. 2.5 copies; a copy is timed as ``clone()`` of the logits
(a fresh allocation, like the outputs of every contender). The notes under the tables also give
the warm copy (``copy_`` into a buffer allocated once): the gap between the two is the cost of
first-touch page faults on fresh memory, large for tensors of 32 MiB or more, which glibc maps
afresh on every allocation.

Run: ``python benchmarks/ops.py [--quick] [--write]``; ``--write`` replaces the section
"## Ops (Gumbel-softmax kernels)" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import discograd
from discograd import kernels

SECTION = "## Ops (Gumbel-softmax kernels)"
RESULTS = Path(__file__).with_name("RESULTS.md")
TAU = 0.5


class _Composite(torch.autograd.Function):
    """softmax((x - log(-log U)) / tau), saving only the sample for backward."""

    @staticmethod
    def forward(ctx, x, tau):  # type: ignore[override]
        g = torch.rand_like(x).log_().neg_().log_().neg_()
        y = torch.softmax(g.add_(x).div_(tau), -1)
        ctx.tau = tau
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        dot = (grad * y).sum(-1, keepdim=True)
        return (grad - dot).mul_(y).div_(ctx.tau), None


def composite(x: torch.Tensor, tau: float) -> torch.Tensor:
    return _Composite.apply(x, tau)


def reference(x: torch.Tensor, tau: float) -> torch.Tensor:
    os.environ[kernels.DISABLE_ENV] = "1"
    try:
        return discograd.gumbel_softmax(x, tau)
    finally:
        del os.environ[kernels.DISABLE_ENV]


CONTENDERS: Dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "torch": lambda x, tau: F.gumbel_softmax(x, tau),
    "composite": composite,
    "discograd": lambda x, tau: discograd.gumbel_softmax(x, tau),
    "reference": reference,
}


def step(fn, x: torch.Tensor, grad: torch.Tensor) -> None:
    x.grad = None
    y = fn(x, TAU)
    y.backward(grad)


def peak_bytes(fn, x: torch.Tensor, grad: torch.Tensor) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(fn, x, grad)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def timed(fn: Callable[[], object]) -> Tuple[float, float]:
    """(wall-clock, process CPU) seconds of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def bench_shape(
    shape: Tuple[int, ...], dtype: torch.dtype, rounds: int
) -> Dict[str, Dict[str, float]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype).requires_grad_()
    grad = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    names = list(CONTENDERS)
    for name in names:  # warm up (first calls build, load and allocate)
        step(CONTENDERS[name], x, grad)
    buffer = torch.empty_like(x)
    buffer.copy_(x.detach())  # touched once: the warm copy pays no page faults
    copies = ["copy", "warm_copy"]
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in names + copies}
    for _ in range(rounds):
        for name in names:
            times[name].append(timed(lambda name=name: step(CONTENDERS[name], x, grad)))
        times["copy"].append(timed(lambda: x.detach().clone()))
        times["warm_copy"].append(timed(lambda: buffer.copy_(x.detach())))

    def median_ms(name: str, which: int, scale: float = 1.0) -> float:
        return scale * statistics.median(t[which] for t in times[name]) * 1e3

    out: Dict[str, Dict[str, float]] = {}
    for name in names:
        out[name] = {
            "ms": median_ms(name, 0),
            "cpu_ms": median_ms(name, 1),
            "peak_mb": peak_bytes(CONTENDERS[name], x, grad) / 2**20,
        }
    out["floor"] = {"ms": median_ms("copy", 0, 2.5), "cpu_ms": median_ms("copy", 1, 2.5)}
    out["copy"] = {"ms": median_ms("copy", 0), "cpu_ms": median_ms("copy", 1)}
    out["warm_copy"] = {"ms": median_ms("warm_copy", 0), "cpu_ms": median_ms("warm_copy", 1)}
    out["copy"]["bytes"] = out["warm_copy"]["bytes"] = 2.0 * x.numel() * x.element_size()
    return out


def copy_notes(rows: List[Tuple[str, str, Dict[str, Dict[str, float]]]]) -> List[str]:
    """One line per shape: fresh clone() against a warm copy_ (wall-clock), and what the floor
    would be at the warm bandwidth."""
    lines = []
    for shape, dtype, r in rows:
        fresh, warm = r["copy"]["ms"], r["warm_copy"]["ms"]
        gbs = r["copy"]["bytes"] / 1e6  # bytes read + written, per ms -> GB/s
        lines.append(
            f"- copy {shape} {dtype}: clone() (fresh) {fresh:.2f} ms = {gbs / fresh:.1f} GB/s, "
            f"copy_ (warm) {warm:.2f} ms = {gbs / warm:.1f} GB/s; floor {2.5 * fresh:.2f} ms, "
            f"of which page faults ~{2.5 * max(fresh - warm, 0.0):.2f} ms; "
            f"dg / warm floor {r['discograd']['ms'] / (2.5 * warm):.1f}x"
        )
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def load_average() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def table(rows: List[Tuple[str, str, Dict[str, Dict[str, float]]]], key: str = "ms") -> str:
    """Markdown table of `key` (wall "ms" or process "cpu_ms") per contender, with ratios."""
    lines = [
        "| shape | dtype | torch ms | composite ms | discograd ms | reference ms | floor ms "
        "| torch / dg | composite / dg | dg / floor | peak MB torch / composite / dg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, dtype, r in rows:
        t = {name: r[name][key] for name in r}
        dg = t["discograd"]
        lines.append(
            f"| {shape} | {dtype} | {t['torch']:.2f} | {t['composite']:.2f} "
            f"| {dg:.2f} | {t['reference']:.2f} | {t['floor']:.2f} "
            f"| {t['torch'] / dg:.1f}x | {t['composite'] / dg:.1f}x "
            f"| {dg / t['floor']:.1f}x | {r['torch']['peak_mb']:.1f} / "
            f"{r['composite']['peak_mb']:.1f} / {r['discograd']['peak_mb']:.1f} |"
        )
    return "\n".join(lines)


def targets(r: Dict[str, Dict[str, float]], key: str) -> str:
    """The issue's targets for (4096, 1000) float32, checked on one measurement."""
    dg = r["discograd"][key]
    checks = [
        ("torch / discograd", r["torch"][key] / dg, ">= 10", r["torch"][key] / dg >= 10),
        ("composite / discograd", r["composite"][key] / dg, ">= 3", r["composite"][key] / dg >= 3),
        ("discograd / floor", dg / r["floor"][key], "<= 3", dg / r["floor"][key] <= 3),
    ]
    return "; ".join(
        f"{name} = {value:.1f} (target {goal}: {'met' if ok else 'not met'})"
        for name, value, goal, ok in checks
    )


def write_section(text: str) -> None:
    """Replace (or append) this benchmark's section, leaving the rest of the file alone."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("\n" + old[end:] if end >= 0 else "\n")
    RESULTS.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, 3 rounds")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", default="2,1", help="torch thread counts to run, e.g. 2,1")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    state = kernels.status()["cpu"]
    print(f"discograd CPU path: {state['path']} ({state['reason']})")
    # (64, 8, 32768): vocabulary-sized rows; the (64, 128, 32768) is 1 GiB per fp32
    # tensor (about 8 GiB of temporaries for torch's op), too much for a shared 24 GiB machine.
    cases = [((256, 30, 10), torch.float32), ((4096, 1000), torch.float32)]
    if not args.quick:
        cases += [
            ((64, 8, 32768), torch.float32),
            ((256, 30, 10), torch.float64),
            ((4096, 1000), torch.float64),
            ((4096, 1000), torch.bfloat16),
        ]
    parts = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        load_before = load_average()
        rows = []
        key_row = None
        for shape, dtype in cases:
            big = torch.Size(shape).numel() >= 10**7
            rounds = 3 if args.quick else (max(3, args.rounds // 3) if big else args.rounds)
            r = bench_shape(shape, dtype, rounds)
            rows.append((str(tuple(shape)), str(dtype).replace("torch.", ""), r))
            if shape == (4096, 1000) and dtype == torch.float32:
                key_row = r
            print(f"threads={threads} " + table(rows[-1:]).splitlines()[-1], flush=True)
        plural = "s" if threads > 1 else ""
        parts += [
            f"### {threads} thread{plural}: wall-clock",
            "",
            f"- load before: `{load_before}`",
            f"- load after: `{load_average()}`",
            "",
            table(rows),
            "",
            f"### {threads} thread{plural}: process CPU time (less sensitive to other load)",
            "",
            table(rows, "cpu_ms"),
            "",
        ]
        parts += [
            f"Copy bandwidth, {threads} thread{plural} (bytes read + written over wall-clock; "
            "the floor uses the fresh clone(), like the contenders' outputs):",
            "",
            *copy_notes(rows),
            "",
        ]
        if key_row is not None:
            parts += [
                f"Targets, (4096, 1000) float32, {threads} thread{plural}: wall-clock: "
                f"{targets(key_row, 'ms')}. CPU time: {targets(key_row, 'cpu_ms')}.",
                "",
            ]
    text = "\n".join(
        [
            SECTION,
            "",
            f"Forward + backward of a Gumbel-softmax sample (tau = {TAU}, soft), median "
            "wall-clock and process CPU time over interleaved rounds; ratios > 1 mean "
            "discograd is faster. On a machine shared with other jobs, wall-clock times "
            "include waiting for a core (and, with 2 threads, for the other thread); CPU "
            "time does not, but with 2 threads it counts OpenMP spin-waiting. "
            "`reference` is discograd's pure-PyTorch fallback (with its input checks); "
            "`floor` is 2.5 copies at the measured copy bandwidth; peak MB is allocated "
            "memory above the inputs during one step.",
            "",
            f"- machine: {machine()}",
            f"- discograd CPU path: {state['path']} ({state['reason'].split(', built')[0]})",
            f"- command: `{' '.join(['python'] + sys.argv)}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "",
            *parts,
            "(64, 8, 32768) stands for the issue's (64, 128, 32768), shrunk 16x to fit memory "
            "and time on a shared 2-core machine.",
        ]
    )
    print()
    print(text)
    if args.write:
        write_section(text)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
