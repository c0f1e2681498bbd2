"""The ``.amat`` text files of binarized MNIST (Larochelle & Murray, 2011).

One image a line: 784 values ``0`` or ``1`` separated by single spaces, the 28x28 pixels in
row-major order; ``binarized_mnist_{train,valid,test}.amat`` hold 50,000 / 10,000 / 10,000
lines. The pixels were sampled once, x ~ Bernoulli(MNIST intensity), by Salakhutdinov &
Murray (2008), so this set is *statically* binarized.

Files in exactly that layout are decoded with a few vectorised numpy passes; other
whitespace (tabs, runs of spaces, CRLF line ends) goes through a slower line-by-line parser.
A value other than 0/1 or a line of the wrong length raises
:class:`~discograd.data.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from discograd.data.errors import DataError, PathLike

_ZERO, _ONE, _SPACE, _NEWLINE = ord("0"), ord("1"), ord(" "), ord("\n")


def _parse_strict(buf: bytes, dim: int) -> np.ndarray | None:
    """Decode the canonical layout in vectorised passes, or None when ``buf`` is not in it."""
    width = 2 * dim  # dim digits, dim - 1 spaces, one newline
    if not buf or len(buf) % width:
        return None
    raw = np.frombuffer(buf, dtype=np.uint8).reshape(-1, width)
    digits = raw[:, 0::2]
    if not ((raw[:, 1:-1:2] == _SPACE).all() and (raw[:, -1] == _NEWLINE).all()):
        return None
    if not ((digits == _ZERO) | (digits == _ONE)).all():
        return None
    return (digits - _ZERO).astype(np.uint8)


def parse_amat(buf: bytes, source: PathLike, *, dim: int = 784) -> np.ndarray:
    """Decode ``.amat`` bytes into a uint8 array (n, dim) of 0/1; errors name ``source``."""
    if buf and not buf.endswith(b"\n"):
        buf += b"\n"  # a missing final newline should not cost the fast path
    fast = _parse_strict(buf, dim)
    if fast is not None:
        return fast
    rows = []
    for number, line in enumerate(buf.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue  # blank lines (a trailing one, say) carry no image
        if len(tokens) != dim:
            raise DataError(source, f"line {number} has {len(tokens)} values, expected {dim}")
        bad = [t for t in tokens if t not in (b"0", b"1")]
        if bad:
            shown = bad[0].decode("ascii", "replace")[:20]
            raise DataError(source, f"line {number} holds {shown!r}; only 0 and 1 are allowed")
        rows.append(np.array(tokens) == b"1")
    if not rows:
        raise DataError(source, "holds no images")
    return np.stack(rows).astype(np.uint8)


def read_amat(path: PathLike, *, dim: int = 784) -> np.ndarray:
    """Read a binarized-MNIST ``.amat`` file into a uint8 array (n, dim) of 0/1."""
    return parse_amat(Path(path).read_bytes(), path, dim=dim)


def write_amat(path: PathLike, images: np.ndarray) -> Path:
    """Write 0/1 images (n, ...) in the canonical ``.amat`` layout (one image a line)."""
    flat = np.asarray(images).reshape(len(images), -1)
    if not np.isin(flat, (0, 1)).all():
        raise ValueError("images: .amat stores only the values 0 and 1")
    n, dim = flat.shape
    out = np.full((n, 2 * dim), _SPACE, dtype=np.uint8)
    out[:, 0::2] = flat.astype(np.uint8) + _ZERO
    out[:, -1] = _NEWLINE
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(out.tobytes())
    os.replace(tmp, path)
    return path
