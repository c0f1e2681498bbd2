"""``discograd doctor``: what this installation has, for bug reports and performance questions.

Prints four sections:

- versions: Python, torch (and the CUDA it was built with), numpy, discograd, and the optional
  packages (matplotlib for plots, triton for the CUDA fast path, pyro-ppl for
  :mod:`discograd.contrib.pyro`). Optional packages are looked up in the installed metadata, not
  imported, so the command stays quick and changes nothing;
- devices: CPU cores and torch's threads, CUDA availability and each GPU's name;
- fast paths: which sampler each device uses (fused kernel or pure-PyTorch reference) and why,
  from ``discograd.kernels.status()``; asking builds the CPU kernel once if it is not built yet
  (``DISCOGRAD_DISABLE_KERNELS=1`` skips that and forces the reference path);
- caches: the data folder (``$DISCOGRAD_DATA``, else ``$XDG_CACHE_HOME/discograd`` or
  ``~/.cache/discograd``) and the kernel build cache.

``--json`` prints the same as one JSON object. Exit status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

# Distribution names on PyPI of the optional packages, and what discograd uses them for.
OPTIONAL = {
    "matplotlib": "plots (discograd[plots])",
    "triton": "CUDA fast path (discograd[triton])",
    "pyro-ppl": "discograd.contrib.pyro (discograd[pyro])",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "doctor",
        help="versions, devices, active fast paths and cache folders of this installation",
        description=(
            "Report the versions of Python, torch, numpy, discograd and the optional packages, "
            "the CPU and CUDA devices, which fast sampling paths are active (and why the others "
            "are not), and where data and kernel builds are cached. Include its output in bug "
            "reports."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)
    return p


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> Dict[str, str]:
    import numpy
    import torch

    import discograd

    out = {
        "python": f"{platform.python_version()} ({platform.python_implementation()}, "
        f"{sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__
        + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU build)"),
        "numpy": numpy.__version__,
        "discograd": f"{discograd.__version__} ({Path(discograd.__file__).parent})",
    }
    for dist in OPTIONAL:
        out[dist] = _version(dist)
    return out


def devices() -> Dict[str, Any]:
    import torch

    cuda: Dict[str, Any] = {"available": torch.cuda.is_available()}
    if cuda["available"]:
        cuda["devices"] = [
            f"cuda:{i} {torch.cuda.get_device_name(i)} "
            f"(compute capability {'.'.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())
        ]
    elif torch.version.cuda is None:
        cuda["reason"] = "this torch is a CPU build"
    else:
        cuda["reason"] = "no CUDA device or driver found"
    return {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda,
    }


def fast_paths() -> Dict[str, Any]:
    """``discograd.kernels.status()``, or why it could not be asked."""
    try:
        from discograd import kernels
    except ImportError as e:
        return {"error": f"kernels module not available ({e})"}
    status: Optional[Callable[[], Dict[str, Any]]] = getattr(kernels, "status", None)
    if not callable(status):
        return {"error": "kernels module not available (it has no status())"}
    try:
        return dict(status())
    except Exception as e:  # a broken build must not stop the rest of the report
        return {"error": f"kernels.status() failed: {type(e).__name__}: {e}"}


def caches() -> Dict[str, str]:
    out: Dict[str, str] = {}
    try:
        from discograd.data import data_root

        out["data"] = str(data_root())
    except ImportError:
        env = os.environ.get("DISCOGRAD_DATA", "").strip()
        out["data"] = str(Path(env).expanduser() if env else Path.home() / ".cache" / "discograd")
    try:
        from discograd.kernels.cpu import cache_dir

        out["kernel builds"] = str(cache_dir() / "kernels")
    except ImportError:
        pass
    return out


def collect() -> Dict[str, Any]:
    return {
        "versions": versions(),
        "devices": devices(),
        "fast_paths": fast_paths(),
        "caches": caches(),
    }


def render(report: Dict[str, Any]) -> str:
    lines: List[str] = ["versions"]
    for name, value in report["versions"].items():
        note = f"  [{OPTIONAL[name]}]" if name in OPTIONAL else ""
        lines.append(f"  {name:<11} {value}{note}")
    dev = report["devices"]
    lines.append("devices")
    cores, threads = dev["cpu_cores"], dev["torch_threads"]
    lines.append(f"  cpu         {cores} cores, torch uses {threads} threads")
    cuda = dev["cuda"]
    if cuda["available"]:
        lines += [f"  {d}" for d in cuda["devices"]]
    else:
        lines.append(f"  cuda        not available: {cuda['reason']}")
    lines.append("fast paths")
    paths = report["fast_paths"]
    if "error" in paths:
        lines.append(f"  {paths['error']}; every sampler uses the pure-PyTorch reference")
    else:
        for device, info in paths.items():
            lines.append(f"  {device:<11} {info.get('path', '?')}: {info.get('reason', '')}")
    lines.append("caches")
    for name, where in report["caches"].items():
        lines.append(f"  {name:<13} {where}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect()
    print(json.dumps(report, indent=2) if args.json else render(report), flush=True)
    return 0
