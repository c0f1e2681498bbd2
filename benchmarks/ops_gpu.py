"""Gumbel-softmax on a GPU: discograd's Triton kernel against torch's op, bandwidth, NaN count.

    python benchmarks/ops_gpu.py                 # on a CUDA machine with triton installed
    python benchmarks/ops_gpu.py --draws 1e9     # the issue's 10^9 draws per dtype
    python benchmarks/ops_gpu.py --device cpu --quick   # a dry run of the script on CPU

Measured in one process, contenders interleaved round by round, each time the median of the
rounds (CUDA events around ``--calls`` back-to-back calls):

- ``torch``: ``torch.nn.functional.gumbel_softmax`` (``exponential_`` noise, composite
  autograd); ``composite``: uniform noise, two logs, softmax, a custom autograd function that
  saves only the sample; ``discograd``: ``discograd.gumbel_softmax`` (the Triton kernel);
  ``unchecked``: the same with ``discograd.set_validate_args(False)`` (no check of the logits,
  so no host sync to read the kernel's flag; torch's op checks nothing).
- forward + backward (``torch.autograd.grad`` of the sample against a fixed incoming gradient),
  forward alone and backward alone for discograd.
- Bandwidth: the bytes the fused kernels must move (forward: read x, write y; backward: read
  the incoming gradient and y, write the logits' gradient: 5 logits-sized tensors) over the
  time, against the copy bandwidth measured in the same run (``clone`` of a 1 GiB tensor,
  bytes read + written).
- Peak memory of the forward above the inputs, in logits-sized units (beyond the output).
- Non-finite values among ``--draws`` draws of ``discograd.gumbel_noise`` and of
  ``discograd.gumbel_softmax`` (tau = 0.01) per dtype, and of torch's op on the same logits.

Prints markdown tables (and writes them to ``--out`` if given). ``--sweep`` instead times the
forward kernel alone under each launch configuration of ``triton_gs.TUNING`` (single pass or
two passes, tile size, warps, the fast outer log) on vocabulary-sized rows, to choose them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import discograd
from discograd import kernels

TAU = 0.5
SHAPES = [(256, 30, 10), (4096, 1000), (64, 128, 32768)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tau):  # pyright: ignore[reportIncompatibleMethodOverride]
        g = torch.rand_like(x, dtype=torch.float32).log_().neg_().log_().neg_()
        y = torch.softmax(g.add_(x).div_(tau), -1).to(x.dtype)
        ctx.tau = tau
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        (y,) = ctx.saved_tensors
        dot = (grad * y).sum(-1, keepdim=True)
        return (grad - dot).mul_(y).div_(ctx.tau), None


CONTENDERS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch": lambda x: F.gumbel_softmax(x, TAU),
    "composite": lambda x: _Composite.apply(x, TAU),
    "discograd": lambda x: discograd.gumbel_softmax(x, TAU),
    "discograd-unchecked": lambda x: _unchecked(x),
}


def _unchecked(x: torch.Tensor) -> torch.Tensor:
    """discograd.gumbel_softmax with ``set_validate_args(False)``: no NaN/inf/mask check of the
    logits, hence no host sync after the kernel to read its flag (torch's op checks nothing)."""
    discograd.set_validate_args(False)
    try:
        return discograd.gumbel_softmax(x, TAU)
    finally:
        discograd.set_validate_args(True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def copy_bandwidth(device: torch.device, quick: bool) -> float:
    """Bytes read + written per second by ``clone`` of a large tensor."""
    n = (1 << 24) if quick else (1 << 28)  # 64 MiB / 1 GiB of float32
    x = torch.empty(n, device=device)
    x.fill_(1.0)
    for _ in range(3):
        x.clone()
    ms = statistics.median(time_ms(lambda: x.clone(), 10, device) for _ in range(5))
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)


def bench_shape(shape, dtype, device, rounds: int, calls: int) -> Dict[str, float]:
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=gen).to(dtype).requires_grad_()
    grad = torch.randn(shape, device=device, generator=gen).to(dtype)
    steps: Dict[str, Callable[[], object]] = {}
    for name, fn in CONTENDERS.items():
        steps[name] = lambda fn=fn: torch.autograd.grad(fn(x), x, grad)
    with torch.no_grad():
        steps["dg-forward"] = lambda: discograd.gumbel_softmax(x, TAU)
    y = discograd.gumbel_softmax(x, TAU)
    steps["dg-backward"] = lambda: torch.autograd.grad(y, x, grad, retain_graph=True)
    for fn in steps.values():  # warm-up (Triton compiles here)
        fn()
        fn()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            times[k].append(time_ms(fn, calls, device))
    out = {k: statistics.median(v) for k, v in times.items()}
    # Peak memory of a forward above what exists, in logits-sized units beyond the output.
    if device.type == "cuda":
        del y
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out_y = discograd.gumbel_softmax(x, TAU)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        size = x.numel() * x.element_size()
        out["peak_extra_logits"] = extra / size - 1.0
        del out_y
    return out


