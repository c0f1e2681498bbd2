r"""Triton kernels for the ``discograd::*`` operators on CUDA (float32, float16, bfloat16).

One program per row; rows of any length work (2^17 categories and more). Noise and reductions
are in float32 whatever the input dtype.

- Noise: Philox-4x32-10 through ``tl.randint4x(seed, counter)`` with the counter layout of the
  C++ kernel (``gumbel_cpu.cpp``): element f = row * K + column uses word ``(f mod 64) // 16``
  of counter ``16 (f // 64) + f mod 16``, so CPU and GPU draw the same uniforms from the same
  seed. The uniform is the midpoint ``(2j + 1) / 2^25`` of a 24-bit grid cell and
  :math:`E = -\log u` is taken as ``-log1p(-(1 - u))`` above 1/2, with the same correction
  term as the C++ kernel. Both logs use the kernel's own ``_log_noise`` (within 1 ulp on the
  inputs the noise can give, without libdevice's special cases: the forward is bound by its
  instruction count). For 16-bit outputs the outer log is the hardware approximation (see
  ``_fast_log``).
- Tiles are (chunks, 16 lanes) arrays, one Philox call per counter and all four words used;
  columns run contiguously along the lanes, so full tiles load and store 16 bytes at a time.
- Forward, rows up to ``TUNING["single_cols"]`` (32768): the whole row in registers, so x is
  read once and y written once: :math:`y = \exp((z - m)/\tau) / s`, z = x + G, m its max, s
  the sum. Longer rows: pass 1 writes z (in float32: the output, or a scratch buffer for
  16-bit outputs) and keeps the running max and sum, rescaled once per tile; pass 2 writes y.
  ``hard`` also writes the one-hot of the first arg max of z.
- Input check fused into the forward: a row whose sum s is not in [1, inf) (a NaN or +inf
  logit, a fully masked row) sets a flag, read once after the kernel; only then are the logits
  examined to say which rule they break. This replaces a pass over the logits before the
  kernel (``set_validate_args(False)`` skips the flag's read, the one host sync of a call).
- Backward: one pass over rows of up to 32768 columns (g and y read once), two beyond.
  :math:`\nabla_x = y (g - \langle g, y\rangle)/\tau` from the saved ``y`` only, and
  :math:`\nabla_\tau = -\tau^{-1}\sum_i y_i (g_i - \langle g, y\rangle)\log y_i`.

With ``TRITON_INTERPRET=1`` the same host functions run on CPU tensors through Triton's
interpreter, which is how the tests check these kernels on machines without a GPU: the kernels
against the C++ ones, and the whole public path (dispatch, autograd, torch.compile) with these
functions registered as the operators' CPU kernels.
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
from typing import Any, Dict, Optional, Tuple

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

    @triton.jit
    def _log_fast_device(x):
        # lg2.approx (MUFU) times log 2: CUDA documents 2^-21.41 absolute in [1/2, 2], 3 ulp
        # elsewhere (__logf)
        return libdevice.fast_logf(x)

    _log = _log_interpreted if interpreter() else _log_device
    _log_fast = _log_interpreted if interpreter() else _log_fast_device

    @triton.jit
    def _log_noise(x):
        """log x for the positive normal floats the noise takes logs of (2^-25 <= x < 18),
        within 1 ulp (the tests check every input the inner log can get): x = 2^e m with m in
        [2/3, 4/3), log x = e log 2 + log1p(f), f = m - 1 (exact), and log1p(f) = f + f^2 Q(f)
        with Q a degree-8 polynomial fitted for relative error on |f| <= 1/3. It leaves out
        libdevice's handling of 0, subnormals, inf and NaN, which cannot occur here: about
        16 instructions instead of 24, in a kernel bound by its instruction count."""
        i = x.to(tl.int32, bitcast=True) - 0x3F2AAAAB  # bits of 2/3
        e = i >> 23
        m = ((i & 0x7FFFFF) + 0x3F2AAAAB).to(tl.float32, bitcast=True)
        f = m - 1.0
        q = tl.fma(f, -0.10902266949415207, 0.1387483775615692)
        q = tl.fma(q, f, -0.12657690048217773)
        q = tl.fma(q, f, 0.14026455581188202)
        q = tl.fma(q, f, -0.166432723402977)
        q = tl.fma(q, f, 0.20009292662143707)
        q = tl.fma(q, f, -0.25000864267349243)
        q = tl.fma(q, f, 0.3333323001861572)
        q = tl.fma(q, f, -0.49999991059303284)
        return tl.fma(e.to(tl.float32), 0.693147182464599609375, tl.fma(f * f, q, f))

    @triton.jit
    def _gumbel_word(w, FAST: tl.constexpr = False):
        """Gumbel noise from a 32-bit Philox word, as in the C++ kernel (float32 words).
        FAST: the outer log by the hardware approximation (see TUNING["fast_log"])."""
        j = (w >> 8).to(tl.int32)
        low = j < 8388608  # u < 1/2
        v = tl.where(low, 2 * j + 1, 33554432 - 2 * j - 1)  # odd, < 2^24: exact in float32
        a = v.to(tl.float32) * 2.98023223876953125e-08  # u (low) or t = 1 - u (high)
        w1 = 1.0 - a  # log1p(-t) = log(w1) + log1p(err / w1), err / w1 ~ err (2 - w1)
        err = (1.0 - w1) - a
        lg = _log_noise(tl.where(low, a, w1))
        e = tl.where(low, -lg, -(lg + err * (2.0 - w1)))
        if FAST:
            return -_log_fast(e)
        else:
            return -_log_noise(e)

    # The counter layout of the C++ kernel: chunk c of 64 flat elements f = 64 c + 16 w + l
    # takes word w of counter 16 c + l. A tile of CHUNKS chunks therefore calls Philox once
    # per counter and uses all four words, each for its own set of columns.
    @triton.jit
    def _tile(seed, base, c0, CHUNKS: tl.constexpr):
        """Chunks [c0, c0 + CHUNKS) of a row starting at flat index base, as (CHUNKS, 16)
        arrays: the four words of each counter, and the row-relative column of word 0's
        element (int32; word w's is 16 w further). Columns run contiguously along the 16
        lanes, so loads and stores of full tiles are vectorized."""
        chunk = tl.arange(0, CHUNKS)[:, None]
        lane = tl.arange(0, 16)[None, :]
        r0, r1, r2, r3 = tl.randint4x(seed, (c0 + chunk).to(tl.int64) * 16 + lane)
        return r0, r1, r2, r3, _cols(base, c0, CHUNKS)

    @triton.jit
    def _cols(base, c0, CHUNKS: tl.constexpr):
        """The row-relative column of word 0's element in each (chunk, lane) of _tile."""
        chunk = tl.arange(0, CHUNKS)[:, None]
        lane = tl.arange(0, 16)[None, :]
        start = (c0 * 64 - base).to(tl.int32)  # |start| < K + 64
        return start + chunk * 64 + lane

    @triton.jit
    def _max(z):
        return tl.max(tl.max(z, 1), 0)

    @triton.jit
    def _sum(z):
        return tl.sum(tl.sum(z, 1), 0)

    @triton.jit
    def _min(z):
        return tl.min(tl.min(z, 1), 0)

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
    def _z(
        x_row, K, r, col, FULL: tl.constexpr, FAST: tl.constexpr, c=0.0, SHIFT: tl.constexpr = False
    ):
        """z = (x - c) + G over one word's columns (-inf outside the row), in float32; no
        subtraction unless SHIFT. FULL: every column is inside the row (no masks: the loads
        can be vectorized)."""
        x, inside = _x(x_row, K, col, FULL)
        if SHIFT:
            x = x - c
        return _plus_noise(x, inside, r, FULL, FAST), inside

    @triton.jit
    def _x(x_row, K, col, FULL: tl.constexpr):
        """x over one word's columns in float32 (-inf outside the row), and the inside mask."""
        if FULL:
            return tl.load(x_row + col).to(tl.float32), col >= 0
        inside = (col >= 0) & (col < K)
        return tl.load(x_row + col, mask=inside, other=float("-inf")).to(tl.float32), inside

    @triton.jit
    def _plus_noise(x, inside, r, FULL: tl.constexpr, FAST: tl.constexpr):
        """x + G for one word's columns (-inf outside the row)."""
        if FULL:
            return x + _gumbel_word(r, FAST)
        return tl.where(inside, x + _gumbel_word(r, FAST), float("-inf"))

    @triton.jit
    def _needs_shift(m):
        """Whether a row whose perturbed max is m is redone as (x - m) + G, as in the C++
        kernel: once |m| reaches 2^10, float32 rounds x + G to more than 2^-14 and large
        logits lose their noise (arg max and softmax do not change under a shift, the
        rounding does). Not for a +inf or NaN max, which the fused check flags."""
        return (tl.abs(m) >= 1024.0) & (tl.abs(m) < float("inf"))

    @triton.jit
    def _z4(x_row, K, seed, base, c0, CHUNKS, FULL, FAST, c=0.0, SHIFT: tl.constexpr = False):
        """A tile's four words' z (see _z) and whether each column is inside the row."""
        r0, r1, r2, r3, col = _tile(seed, base, c0, CHUNKS)
        z0, i0 = _z(x_row, K, r0, col, FULL, FAST, c, SHIFT)
        z1, i1 = _z(x_row, K, r1, col + 16, FULL, FAST, c, SHIFT)
        z2, i2 = _z(x_row, K, r2, col + 32, FULL, FAST, c, SHIFT)
        z3, i3 = _z(x_row, K, r3, col + 48, FULL, FAST, c, SHIFT)
        return z0, z1, z2, z3, i0, i1, i2, i3, col

    @triton.jit
    def _shift(m):
        """The max to subtract: m, or 0 where m = -inf (an all -inf stretch), so that
        exp((z - shift) / tau) is exp(-inf) = 0, never NaN, for z = -inf."""
        return tl.where(m > float("-inf"), m, 0.0)

    @triton.jit
    def _exp(z, shift, rate):
        """exp((z - shift) / tau), given rate = log2(e) / tau: tl.exp is ex2 of its argument
        times log2(e) anyway, and the product is folded into the row's rate (one multiply an
        element fewer)."""
        return tl.exp2((z - shift) * rate)

    # The four words' tiles are combined element-wise before one reduction: a reduction
    # across threads costs shuffles and a shared-memory round, so one instead of four
    # (benchmarks/sass_count.py counts the instructions; numbers in benchmarks/RESULTS.md).
    @triton.jit
    def _max4(z0, z1, z2, z3):
        """Max of a tile's four words' z."""
        return _max(tl.maximum(tl.maximum(z0, z1), tl.maximum(z2, z3)))

    @triton.jit
    def _sum4(e0, e1, e2, e3):
        """Sum of a tile's four words' terms."""
        return _sum((e0 + e1) + (e2 + e3))

    @triton.jit
    def _where_top(z, col, top):
        """Each entry's column where z equals top, else the largest int32."""
        return tl.where(z == top, col, 2147483647)

    @triton.jit
    def _first4(z0, z1, z2, z3, col, top):
        """First column of a tile whose z equals top (word w's columns are col + 16 w)."""
        first01 = tl.minimum(_where_top(z0, col, top), _where_top(z1, col + 16, top))
        first23 = tl.minimum(_where_top(z2, col + 32, top), _where_top(z3, col + 48, top))
        return _min(tl.minimum(first01, first23))

    @triton.jit
    def _put(row, col, value, inside, FULL: tl.constexpr):
        if FULL:
            tl.store(row + col, value.to(row.dtype.element_ty))
        else:
            tl.store(row + col, value.to(row.dtype.element_ty), mask=inside)

    @triton.jit
    def _put_hard(h_row, col, index, inside, FULL: tl.constexpr):
        _put(h_row, col, tl.where(col == index, 1.0, 0.0), inside, FULL)

    @triton.jit
    def _flag_invalid(status_ptr, total):
        """Mark the call invalid when a row's normalizer is not in [1/2, inf): every term
        exp((z - max) / tau) is at most 1 and the max's is 1, so only a NaN logit (NaN sum),
        +inf (inf - inf = NaN), a fully masked row (sum 0) or x + G overflowing gets here. The
        input check is thus fused into the kernel instead of a separate pass over the logits."""
        if not ((total >= 0.5) & (total < float("inf"))):
            tl.atomic_or(status_ptr, 1)

    @triton.jit
    def _forward_single(
        x_row, y_row, h_row, status_ptr, seed, base, K, rate, HARD, CHUNKS, FULL, FAST
    ):
        """The whole row in registers: noise, max, sum, write; x read once, y written once."""
        # x first, and its max: a row of large logits is shifted before the noise is added
        # (no second pass: the row is in registers). c = 0 leaves x - c = x exactly.
        col = _cols(base, base // 64, CHUNKS)
        x0, i0 = _x(x_row, K, col, FULL)
        x1, i1 = _x(x_row, K, col + 16, FULL)
        x2, i2 = _x(x_row, K, col + 32, FULL)
        x3, i3 = _x(x_row, K, col + 48, FULL)
        c = _max4(x0, x1, x2, x3)
        c = tl.where(_needs_shift(c), c, 0.0)
        r0, r1, r2, r3, _ = _tile(seed, base, base // 64, CHUNKS)  # after: fewer live registers
        z0 = _plus_noise(x0 - c, i0, r0, FULL, FAST)
        z1 = _plus_noise(x1 - c, i1, r1, FULL, FAST)
        z2 = _plus_noise(x2 - c, i2, r2, FULL, FAST)
        z3 = _plus_noise(x3 - c, i3, r3, FULL, FAST)
        m = _max4(z0, z1, z2, z3)
        if HARD:
            # Found before the exponentials, while z is live anyway: afterwards z and e would
            # both be held, and the registers spill.
            index = _first4(z0, z1, z2, z3, col, m)
        shift = _shift(m)
        e0 = _exp(z0, shift, rate)
        e1 = _exp(z1, shift, rate)
        e2 = _exp(z2, shift, rate)
        e3 = _exp(z3, shift, rate)
        total = _sum4(e0, e1, e2, e3)
        _flag_invalid(status_ptr, total)
        inv_total = 1.0 / total
        _put(y_row, col, e0 * inv_total, i0, FULL)
        _put(y_row, col + 16, e1 * inv_total, i1, FULL)
        _put(y_row, col + 32, e2 * inv_total, i2, FULL)
        _put(y_row, col + 48, e3 * inv_total, i3, FULL)
        if HARD:
            _put_hard(h_row, col, index, i0, FULL)
            _put_hard(h_row, col + 16, index, i1, FULL)
            _put_hard(h_row, col + 32, index, i2, FULL)
            _put_hard(h_row, col + 48, index, i3, FULL)

    @triton.jit
    def _forward_tiled(
        x_row, y_row, z_row, h_row, status_ptr, seed, base, K, rate, HARD, CHUNKS, FULL, FAST
    ):
        """Rows longer than a tile: pass 1 writes z = x + G (float32) and keeps the running
        max m and sum s = sum exp((z - m) / tau), rescaled once per tile (one exp an element);
        pass 2 reads z back and writes y. A row of large logits does pass 1 again, shifted."""
        m, s, index = _tiled_pass(
            x_row, z_row, seed, base, K, rate, HARD, CHUNKS, FULL, FAST, 0.0, False
        )
        if _needs_shift(m):
            m, s, index = _tiled_pass(
                x_row, z_row, seed, base, K, rate, HARD, CHUNKS, FULL, FAST, m, True
            )
        _flag_invalid(status_ptr, s)
        inv_total = 1.0 / s
        shift = _shift(m)
        # Other threads of this program wrote those z entries: the barrier makes them visible.
        tl.debug_barrier()
        for start in range(0, K, CHUNKS * 64):
            col = start + tl.arange(0, CHUNKS * 64)
            inside = col < K
            z = tl.load(z_row + col, mask=inside, other=float("-inf"))
            _put(y_row, col, _exp(z, shift, rate) * inv_total, inside, False)
            if HARD:
                _put_hard(h_row, col, index, inside, False)

    @triton.jit
    def _tiled_pass(
        x_row, z_row, seed, base, K, rate, HARD, CHUNKS, FULL, FAST, c, SHIFT: tl.constexpr
    ):
        """Pass 1 of :func:`_forward_tiled` over z = (x - c) + G: (max, sum, first arg max)."""
        first, count = _chunk_range(base, K)
        m = float("-inf")
        s = 0.0
        index = 0
        for t in range(0, count, CHUNKS):
            z0, z1, z2, z3, i0, i1, i2, i3, col = _z4(
                x_row, K, seed, base, first + t, CHUNKS, FULL, FAST, c, SHIFT
            )
            _put(z_row, col, z0, i0, FULL)
            _put(z_row, col + 16, z1, i1, FULL)
            _put(z_row, col + 32, z2, i2, FULL)
            _put(z_row, col + 48, z3, i3, FULL)
            top = _max4(z0, z1, z2, z3)
            if HARD:
                # strictly greater: an earlier tile keeps a tie (its columns come first)
                if top > m:
                    index = _first4(z0, z1, z2, z3, col, top)
            m_new = tl.maximum(m, top)
            shift = _shift(m_new)
            tile = _sum4(
                _exp(z0, shift, rate),
                _exp(z1, shift, rate),
                _exp(z2, shift, rate),
                _exp(z3, shift, rate),
            )
            s = s * _exp(m, shift, rate) + tile
            m = m_new
        return m, s, index

    @triton.jit
    def _forward_kernel(
        x_ptr,
        y_ptr,
        z_ptr,
        hard_ptr,
        status_ptr,
        seed_ptr,
        tau_rows_ptr,
        tau,
        K,
        HAS_TAU_ROWS: tl.constexpr,
        HARD: tl.constexpr,
        CHUNKS: tl.constexpr,
        SINGLE: tl.constexpr,
        FULL: tl.constexpr,
        FAST: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        seed = tl.load(seed_ptr)
        rate = _row_tau(tau_rows_ptr, row, tau, HAS_TAU_ROWS) * 1.4426950408889634  # log2(e)
        base = row * K
        if SINGLE:
            _forward_single(
                x_ptr + base,
                y_ptr + base,
                hard_ptr + base,
                status_ptr,
                seed,
                base,
                K,
                rate,
                HARD,
                CHUNKS,
                FULL,
                FAST,
            )
        else:
            _forward_tiled(
                x_ptr + base,
                y_ptr + base,
                z_ptr + base,
                hard_ptr + base,
                status_ptr,
                seed,
                base,
                K,
                rate,
                HARD,
                CHUNKS,
                FULL,
                FAST,
            )

    @triton.jit
    def _argmax_kernel(x_ptr, index_ptr, seed_ptr, K, CHUNKS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        seed = tl.load(seed_ptr)
        base = row * K
        x_row = x_ptr + base
        best, index = _argmax_pass(x_row, seed, base, K, CHUNKS, 0.0, False)
        if _needs_shift(best):  # large logits: again from (x - best) + G, as the forward
            best, index = _argmax_pass(x_row, seed, base, K, CHUNKS, best, True)
        tl.store(index_ptr + row, index.to(tl.int64))

    @triton.jit
    def _argmax_pass(x_row, seed, base, K, CHUNKS: tl.constexpr, c, SHIFT: tl.constexpr):
        """(max, first arg max) of z = (x - c) + G over the row."""
        first, count = _chunk_range(base, K)
        best = float("-inf")
        index = 0
        for t in range(0, count, CHUNKS):
            z0, z1, z2, z3, _, _, _, _, col = _z4(
                x_row, K, seed, base, first + t, CHUNKS, False, False, c, SHIFT
            )
            top = _max4(z0, z1, z2, z3)
            if top > best:
                index = _first4(z0, z1, z2, z3, col, top)
                best = top
        return best, index

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
    """Tiled forward, noise, arg max: 64-column chunks per tile, a power of 2 up to
    TUNING["chunks"] (or 2 in the interpreter)."""
    limit = 2 if interpreter() else TUNING["chunks"]
    need = (max(cols, 1) + 63) // 64 + 1
    return min(1 << (need - 1).bit_length(), limit)


def _single_chunks(cols: int) -> int:
    """Chunks (a power of 2) that cover any row of ``cols`` columns in one tile: cols / 64
    when rows start on a chunk boundary (cols a multiple of 64), else one more than the most
    chunks a row can straddle."""
    need = cols // 64 if cols % 64 == 0 else cols // 64 + 2
    return 1 << (max(need, 1) - 1).bit_length()


def _launch(kernel: Any, rows: int) -> Any:
    """kernel[grid] with one program per row."""
    return kernel[(rows,)]


# Launch parameters, chosen with `python benchmarks/ops_gpu.py --sweep` on an H100 (numbers
# in benchmarks/RESULTS.md, "Ops on a GPU"). Rows up to `single_cols` columns are held in
# registers whole, about `single_elems_per_thread` elements a thread but at most
# `single_max_warps` warps: the forward reads x once and writes y once. Longer rows take two
# passes over tiles of `chunks` 64-column chunks with `warps` warps, keeping z = x + G in a
# float32 buffer between them.
TUNING: Dict[str, Any] = {
    "single_cols": 32768,
    "single_elems_per_thread": 32,
    "single_max_warps": 32,
    "chunks": 256,
    "warps": 16,
    "fast_log": "16-bit",
}


def _warps(elements: int) -> int:
    """Backward, noise, arg max: 8 warps from 1024 elements a block up (H200)."""
    return 4 if elements <= 1024 else 8


def _fast_log(dtype: torch.dtype) -> bool:
    """Whether the forward takes the outer log of the noise, -log(E), by the hardware
    approximation (lg2.approx: within 2^-21.4 absolute for E in [1/2, 2], 3 ulp elsewhere)
    instead of the kernel's own 1-ulp log. "16-bit" (the default): for float16 and bfloat16
    outputs only, where the resulting relative error of y, about 2^-21.4 / tau, is below half
    an ulp of the result (2^-11 float16, 2^-8 bfloat16) for tau >= 10^-3, and 10x below for
    tau >= 10^-2; float32 outputs keep the noise of the C++ kernel (to 1 ulp). The noise operator
    (``gumbel_noise``) always uses the kernel's own log."""
    mode = TUNING["fast_log"]
    return mode == "always" or (mode == "16-bit" and dtype != torch.float32)


def _forward_plan(cols: int) -> Tuple[bool, int, bool, int]:
    """(single pass?, chunks, full tiles?, warps) for the forward. Full: every tile lies
    inside its row (rows start on a chunk and hold a whole number of tiles), so no masks."""
    limit = 128 if interpreter() else TUNING["single_cols"]
    if cols <= limit:
        chunks = _single_chunks(cols)
        elements = 64 * chunks
        per_thread = TUNING["single_elems_per_thread"]
        warps = max(4, min(TUNING["single_max_warps"], elements // (32 * per_thread)))
        return True, chunks, cols == elements, warps
    chunks = _chunks(cols)
    warps = 4 if 64 * chunks <= 1024 else TUNING["warps"]
    return False, chunks, cols % (64 * chunks) == 0, warps


def _check(x: Tensor) -> None:
    if x.dim() != 2 or not x.is_contiguous() or x.dtype not in DTYPES:
        raise ValueError(
            f"Triton kernels take contiguous 2-d float32/float16/bfloat16 rows, got "
            f"{tuple(x.shape)} {x.dtype}"
        )


def forward(
    x: Tensor,
    seed: Tensor,
    tau: float,
    tau_rows: Optional[Tensor],
    hard: bool,
    check: bool = False,
) -> Tuple[Optional[Tensor], Tensor]:
    """(one-hot or None, soft sample) for rows x; ``check``: raise ValueError for invalid
    logits (NaN, +inf, a fully masked row), found by the kernel itself."""
    _check(x)
    rows, cols = x.shape
    y = torch.empty_like(x)
    one_hot = torch.empty_like(x) if hard else None
    if x.numel() > 0:
        single, chunks, full, warps = _forward_plan(cols)
        # Long rows keep z = x + G in float32 between the two passes: the output itself when
        # it is float32, else a scratch buffer (2 logits-sized units for 16-bit logits),
        # cheaper than drawing the noise a second time.
        z = y if single or y.dtype == torch.float32 else torch.empty_like(x, dtype=torch.float32)
        status = torch.zeros((1,), dtype=torch.int32, device=x.device)
        _launch(_forward_kernel, rows)(
            x,
            y,
            z,
            one_hot if hard else y,
            status,
            seed,
            tau_rows if tau_rows is not None else y,
            float(tau),
            cols,
            HAS_TAU_ROWS=tau_rows is not None,
            HARD=hard,
            CHUNKS=chunks,
            SINGLE=single,
            FULL=full,
            FAST=_fast_log(x.dtype),
            num_warps=warps,
        )
        if check:
            _raise_if_invalid(status, x)
    return one_hot, y


# The invalid-logits error of the checked forward (the same text as the C++ kernel's).
INVALID_MESSAGE = (
    "gumbel_softmax: the softmax normalizer is not finite in some row (NaN or +inf logits, a "
    "fully masked row, or logits or 1 / tau too large in magnitude)"
)


def _raise_if_invalid(status: Tensor, x: Tensor) -> None:
    """The logits check, from the kernel's flag: one read of a flag after the kernel instead of
    a pass over the logits before it. Skipped while a CUDA graph is captured (no sync there)."""
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if int(status.item()) != 0:
        raise ValueError(INVALID_MESSAGE)


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


def _soft(x: Tensor, seed: Tensor, tau: float, tau_rows: Optional[Tensor], check: bool = False):
    return forward(x, seed, tau, tau_rows, False, check)[1]


def _hard(x: Tensor, seed: Tensor, tau: float, tau_rows: Optional[Tensor], check: bool = False):
    one_hot, y = forward(x, seed, tau, tau_rows, True, check)
    return one_hot, y


# The CUDA kernels of the discograd:: operators. torch calls a Python kernel without the
# trailing arguments that equal their schema default (check=False arrives as no argument at
# all), so each function's parameters carry the schema's names and defaults; a test compares
# them with the schemas.
KERNELS = {
    "gumbel_softmax": _soft,
    "gumbel_softmax_hard": _hard,
    "gumbel_softmax_backward": backward,
    "gumbel_argmax": argmax,
    "gumbel_noise": noise,
}


def _register() -> None:
    from discograd.kernels import _library

    _library.define()
    for name, kernel in KERNELS.items():
        torch.library.register_kernel(f"{_library.NAMESPACE}::{name}", "cuda", kernel)


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
