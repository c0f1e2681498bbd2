"""Build and load the fused C++ CPU kernels (``gumbel_cpu.cpp``) at first use.

The source is compiled with ``torch.utils.cpp_extension.load`` (ninja + a C++ compiler) into a
cache directory keyed by the source, the torch version and the Python version, so the build
runs once per environment (about 30-60 s on 2 cores) and later processes only load the shared
library. The library registers the CPU kernels of the ``discograd::*`` operators that
:mod:`discograd.kernels._library` defines. Any failure (no compiler, no ninja, a compile error)
is caught and reported through :func:`discograd.kernels.status`; callers then use the
pure-PyTorch reference path.

Environment:
    ``DISCOGRAD_CACHE_DIR``: where builds are cached (default ``$XDG_CACHE_HOME/discograd`` or
    ``~/.cache/discograd``).
    ``DISCOGRAD_CPU_ISA``: ``avx2`` or ``baseline`` caps the instruction-set variant the kernel
    picks at load time (it never goes above what the CPU has); for testing the variants other
    CPUs run. Read once per process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Optional, Tuple

import torch

SOURCE = Path(__file__).with_name("gumbel_cpu.cpp")
_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"]

_lock = threading.Lock()
_state: Optional[Tuple[bool, str]] = None
_log = logging.getLogger("discograd.kernels")
# torch's builder waits while a `lock` file exists; one left by a killed build would block
# every later process forever, so a lock older than this is removed.
_STALE_LOCK_S = 900


def cache_dir() -> Path:
    """Root of discograd's build cache."""
    env = os.environ.get("DISCOGRAD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "discograd"


def _build_key(source: bytes, flags: list) -> str:
    # The install locations are part of the key: ninja's command line holds torch's and
    # Python's include paths, so two environments sharing one build folder (same versions,
    # different venvs) would otherwise rebuild the kernel every time they alternate.
    h = hashlib.sha256(source)
    parts = (
        torch.__version__,
        str(Path(torch.__file__).resolve().parent),
        sys.version,
        sysconfig.get_paths()["include"],
        platform.machine(),
        " ".join(flags),
    )
    for part in parts:
        h.update(part.encode())
    return h.hexdigest()[:16]


def _compile() -> str:
    from torch.utils import cpp_extension

    cap = os.environ.get("DISCOGRAD_CPU_ISA", "")
    if cap not in ("", "avx512", "avx2", "baseline"):
        raise ValueError(f"DISCOGRAD_CPU_ISA must be avx512, avx2 or baseline, got {cap!r}")

    from discograd.kernels import _library

    _library.define()  # the schemas must exist before the library registers kernels for them
    flags = list(_FLAGS)
    ldflags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is OpenMP code in torch's headers: without -fopenmp it runs serially.
        flags.append("-fopenmp")
        ldflags.append("-fopenmp")
    source = SOURCE.read_bytes()
    key = _build_key(source, flags)
    build_dir = cache_dir() / "kernels" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = build_dir / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    if not any(build_dir.glob("*.so")):
        _log.info("building discograd's CPU kernel in %s (once, about a minute)", build_dir)
    if shutil.which("ninja") is None:
        # pip's `ninja` package puts the binary next to the interpreter, which may not be on PATH.
        scripts = Path(sys.executable).parent
        if (scripts / "ninja").exists():
            os.environ["PATH"] = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"
    cpp_extension.load(
        name=f"discograd_gumbel_cpu_{key}",
        sources=[str(SOURCE)],
        extra_cflags=flags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    level = int(torch.ops.discograd.isa_level(torch.empty(0)))
    isa = {0: "baseline", 1: "AVX2", 2: "AVX-512"}.get(level, "unknown")
    return f"fused C++ kernel ({isa}), built in {build_dir}"


def load() -> Tuple[bool, str]:
    """Build (once) and load the CPU kernels; returns (available, description or reason)."""
    global _state
    if _state is not None:
        return _state
    with _lock:
        if _state is None:
            try:
                _state = (True, _compile())
            except Exception as exc:  # any build failure means "use the reference path"
                lines = str(exc).strip().splitlines()
                errors = [ln for ln in lines if "error" in ln.lower()]
                reason = (errors or lines or [""])[0].strip()[:300]
                _state = (False, f"C++ kernel could not be built: {type(exc).__name__}: {reason}")
    return _state
