"""Gumbel-softmax forward + backward: discograd's fused kernel against PyTorch.

Contenders, timed interleaved in one process (round-robin, median of the rounds):

- ``torch``: ``torch.nn.functional.gumbel_softmax`` (exponential_ noise, composite autograd).
- ``composite``: the best pure-PyTorch version we know: uniform noise, two in-place logs,
  softmax, and a custom autograd function that saves only the sample.
- ``discograd``: ``discograd.gumbel_softmax`` (the fused kernel where one is active).
- ``reference``: ``discograd.gumbel_softmax`` with ``DISCOGRAD_DISABLE_KERNELS=1`` (the
  pure-PyTorch fallback, with its input validation).
- Peers, when importable (``--install-peers`` installs them; they are never dependencies):
  ``relaxit``: ``relaxit.distributions.GeneralizedGumbelSoftmax(values, logits=x,
  tau=tau).rsample()``, its Gumbel-softmax distribution (which calls torch's op), built each
  step as a user would; ``storchastic``: ``storch.method.GumbelSoftmax`` over a
  ``OneHotCategorical``, its cost registered with ``storch.add_cost`` and differentiated with
  ``storch.backward()`` (Storchastic's only way to get the gradient). Each gets the same
  incoming gradient as the others (Storchastic's cost is ``(sample * grad).sum()``).

Peak memory is the peak of the bytes allocated during one forward + backward (torch
profiler's allocation events), above what existed before. The memory-traffic floor is the
time to move the bytes that forward + backward must move at the copy bandwidth measured in
the same run: read x, write y (forward), read the incoming gradient and y, write the logits'
gradient (backward): 5 tensors, i.e. 2.5 copies; a copy is timed as ``clone()`` of the logits
(a fresh allocation, like the outputs of every contender). The notes under the tables also give
the warm copy (``copy_`` into a buffer allocated once): the gap between the two is the cost of
first-touch page faults on fresh memory, large for tensors of 32 MiB or more, which glibc maps
afresh on every allocation.

Run: ``python benchmarks/ops.py [--quick] [--write] [--install-peers]``; ``--write`` replaces
the section "## Ops (Gumbel-softmax kernels)" of benchmarks/RESULTS.md.
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


Step = Callable[[torch.Tensor, torch.Tensor], None]


def backward_of(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Step:
    """Forward + backward of a sampler, against the fixed incoming gradient."""

    def step(x: torch.Tensor, grad: torch.Tensor) -> None:
        fn(x, TAU).backward(grad)

    return step


CONTENDERS: Dict[str, Step] = {
    "torch": backward_of(lambda x, tau: F.gumbel_softmax(x, tau)),
    "composite": backward_of(composite),
    "discograd": backward_of(lambda x, tau: discograd.gumbel_softmax(x, tau)),
    "reference": backward_of(reference),
}

PEER_PACKAGES = {"relaxit": "relaxit", "storchastic": "storch"}  # PyPI name: module


def relaxit_step() -> Step:
    from relaxit.distributions import (  # pyright: ignore[reportMissingImports]
        GeneralizedGumbelSoftmax,
    )

    def sample(x: torch.Tensor, tau: float) -> torch.Tensor:
        values = torch.arange(x.shape[-1], dtype=x.dtype)
        tau_t = torch.tensor(tau, dtype=x.dtype)
        return GeneralizedGumbelSoftmax(values, logits=x, tau=tau_t).rsample()

    return backward_of(sample)


def storchastic_step() -> Step:
    import storch  # pyright: ignore[reportMissingImports]
    from torch.distributions import OneHotCategorical

    def step(x: torch.Tensor, grad: torch.Tensor) -> None:
        method = storch.method.GumbelSoftmax("z", initial_temperature=TAU)
        z = method(OneHotCategorical(logits=x))
        storch.add_cost((z * grad).sum(), "cost")
        storch.backward()

    return step


def peers() -> Dict[str, Step]:
    """The peers that import here (silently absent otherwise: main() says which)."""
    found: Dict[str, Step] = {}
    for name, make in (("relaxit", relaxit_step), ("storchastic", storchastic_step)):
        try:
            found[name] = make()
        except ImportError:
            pass
    return found


def install_peers() -> None:
    """pip install the peers into this environment, with torch pinned to the installed
    version so that pip cannot swap the CPU build for another."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pin:
        pin.write(f"torch=={torch.__version__}\n")
    cmd = [sys.executable, "-m", "pip", "install", "-c", pin.name, *PEER_PACKAGES]
    print("$ " + " ".join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=True)
    finally:
        os.unlink(pin.name)


def step(fn: Step, x: torch.Tensor, grad: torch.Tensor) -> None:
    x.grad = None
    fn(x, grad)


