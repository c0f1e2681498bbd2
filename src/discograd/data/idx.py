"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al., 1998), plain or gzip.

Layout, all integers big-endian::

    byte 0-1   0x00 0x00
    byte 2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
               0x0D float32, 0x0E float64
    byte 3     number of dimensions d
    4 d bytes  the sizes n_1 ... n_d, one uint32 each
    then       n_1 * ... * n_d elements in C (row-major) order

A file is gzip-compressed when it starts with the gzip magic bytes ``1f 8b``, whatever its
name. Any deviation (short header, unknown type, fewer or more data bytes than the header
promises, a damaged gzip stream) raises :class:`~discograd.data.errors.DataError` naming
the file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from discograd.data.errors import DataError, PathLike

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}


def decompress(blob: bytes, source: PathLike) -> bytes:
    """``blob`` itself, or its decompressed bytes when it is gzip; damage raises DataError."""
    if not blob.startswith(GZIP_MAGIC):
        return blob
    try:
        return gzip.decompress(blob)
    except EOFError as exc:
        raise DataError(source, f"gzip stream is truncated ({len(blob)} bytes read)") from exc
    except (OSError, zlib.error) as exc:
        raise DataError(source, f"gzip stream is corrupt: {exc}") from exc


def parse_idx(buf: bytes, source: PathLike) -> np.ndarray:
    """Decode the (uncompressed) IDX bytes ``buf``; ``source`` names them in errors.

    Returns a writable array in native byte order with the dimensions of the header.
    """
    if len(buf) < 4:
        raise DataError(source, f"too short for an IDX header ({len(buf)} bytes)")
    zero, code, ndim = struct.unpack_from(">HBB", buf, 0)
    if zero != 0:
        raise DataError(source, f"not an IDX file (magic bytes {buf[:4].hex()})")
    if code not in IDX_DTYPES:
        raise DataError(source, f"unknown IDX element type 0x{code:02x}")
    if ndim == 0:
        raise DataError(source, "IDX header declares zero dimensions")
    start = 4 + 4 * ndim
    if len(buf) < start:
        raise DataError(source, f"truncated IDX header: {len(buf)} of {start} bytes")
    dims = struct.unpack_from(f">{ndim}I", buf, 4)
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(buf) - start
    if have < expected:
        raise DataError(
            source, f"truncated: header {dims} promises {expected} data bytes, found {have}"
        )
    if have > expected:
        raise DataError(
            source,
            f"corrupt: {have - expected} bytes after the {expected} the header {dims} promises",
        )
    flat = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=start)
    return flat.reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not (see the module docstring)."""
    return parse_idx(decompress(Path(path).read_bytes(), path), path)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of ``array`` (dtype uint8, int8, int16, int32, float32 or float64)."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"array: IDX cannot store dtype {array.dtype}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"array: IDX needs 1 to 255 dimensions, got {array.ndim}")
    code = _CODES[native]
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(
    path: PathLike, array: np.ndarray, *, compress: Optional[bool] = None, compresslevel: int = 6
) -> Path:
    """Write ``array`` as an IDX file; gzip it when ``compress`` (default: name ends .gz).

    The gzip header carries no name and time stamp 0, so equal arrays give equal bytes.
    """
    path = Path(path)
    data = encode_idx(array)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, compresslevel=compresslevel, mtime=0)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
