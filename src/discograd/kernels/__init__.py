r"""Fast paths for Gumbel noise, Gumbel-max and Gumbel-softmax, chosen by device and dtype.

:func:`discograd.gumbel_softmax`, :func:`discograd.gumbel_max` and :func:`discograd.gumbel_noise`
call :func:`gumbel_softmax`, :func:`gumbel_max` and :func:`gumbel_noise` here first; these
return ``None`` when no fast path applies, and the pure-PyTorch reference in
:mod:`discograd.ops` runs instead.

- CPU (float32, float64, float16, bfloat16): a fused C++ kernel, compiled at first use
  (:mod:`discograd.kernels.cpu`). One pass per row draws Philox-4x32-10 noise keyed by a seed,
  adds it, and takes the softmax (and the exact one-hot for ``hard=True``); the backward reads
  only the saved soft sample: :math:`\nabla_x = y \odot (g - \langle g, y\rangle)/\tau`.
- CUDA (float32, float16, bfloat16): the same in Triton (:mod:`discograd.kernels.triton_gs`),
  when Triton is installed.

Both draw the uniform at the midpoint of its grid cell and use the ``log1p`` branch for
:math:`u > 1/2` exactly as :func:`discograd.ops.standard_exponential`, so samples are identical
in distribution to the reference and finite for every draw; the random stream differs (a
Philox stream instead of ``torch.rand``). Reproducibility: the 64-bit Philox key is drawn from
``generator`` (or the global generator, which thereby advances), so the same generator state
gives the same sample.

``DISCOGRAD_DISABLE_KERNELS=1`` forces the reference path (read at each eager call; code traced
by torch.compile keeps the path chosen when it was traced); :func:`status` says which path each
device uses and why. Forward-mode AD and torch.func transforms use the reference path too.

Under ``torch.compile(fullgraph=True)`` the kernels are custom operators with shape functions
and registered autograd, so they trace without graph breaks; the data-dependent content checks
of the logits (NaN, +inf, fully masked rows) are skipped there, and a ``torch.Generator``
argument cannot be traced by Dynamo (as with ``torch.rand``): compiled code draws from the
global generator.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.autograd import forward_ad

from discograd._validation import (
    check_dim,
    check_logits,
    check_tau,
    checks_contents,
    tau_batch_shape,
)

__all__ = ["DISABLE_ENV", "gumbel_max", "gumbel_noise", "gumbel_softmax", "status"]

DISABLE_ENV = "DISCOGRAD_DISABLE_KERNELS"
CPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor  # pyright: ignore
_functorch_level = torch._C._functorch.maybe_current_level  # pyright: ignore


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _constant_under_compile(fn):
    """What ``torch.compiler.assume_constant_result`` does: Dynamo calls ``fn`` once while
    tracing and uses its result as a constant (the build/load code is not traceable). Set
    directly, since calling the torch.compiler helper imports torch._dynamo at import time.
    """
    fn._dynamo_marked_constant = True
    return fn


@_constant_under_compile
def _cpu_ready() -> bool:
    if _disabled():
        return False
    from discograd.kernels import cpu

    return cpu.load()[0]


@_constant_under_compile
def _cuda_ready() -> bool:
    if _disabled():
        return False
    from discograd.kernels import triton_gs

    return triton_gs.load()[0]


def status() -> Dict[str, Dict[str, str]]:
    """Which path each device uses, and why: ``{"cpu": {"path", "reason"}, "cuda": {...}}``.

    ``path`` is ``"fast"`` or ``"reference"``. Asking builds the CPU kernel if it is not built
    yet (once per environment).
    """
    out: Dict[str, Dict[str, str]] = {}
    if _disabled():
        reason = f"{DISABLE_ENV} is set"
        return {d: {"path": "reference", "reason": reason} for d in ("cpu", "cuda")}
    from discograd.kernels import cpu, triton_gs

    for device, loader in (("cpu", cpu.load), ("cuda", triton_gs.load)):
        ok, why = loader()
        out[device] = {"path": "fast" if ok else "reference", "reason": why}
    return out


def _transformed(t: Optional[Tensor] = None) -> bool:
    """Inside forward-mode AD or a torch.func transform (not while torch.compile traces): for
    a tensor, when a transform wraps it; without one, when a transform is active."""
    if torch.compiler.is_compiling():
        return False
    if forward_ad._current_level >= 0:
        return True
    return _functorch_wrapped(t) if t is not None else _functorch_level() is not None


def _eligible(t: Tensor) -> bool:
    """A fast path exists for this tensor's device and dtype (and it is not empty).

    The operators define no forward-mode derivative and no vmap rule, so torch.func
    transforms (vmap, jvp, ...) and forward-mode AD keep the reference path.
    """
    if t.numel() == 0 or _transformed(t):
        return False
    if t.device.type == "cpu":
        return t.dtype in CPU_DTYPES and _cpu_ready()
    if t.device.type == "cuda":
        return t.dtype in CUDA_DTYPES and _cuda_ready()
    return False


def _seed(generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """A one-element int64 Philox key, drawn from ``generator`` or the global generator."""
    # randint rather than random_(): torch.compile traces it (random_ is a graph break).
    return torch.randint(
        -(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device, generator=generator
    )


def _validate_logits(logits: Tensor, dim: int, fused: bool = False) -> None:
    """:func:`discograd._validation.check_logits` (one screening reduction for valid input).

    Content checks are data-dependent branches that torch.compile(fullgraph=True) cannot
    trace: compiled code gets the cheap checks only, like ``set_validate_args(False)`` (see
    :func:`discograd._validation.checks_contents`). ``fused``: the kernel checks the contents
    itself (see :func:`_checks_in_kernel`), so only the type and shape are checked here.
    """
    check_logits(logits, dim=dim, contents=not fused)


def _checks_in_kernel() -> bool:
    """Whether the Gumbel-softmax kernels check the logits themselves (``check=True``): each
    row's softmax normalizer, which the kernel computes anyway, leaves [1/2, inf) exactly when
    the row has a NaN or +inf logit or is fully masked, so the check costs no pass over the
    logits. Off with ``set_validate_args(False)`` and under torch.compile (as the other
    content checks)."""
    return checks_contents()


def _is_last(logits: Tensor, dim: int) -> bool:
    """``dim`` names the last dimension (an out-of-range ``dim`` raises, as in torch)."""
    check_dim(logits, dim)
    return dim % logits.dim() == logits.dim() - 1


def _rows(logits: Tensor, dim: int) -> Tensor:
    """(B, K) contiguous rows with categories last: the logits themselves when they already
    are (no view, so no autograd node: a small call's backward is mostly such overhead)."""
    if _is_last(logits, dim):
        if logits.dim() == 2 and logits.is_contiguous():
            return logits
        return logits.reshape(-1, logits.shape[-1]).contiguous()
    return logits.movedim(dim, -1).reshape(-1, logits.shape[dim]).contiguous()


def _unrows(out: Tensor, logits: Tensor, dim: int) -> Tensor:
    """Rows from :func:`_rows` back in the shape of ``logits``, contiguous (as torch's op
    returns them: a caller's ``.view`` of the result must work as it does there)."""
    if _is_last(logits, dim):
        return out if out.shape == logits.shape else out.reshape(logits.shape)
    return out.reshape(logits.movedim(dim, -1).shape).movedim(-1, dim).contiguous()


def _tau_rows(tau: Tensor, logits: Tensor, dim: int) -> Tensor:
    """One temperature per row of :func:`_rows`, in the compute dtype (gradients flow back)."""
    check_tau(tau)  # its look at the values is skipped under torch.compile
    batch_shape = tau_batch_shape(tau, logits, dim)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return tau.to(device=logits.device, dtype=acc).expand(batch_shape).reshape(-1).contiguous()


def gumbel_softmax(
    logits: Tensor,
    tau: Union[float, Tensor],
    hard: bool,
    dim: int,
    generator: Optional[torch.Generator],
) -> Optional[Tensor]:
    """Fused Gumbel-softmax, or ``None`` where no fast path applies (see the module doc)."""
    if not isinstance(logits, Tensor) or not _eligible(logits):
        return None
    _validate_logits(logits, dim, fused=True)  # before tau: its broadcast needs a dim
    if isinstance(tau, Tensor):
        tau_rows: Optional[Tensor] = _tau_rows(tau, logits, dim)
        tau_value = 1.0
    else:
        check_tau(tau)
        tau_rows, tau_value = None, float(tau)
    rows = _rows(logits, dim)
    seed = _seed(generator, logits.device)
    check = _checks_in_kernel()
    try:
        if hard:
            out, _ = torch.ops.discograd.gumbel_softmax_hard(rows, seed, tau_value, tau_rows, check)
        else:
            out = torch.ops.discograd.gumbel_softmax(rows, seed, tau_value, tau_rows, check)
    except ValueError:
        # The kernel found invalid rows: say which rule the logits break (the kernel's own
        # message stands for finite logits whose x + G or (z - m) / tau overflows).
        check_logits(logits, dim=dim)
        raise
    return _unrows(out, logits, dim)


def gumbel_max(
    logits: Tensor, dim: int, generator: Optional[torch.Generator], one_hot: bool
) -> Optional[Tensor]:
    """Fused Gumbel-max (indices or one-hot), or ``None`` where no fast path applies."""
    if not isinstance(logits, Tensor) or not _eligible(logits):
        return None
    _validate_logits(logits, dim)
    seed = _seed(generator, logits.device)
    rows = _rows(logits, dim)  # checks dim's range
    d = dim % logits.dim()
    index = torch.ops.discograd.gumbel_argmax(rows, seed)
    index = index.reshape(logits.shape[:d] + logits.shape[d + 1 :])
    if one_hot:
        return torch.zeros_like(logits).scatter_(dim, index.unsqueeze(dim), 1.0)
    return index


def gumbel_noise(
    shape_or_tensor: Union[Tuple[int, ...], Tensor],
    generator: Optional[torch.Generator],
    dtype: Optional[torch.dtype],
    device: Optional[Union[torch.device, str]],
) -> Optional[Tensor]:
    """Gumbel noise from the Philox kernel, or ``None`` where no fast path applies.

    ``shape_or_tensor``: a tensor, or a shape :func:`discograd.ops.gumbel_noise` has checked
    (a tuple of ints >= 0). The noise of a tensor of shape (..., K) is that of its
    (prod(...), K) rows, the same noise :func:`gumbel_softmax` adds for the same seed.
    """
    if isinstance(shape_or_tensor, Tensor):
        shape = tuple(shape_or_tensor.shape)
        dtype = shape_or_tensor.dtype if dtype is None else dtype
        device = shape_or_tensor.device if device is None else device
    else:
        shape = shape_or_tensor
    # Inside torch.func transforms and forward-mode AD the samplers take the reference path,
    # noise included (under vmap the operator, with no batching rule, would run per slice).
    if _transformed():
        return None
    dtype = torch.get_default_dtype() if dtype is None else dtype
    device = torch.empty(0).device if device is None else torch.device(device)
    numel = math.prod(shape)
    if numel == 0:
        return None
    if device.type == "cpu":
        if dtype not in CPU_DTYPES or not _cpu_ready():
            return None
    elif device.type == "cuda":
        if dtype not in CUDA_DTYPES or not _cuda_ready():
            return None
    else:
        return None
    cols = shape[-1] if shape else 1
    seed = _seed(generator, device)
    return torch.ops.discograd.gumbel_noise(seed, numel // cols, cols, dtype).reshape(shape)