def peak_bytes(fn: Step, x: torch.Tensor, grad: torch.Tensor) -> int:
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
    shape: Tuple[int, ...], dtype: torch.dtype, rounds: int, contenders: Dict[str, Step]
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, str]]:
    """(times of each contender, {peer: error}): a peer that fails on this shape or dtype
    (raises, or gives no gradient) is left out of the times."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype).requires_grad_()
    grad = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    names, failed = [], {}
    for name, fn in contenders.items():  # warm up (first calls build, load and allocate)
        try:
            step(fn, x, grad)
            if x.grad is None or x.grad.shape != x.shape:
                raise RuntimeError("no gradient of the logits' shape")
            names.append(name)
        except Exception as exc:  # a peer's failure is a result, not a crash
            if name in CONTENDERS:
                raise
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    buffer = torch.empty_like(x)
    buffer.copy_(x.detach())  # touched once: the warm copy pays no page faults
    copies = ["copy", "warm_copy"]
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in names + copies}
    for _ in range(rounds):
        for name in names:
            times[name].append(timed(lambda name=name: step(contenders[name], x, grad)))
        times["copy"].append(timed(lambda: x.detach().clone()))
        times["warm_copy"].append(timed(lambda: buffer.copy_(x.detach())))

    def median_ms(name: str, which: int, scale: float = 1.0) -> float:
        return scale * statistics.median(t[which] for t in times[name]) * 1e3

    out: Dict[str, Dict[str, float]] = {}
    for name in names:
        out[name] = {
            "ms": median_ms(name, 0),
            "cpu_ms": median_ms(name, 1),
            "peak_mb": peak_bytes(contenders[name], x, grad) / 2**20,
        }
    out["floor"] = {"ms": median_ms("copy", 0, 2.5), "cpu_ms": median_ms("copy", 1, 2.5)}
    out["copy"] = {"ms": median_ms("copy", 0), "cpu_ms": median_ms("copy", 1)}
    out["warm_copy"] = {"ms": median_ms("warm_copy", 0), "cpu_ms": median_ms("warm_copy", 1)}
    out["copy"]["bytes"] = out["warm_copy"]["bytes"] = 2.0 * x.numel() * x.element_size()
    return out, failed


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


def peer_table(
    rows: List[Tuple[str, str, Dict[str, Dict[str, float]]]],
    names: List[str],
    failed: Dict[Tuple[str, str], Dict[str, str]],
) -> str:
    """Wall-clock of the peers next to torch's op and discograd, from the same rounds."""
    head = " | ".join(f"{n} ms" for n in names)
    ratios = " | ".join(f"{n} / dg" for n in names)
    peaks = " / ".join(names)
    lines = [
        f"| shape | dtype | torch ms | discograd ms | {head} | {ratios} | peak MB {peaks} |",
        "|---|---|---|---|" + "---|" * (2 * len(names)) + "---|",
    ]
    for shape, dtype, r in rows:
        dg = r["discograd"]["ms"]
        cells, ratio, peak = [], [], []
        for n in names:
            if n in r:
                cells.append(f"{r[n]['ms']:.2f}")
                ratio.append(f"{r[n]['ms'] / dg:.1f}x")
                peak.append(f"{r[n]['peak_mb']:.1f}")
            else:
                cells.append("failed" if n in failed[shape, dtype] else "-")
                ratio.append("-")
                peak.append("-")
        lines.append(
            f"| {shape} | {dtype} | {r['torch']['ms']:.2f} | {dg:.2f} | "
            + " | ".join(cells + ratio)
            + f" | {' / '.join(peak)} |"
        )
    return "\n".join(lines)


def failures(failed: Dict[Tuple[str, str], Dict[str, str]]) -> List[str]:
    return [
        f"- {name} failed on {shape} {dtype}: `{why}`"
        for (shape, dtype), errors in failed.items()
        for name, why in errors.items()
    ]


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
    parser.add_argument(
        "--install-peers",
        action="store_true",
        help="pip install relaxit and storchastic first (torch stays as installed)",
    )
    args = parser.parse_args()
    if args.install_peers:
        install_peers()
    state = kernels.status()["cpu"]
    print(f"discograd CPU path: {state['path']} ({state['reason']})")
    found = peers()
    missing = [pkg for pkg in PEER_PACKAGES if pkg not in found]
    peer_note = f"- peers: {', '.join(found) or 'none'}" + (
        f" (not installed: {', '.join(missing)}; `--install-peers`)" if missing else ""
    )
    print(peer_note)
    contenders = {**CONTENDERS, **found}
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
        failed: Dict[Tuple[str, str], Dict[str, str]] = {}
        key_row = None
        for shape, dtype in cases:
            big = torch.Size(shape).numel() >= 10**7
            rounds = 3 if args.quick else (max(3, args.rounds // 3) if big else args.rounds)
            r, failed[str(tuple(shape)), str(dtype).replace("torch.", "")] = bench_shape(
                shape, dtype, rounds, contenders
            )
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
        if found:
            parts += [
                f"### {threads} thread{plural}: peers (wall-clock, same rounds)",
                "",
                peer_table(rows, list(found), failed),
                "",
                *failures(failed),
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
            peer_note,
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