def nonfinite_counts(dtype, device, draws: float, quick: bool) -> Dict[str, Tuple[int, int]]:
    """(non-finite values, draws) for discograd's noise, its softmax at tau 0.01, torch's op."""
    cols = 32768
    rows = 256 if quick else 4096  # 2^27 draws per call
    per_call = rows * cols
    calls = max(1, math.ceil(draws / per_call))  # at least `draws`
    gen = torch.Generator(device).manual_seed(1)
    counts = {"discograd noise": 0, "discograd softmax tau=0.01": 0, "torch op tau=0.01": 0}
    for _ in range(calls):
        x = (torch.randn(rows, cols, device=device, generator=gen) * 10).to(dtype)
        g = discograd.gumbel_noise((rows, cols), dtype=dtype, device=device, generator=gen)
        counts["discograd noise"] += int((~torch.isfinite(g)).sum())
        del g
        y = discograd.gumbel_softmax(x, 0.01, generator=gen)
        counts["discograd softmax tau=0.01"] += int((~torch.isfinite(y)).sum())
        del y
        t = F.gumbel_softmax(x, 0.01)
        counts["torch op tau=0.01"] += int((~torch.isfinite(t)).sum())
        del t
    return {k: (v, calls * per_call) for k, v in counts.items()}


# (shape, dtype, configurations): the single-pass kernel (whole rows in registers, at most
# `single_max_warps` warps) and the two-pass one (`chunks` 64-column chunks a tile, `warps`),
# with the outer log exact or by the hardware approximation (`fast_log`).
_TILED = [(64, 8), (128, 8), (256, 16)]
_VOCAB = [{"single_max_warps": w, "fast_log": f} for w in (16, 32) for f in ("never", "always")] + [
    {"single_cols": 0, "chunks": c, "warps": w, "fast_log": f}
    for c, w in _TILED
    for f in ("never", "always")
]
SWEEP = [
    ((8192, 32768), torch.float32, _VOCAB),
    ((8192, 32768), torch.bfloat16, _VOCAB),
    ((64, 131072), torch.float32, [{"chunks": c, "warps": w} for c, w in _TILED + [(128, 16)]]),
    (
        (4096, 8192),
        torch.float32,
        [{"single_elems_per_thread": e} for e in (16, 32, 64)]
        + [{"single_cols": 0, "chunks": 128, "warps": 8}],
    ),
]
QUICK_SWEEP = [((4, 256), torch.float32, [{"single_elems_per_thread": e} for e in (8, 32)])]


