r"""Triton kernels for the ``discograd::*`` operators on CUDA (float32, float16, bfloat16).

One program per row, looping over column blocks, so rows of any length work (2^17 categories
and more). Noise and reductions are in float32 whatever the input dtype.

- Noise: Philox-4x32-10 through ``tl.randint4x(seed, counter)`` with the counter layout of the
  C++ kernel (``gumbel_cpu.cpp``): element f = row * K + column uses word ``(f mod 64) // 16``
  of counter ``16 (f // 64) + f mod 16``, so CPU and GPU draw the same uniforms from the same
  seed. The uniform is the midpoint ``(2j + 1) / 2^25`` of a 24-bit grid cell and
  :math:`E = -\log u` is taken as ``-log1p(-(1 - u))`` above 1/2, with the same correction
  term as the C++ kernel and libdevice's precise ``log`` (not the approximate ``tl.log``, whose
  absolute error near 1 could make E negative).
- Forward: pass 1 draws the noise (one Philox call per counter, all four words used), keeps
  a running max and rescaled sum per lane (online softmax) and the first arg max, and writes
  z = x + G in float32 (into the output, or a scratch buffer for 16-bit outputs); pass 2
  writes :math:`y = \exp((z - m)/\tau) / s` and, for ``hard``, the one-hot.
- Backward: one pass over rows of up to 32768 columns (g and y read once), two beyond.
- Backward formula: :math:`\nabla_x = y (g - \langle g, y\rangle)/\tau` from the saved ``y`` only,
  and :math:`\nabla_\tau = -\tau^{-1}\sum_i y_i (g_i - \langle g, y\rangle)\log y_i`.

With ``TRITON_INTERPRET=1`` the same host functions run on CPU tensors through Triton's
interpreter, which is how the tests check these kernels on machines without a GPU.
"""

# Triton's language functions are typed for Python, not for the DSL: pyright sees `tl.log(x)`
# as returning None and `tl.max` as returning a tuple, so operators on their results inside
# @triton.jit bodies are reported wrongly, and a plain bool passed to a `tl.constexpr`
# parameter is reported as the wrong type. Those three checks are off for this file only.
# pyright: reportOperatorIssue=false, reportAttributeAccessIssue=false, reportArgumentType=false

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

try:
    import triton  # pyright: ignore[reportMissingImports]
    import triton.language as tl  # pyright: ignore[reportMissingImports]
    from triton.language.extra import libdevice  # pyright: ignore[reportMissingImports]

    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # absent, or broken for this platform: the reference path is used
    triton = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_lock = threading.Lock()
_state: Optional[Tuple[bool, str]] = None


def interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:
    # The interpreter has no libdevice; its tl.log is NumPy's correctly rounded log.
    @triton.jit
    def _log_interpreted(x):
        return tl.log(x)

    @triton.jit
    def _log_device(x):
        return libdevice.log(x)

    _log = _log_interpreted if interpreter() else _log_device

    @triton.jit
    def _gumbel_word(w):
        """Gumbel noise from a 32-bit Philox word, as in the C++ kernel (float32 words)."""
        j = (w >> 8).to(tl.int32)
        low = j < 8388608  # u < 1/2
        v = tl.where(low, 2 * j + 1, 33554432 - 2 * j - 1)  # odd, < 2^24: exact in float32
        a = v.to(tl.float32) * 2.98023223876953125e-08  # u (low) or t = 1 - u (high)
        w1 = 1.0 - a  # log1p(-t) = log(w1) + log1p(err / w1), err / w1 ~ err (2 - w1)
        err = (1.0 - w1) - a
        lg = _log(tl.where(low, a, w1))
        e = tl.where(low, -lg, -(lg + err * (2.0 - w1)))
        return -_log(e)

    # The counter layout of the C++ kernel: chunk c of 64 flat elements f = 64 c + 16 w + l
    # takes word w of counter 16 c + l. A tile of CHUNKS chunks therefore calls Philox once
    # per counter and uses all four words, each for its own set of columns.
    @triton.jit
    def _tile(seed, base, c0, CHUNKS: tl.constexpr):
        """Counters of chunks [c0, c0 + CHUNKS) of a row starting at flat index base: the
        four words and the row-relative column of each word's element (int64)."""
        i = tl.arange(0, CHUNKS * 16)
        c = c0 + (i // 16).to(tl.int64)
        lane = (i % 16).to(tl.int64)
        r0, r1, r2, r3 = tl.randint4x(seed, c * 16 + lane)
        col0 = c * 64 + lane - base
        return r0, r1, r2, r3, col0

    @triton.jit
    def _chunk_range(base, K):
        """First chunk touching the row, and how many chunks it spans."""
        first = base // 64
        last = (base + K - 1) // 64
        return first, last - first + 1

    @triton.jit
    def _row_tau(tau_rows_ptr, row, tau, HAS_TAU_ROWS: tl.constexpr):
        if HAS_TAU_ROWS:
            t = tl.load(tau_rows_ptr + row).to(tl.float32)
        else:
            t = tau
        return 1.0 / t

    @triton.jit
    def _update(
        x_ptr, z_ptr, base, K, r, col, inv_tau, m, s, best, best_idx, STORE_Z: tl.constexpr
    ):
        """Online max / rescaled sum / first arg max over one word's columns; with STORE_Z,
        z = x + G is also written to z_ptr (float32), so the second pass need not draw the
        noise again (the arg max kernel has no second pass)."""
        mask = (col >= 0) & (col < K)
        x = tl.load(x_ptr + base + col, mask=mask, other=float("-inf")).to(tl.float32)
        z = tl.where(mask, x + _gumbel_word(r), float("-inf"))
        if STORE_Z:
            tl.store(z_ptr + base + col, z, mask=mask)
        better = z > best  # strict: each lane keeps its first maximum (its columns increase)
        best_idx = tl.where(better, col, best_idx)
        best = tl.where(better, z, best)
        m_new = tl.maximum(m, z)
        finite = m_new > float("-inf")
        scale = tl.where(finite, tl.exp((m - m_new) * inv_tau), 0.0)
        p = tl.where(z > float("-inf"), tl.exp((z - m_new) * inv_tau), 0.0)
        return m_new, s * scale + p, best, best_idx

    @triton.jit
    def _stats(x_ptr, z_ptr, row, K, seed, inv_tau, CHUNKS: tl.constexpr, STORE_Z: tl.constexpr):
        """Max, softmax normalizer and first arg max of z = x + G over a row."""
        base = row * K
        m = tl.full((CHUNKS * 16,), float("-inf"), tl.float32)
        s = tl.zeros((CHUNKS * 16,), tl.float32)
        best = tl.full((CHUNKS * 16,), float("-inf"), tl.float32)
        best_idx = tl.zeros((CHUNKS * 16,), tl.int64)
        first, count = _chunk_range(base, K)
        for t in range(0, count, CHUNKS):
            r0, r1, r2, r3, col = _tile(seed, base, first + t, CHUNKS)
            m, s, best, best_idx = _update(
                x_ptr, z_ptr, base, K, r0, col, inv_tau, m, s, best, best_idx, STORE_Z
            )
            m, s, best, best_idx = _update(
                x_ptr, z_ptr, base, K, r1, col + 16, inv_tau, m, s, best, best_idx, STORE_Z
            )
            m, s, best, best_idx = _update(
                x_ptr, z_ptr, base, K, r2, col + 32, inv_tau, m, s, best, best_idx, STORE_Z
            )
            m, s, best, best_idx = _update(
                x_ptr, z_ptr, base, K, r3, col + 48, inv_tau, m, s, best, best_idx, STORE_Z
            )
        row_max = tl.max(m, 0)
        total = tl.sum(tl.where(m > float("-inf"), s * tl.exp((m - row_max) * inv_tau), 0.0), 0)
        top = tl.max(best, 0)
        index = tl.min(tl.where(best == top, best_idx, 9223372036854775807), 0)
        return row_max, total, index

    @triton.jit
    def _forward_kernel(
        x_ptr,
        y_ptr,
        z_ptr,
        hard_ptr,
        seed_ptr,
        tau_rows_ptr,
        tau,
        K,
        HAS_TAU_ROWS: tl.constexpr,
        HARD: tl.constexpr,
        CHUNKS: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        seed = tl.load(seed_ptr)
        inv_tau = _row_tau(tau_rows_ptr, row, tau, HAS_TAU_ROWS)
        row_max, total, index = _stats(x_ptr, z_ptr, row, K, seed, inv_tau, CHUNKS, True)
        inv_total = 1.0 / total
        base = row * K
        # z_ptr holds z = x + G in float32 (the output itself for float32, a scratch buffer for
        # 16-bit outputs): one more pass over it, no noise drawn again. Other threads of this
        # program wrote those entries: the barrier makes them visible.
        tl.debug_barrier()
        for start in range(0, K, CHUNKS * 64):
            col = start + tl.arange(0, CHUNKS * 64)
            mask = col < K
            z = tl.load(z_ptr + base + col, mask=mask, other=float("-inf"))
            y = tl.where(z > float("-inf"), tl.exp((z - row_max) * inv_tau), 0.0) * inv_total
            tl.store(y_ptr + base + col, y.to(y_ptr.dtype.element_ty), mask=mask)
            if HARD:
                one_hot = tl.where(col == index, 1.0, 0.0)
                tl.store(hard_ptr + base + col, one_hot.to(hard_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _argmax_kernel(x_ptr, index_ptr, seed_ptr, K, CHUNKS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        seed = tl.load(seed_ptr)
        _, _, index = _stats(x_ptr, x_ptr, row, K, seed, 1.0, CHUNKS, False)
        tl.store(index_ptr + row, index.to(tl.int64))

    @triton.jit
    def _store_noise(out_ptr, base, K, r, col):
        mask = (col >= 0) & (col < K)
        g = _gumbel_word(r)
        tl.store(out_ptr + base + col, g.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _noise_kernel(out_ptr, seed_ptr, K, CHUNKS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        seed = tl.load(seed_ptr)
        base = row * K
        first, count = _chunk_range(base, K)
        for t in range(0, count, CHUNKS):
            r0, r1, r2, r3, col = _tile(seed, base, first + t, CHUNKS)
            _store_noise(out_ptr, base, K, r0, col)
            _store_noise(out_ptr, base, K, r1, col + 16)
            _store_noise(out_ptr, base, K, r2, col + 32)
            _store_noise(out_ptr, base, K, r3, col + 48)

    @triton.jit
    def _backward_kernel(
        g_ptr,
        y_ptr,
        gx_ptr,
        gt_ptr,
        tau_rows_ptr,
        tau,
        K,
        HAS_TAU_ROWS: tl.constexpr,
        TAU_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
        SINGLE: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        inv_tau = _row_tau(tau_rows_ptr, row, tau, HAS_TAU_ROWS)
        base = row * K
        lane = tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK,), tl.float32)
        if SINGLE:
            # The whole row fits one block: read g and y once (half the traffic).
            mask = lane < K
            g = tl.load(g_ptr + base + lane, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + base + lane, mask=mask, other=0.0).to(tl.float32)
            grad_s = y * (g - tl.sum(g * y, 0))
            tl.store(
                gx_ptr + base + lane, (grad_s * inv_tau).to(gx_ptr.dtype.element_ty), mask=mask
            )
            if TAU_GRAD:
                positive = y > 0.0
                acc += tl.where(positive, grad_s * _log(tl.where(positive, y, 1.0)), 0.0)
        else:
            for start in range(0, K, BLOCK):
                mask = start + lane < K
                g = tl.load(g_ptr + base + start + lane, mask=mask, other=0.0).to(tl.float32)
                y = tl.load(y_ptr + base + start + lane, mask=mask, other=0.0).to(tl.float32)
                acc += g * y
            dot = tl.sum(acc, 0)
            acc = tl.zeros((BLOCK,), tl.float32)
            for start in range(0, K, BLOCK):
                mask = start + lane < K
                g = tl.load(g_ptr + base + start + lane, mask=mask, other=0.0).to(tl.float32)
                y = tl.load(y_ptr + base + start + lane, mask=mask, other=0.0).to(tl.float32)
                grad_s = y * (g - dot)
                gx = grad_s * inv_tau
                tl.store(gx_ptr + base + start + lane, gx.to(gx_ptr.dtype.element_ty), mask=mask)
                if TAU_GRAD:
                    positive = y > 0.0
                    log_y = _log(tl.where(positive, y, 1.0))
                    acc += tl.where(positive, grad_s * log_y, 0.0)
        if TAU_GRAD:
            tl.store(gt_ptr + row, -inv_tau * tl.sum(acc, 0))


def _block(cols: int) -> int:
    """Backward: columns per step, the whole row up to 32768 (one pass), then loops."""
    limit = 128 if interpreter() else 32768
    return max(16, min(1 << (max(cols, 1) - 1).bit_length(), limit))


def _chunks(cols: int) -> int:
    """Forward, noise, arg max: 64-column chunks per tile (a row spans cols / 64 + 2 at most),
    a power of 2 up to 64 (4096 columns a tile) or 2 in the interpreter."""
    limit = 2 if interpreter() else 64
    need = (max(cols, 1) + 63) // 64 + 1
    return min(1 << (need - 1).bit_length(), limit)


def _launch(kernel: Any, rows: int) -> Any:
    """kernel[grid] with one program per row."""
    return kernel[(rows,)]


def _warps(elements: int) -> int:
    # Measured on an H200 (benchmarks/ops_gpu.py): 8 warps for 4096 to 32768 columns.
    return 4 if elements <= 1024 else 8


def _check(x: Tensor) -> None:
    if x.dim() != 2 or not x.is_contiguous() or x.dtype not in DTYPES:
        raise ValueError(
            f"Triton kernels take contiguous 2-d float32/float16/bfloat16 rows, got "
            f"{tuple(x.shape)} {x.dtype}"
        )


def forward(
    x: Tensor, seed: Tensor, tau: float, tau_rows: Optional[Tensor], hard: bool
) -> Tuple[Optional[Tensor], Tensor]:
    """(one-hot or None, soft sample) for rows x."""
    _check(x)
    rows, cols = x.shape
    y = torch.empty_like(x)
    one_hot = torch.empty_like(x) if hard else None
    if x.numel() > 0:
        # z = x + G between the two passes, in float32: the output itself when it is float32,
        # else a scratch buffer (2 logits-sized units for 16-bit logits), cheaper than drawing
        # the noise a second time.
        z = y if y.dtype == torch.float32 else torch.empty_like(x, dtype=torch.float32)
        chunks = _chunks(cols)
        _launch(_forward_kernel, rows)(
            x,
            y,
            z,
            one_hot if hard else y,
            seed,
            tau_rows if tau_rows is not None else y,
            float(tau),
            cols,
            HAS_TAU_ROWS=tau_rows is not None,
            HARD=hard,
            CHUNKS=chunks,
            num_warps=_warps(64 * chunks),
        )
    return one_hot, y


def backward(
    grad: Tensor, y: Tensor, tau: float, tau_rows: Optional[Tensor], tau_grad: bool
) -> Tuple[Tensor, Tensor]:
    _check(y)
    grad = grad.contiguous()
    rows, cols = y.shape
    gx = torch.empty_like(y)
    gt = torch.empty((rows if tau_grad else 0,), dtype=torch.float32, device=y.device)
    if y.numel() > 0:
        block = _block(cols)
        _launch(_backward_kernel, rows)(
            grad,
            y,
            gx,
            gt if tau_grad else gx,
            tau_rows if tau_rows is not None else y,
            float(tau),
            cols,
            HAS_TAU_ROWS=tau_rows is not None,
            TAU_GRAD=tau_grad,
            BLOCK=block,
            SINGLE=cols <= block,
            num_warps=_warps(block),
        )
    return gx, gt


def argmax(x: Tensor, seed: Tensor) -> Tensor:
    _check(x)
    rows, cols = x.shape
    index = torch.empty((rows,), dtype=torch.int64, device=x.device)
    if x.numel() > 0:
        chunks = _chunks(cols)
        _launch(_argmax_kernel, rows)(
            x, index, seed, cols, CHUNKS=chunks, num_warps=_warps(64 * chunks)
        )
    return index


def noise(seed: Tensor, rows: int, cols: int, dtype: torch.dtype) -> Tensor:
    if dtype not in DTYPES:
        raise ValueError(f"Triton noise supports {DTYPES}, got {dtype}")
    out = torch.empty((rows, cols), dtype=dtype, device=seed.device)
    if out.numel() > 0:
        chunks = _chunks(cols)
        _launch(_noise_kernel, rows)(out, seed, cols, CHUNKS=chunks, num_warps=_warps(64 * chunks))
    return out


def _register() -> None:
    from discograd.kernels import _library

    _library.define()
    lib = "discograd::"

    def soft(x, seed, tau, tau_rows):
        return forward(x, seed, tau, tau_rows, False)[1]

    def hard(x, seed, tau, tau_rows):
        one_hot, y = forward(x, seed, tau, tau_rows, True)
        return one_hot, y

    torch.library.register_kernel(lib + "gumbel_softmax", "cuda", soft)
    torch.library.register_kernel(lib + "gumbel_softmax_hard", "cuda", hard)
    torch.library.register_kernel(lib + "gumbel_softmax_backward", "cuda", backward)
    torch.library.register_kernel(lib + "gumbel_argmax", "cuda", argmax)
    torch.library.register_kernel(lib + "gumbel_noise", "cuda", noise)


def load() -> Tuple[bool, str]:
    """Register the CUDA kernels once; returns (available, description or reason)."""
    global _state
    if _state is not None:
        return _state
    with _lock:
        if _state is None:
            if importlib.util.find_spec("triton") is None:
                _state = (False, "Triton is not installed (optional: pip install triton)")
            elif triton is None:
                _state = (False, f"Triton failed to import: {_IMPORT_ERROR}")
            elif not torch.cuda.is_available():
                _state = (False, "CUDA is not available")
            else:
                try:
                    _register()
                    _state = (True, f"Triton {triton.__version__} kernels")
                except Exception as exc:
                    _state = (False, f"Triton kernels failed to register: {exc}")
    return _state