def sweep(
    device: torch.device, say: Callable[[str], None], quick: bool, rounds: int = 3
) -> List[Dict[str, object]]:
    """Forward-kernel time for each configuration (CUDA events, median of rounds)."""
    from discograd.kernels import triton_gs

    default = dict(triton_gs.TUNING)
    seed = torch.tensor([12345], dtype=torch.int64, device=device)
    say("| shape | dtype | config | fwd ms | fwd GB/s |")
    say("|---|---|---|---|---|")
    results = []
    for shape, dtype, configs in QUICK_SWEEP if quick else SWEEP:
        x = torch.randn(shape, device=device).to(dtype)
        size = x.numel() * x.element_size()
        for config in configs:
            triton_gs.TUNING.clear()
            triton_gs.TUNING.update(default)
            triton_gs.TUNING.update(config)
            fn = partial(triton_gs.forward, x, seed, TAU, None, False)
            try:
                fn()
                ms = statistics.median(time_ms(fn, 20, device) for _ in range(rounds))
            except Exception as exc:
                say(f"| {shape} | {dtype} | {config} | failed: {type(exc).__name__}: {exc} |")
                continue
            say(f"| {shape} | {dtype} | {config} | {ms:.3f} | {2 * size / ms / 1e6:.0f} |")
            results.append({"shape": shape, "dtype": str(dtype), "config": config, "ms": ms})
        triton_gs.TUNING.clear()
        triton_gs.TUNING.update(default)
        ms = statistics.median(
            time_ms(partial(triton_gs.noise, seed, shape[0], shape[1], dtype), 20, device)
            for _ in range(rounds)
        )
        say(
            f"| {shape} | {dtype} | noise kernel alone (write only) | {ms:.3f} | "
            f"{size / ms / 1e6:.0f} |"
        )
        y = triton_gs.forward(x, seed, TAU, None, False)[1]
        ms = statistics.median(
            time_ms(partial(triton_gs.backward, y, y, TAU, None, False), 20, device)
            for _ in range(rounds)
        )
        say(f"| {shape} | {dtype} | backward kernel | {ms:.3f} | {3 * size / ms / 1e6:.0f} |")
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument(
        "--shapes", help="shapes to time instead of the default set, e.g. 64x128x32768,4096x1000"
    )
    parser.add_argument("--draws", type=float, default=1e9, help="draws per dtype (NaN count)")
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    parser.add_argument("--json", default=None, help="write the raw numbers here")
    parser.add_argument("--sweep", action="store_true", help="time launch configurations")
    parser.add_argument(
        "--tuning", default=None, help="JSON overriding triton_gs.TUNING, e.g. '{\"warps\": 16}'"
    )
    args = parser.parse_args(argv)
    if args.tuning:
        from discograd.kernels import triton_gs

        triton_gs.TUNING.update(json.loads(args.tuning))
    device = torch.device(args.device)
    lines: List[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    say(f"Device: {name}; torch {torch.__version__}; kernels: {kernels.status()}")
    if args.sweep:
        results = sweep(device, say, args.quick)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1, default=str)
        return 0
    shapes = [(64, 30, 10), (512, 1000), (4, 8, 32768)] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(n) for n in item.split("x")) for item in args.shapes.split(",")]
    rounds, calls = (2, 2) if args.quick else (args.rounds, args.calls)
    bw = copy_bandwidth(device, args.quick)
    say(f"Copy bandwidth (clone, read + write): {bw / 1e12:.3f} TB/s")
    say()
    raw: Dict[str, object] = {"device": name, "copy_bandwidth": bw, "shapes": {}}
    say(
        "| shape | dtype | torch ms | composite ms | discograd ms | torch / dg | composite / dg "
        "| dg fwd ms | dg bwd ms | fwd+bwd GB/s | % of copy bw | unchecked ms | torch / unchecked "
        "| unchecked % of copy bw | peak extra (logits) |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        for dtype in DTYPES:
            try:
                r = bench_shape(shape, dtype, device, rounds, calls)
            except Exception as exc:  # report and go on: one failure must not hide the rest
                say(f"| {shape} | {dtype} | failed: {type(exc).__name__}: {exc} |")
                continue
            numel = 1
            for s in shape:
                numel *= s
            size = numel * torch.empty((), dtype=dtype).element_size()
            gbs = 5 * size / (r["discograd"] * 1e-3)
            free = r["discograd-unchecked"]
            gbs_free = 5 * size / (free * 1e-3)
            peak = r.get("peak_extra_logits", float("nan"))
            say(
                f"| {shape} | {str(dtype).replace('torch.', '')} | {r['torch']:.3f} | "
                f"{r['composite']:.3f} | {r['discograd']:.3f} | "
                f"{r['torch'] / r['discograd']:.1f}x | {r['composite'] / r['discograd']:.1f}x | "
                f"{r['dg-forward']:.3f} | {r['dg-backward']:.3f} | {gbs / 1e9:.0f} | "
                f"{100 * gbs / bw:.0f}% | {free:.3f} | {r['torch'] / free:.1f}x | "
                f"{100 * gbs_free / bw:.0f}% | {peak:.2f} |"
            )
            raw["shapes"][f"{shape} {dtype}"] = r  # type: ignore[index]
    say()
    draws = 1e6 if args.quick else args.draws
    say(f"Non-finite values over about {draws:.0e} draws per dtype (logits ~ N(0, 10^2)):")
    say()
    say("| dtype | what | non-finite | draws |")
    say("|---|---|---|---|")
    raw["nonfinite"] = {}
    for dtype in DTYPES:
        t0 = time.perf_counter()
        counts = nonfinite_counts(dtype, device, draws, args.quick)
        for what, (bad, n) in counts.items():
            say(f"| {str(dtype).replace('torch.', '')} | {what} | {bad} | {n:,} |")
        raw["nonfinite"][str(dtype)] = counts  # type: ignore[index]
        print(f"  ({dtype}: {time.perf_counter() - t0:.1f} s)", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
