"""A local ``.npz`` of images as a data set (``load("mnist-npz:PATH")``).

The file holds an array ``images`` (n, rows, cols), uint8 grey levels 0-255 or floats in
[0, 1], and optionally ``labels`` (n,) of an integer dtype. Such files are often sorted by
class (the shared ``mnist-10k.npz`` is), so the images are shuffled with a seed before the
split.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from discograd.data.binarize import describe_binarization
from discograd.data.embedded import Splits
from discograd.data.errors import DataError, DataNotFoundError, PathLike


def load_npz(
    path: PathLike, *, seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> Splits:
    """Images from a local ``.npz``: array ``images`` (n, rows, cols), optional ``labels`` (n,).

    ``images`` may be uint8 grey levels 0-255 (divided by 255) or floats in [0, 1]. The
    images are shuffled with ``seed`` (files such as the shared ``mnist-10k.npz`` are sorted
    by class) and split: the first ``round(valid_fraction * n)`` validation, the next
    ``round(test_fraction * n)`` test, the rest train; 10,000 images give 8,000 / 1,000 /
    1,000. ``labels`` must have an integer dtype; missing labels become -1. A malformed file
    raises :class:`~discograd.data.errors.DataError` naming it.
    """
    path = Path(path).expanduser()
    if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
        raise ValueError(
            "valid_fraction and test_fraction must be > 0 with a sum below 1, got "
            f"{valid_fraction} and {test_fraction}"
        )
    if not path.is_file():
        raise DataNotFoundError(path, "no such .npz file")
    try:
        archive = np.load(path, allow_pickle=False)
        # np.load reads a .npy (whatever the file's name) as one bare array, not an archive.
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(
                path,
                f"is a single .npy array {archive.shape} (np.save), not an .npz archive of "
                f"named arrays: write it with np.savez(path, images=..., labels=...)",
            )
        with archive:
            if "images" not in archive.files:
                raise DataError(path, f"has no array 'images' (arrays: {archive.files})")
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(path, f"is not a readable .npz file: {exc}") from exc
    if images.ndim != 3 or len(images) < 3:
        raise DataError(path, f"'images' must be (n >= 3, rows, cols), got {images.shape}")
    if labels is None:
        labels = np.full(len(images), -1, dtype=np.int64)
    elif labels.shape != (len(images),):
        raise DataError(path, f"'labels' must be ({len(images)},), got {labels.shape}")
    elif not np.issubdtype(labels.dtype, np.integer):
        # Integer dtypes only (as the shipped files' uint8): a cast would truncate 20.5 to 20
        # silently, and strings would fail with a bare ValueError naming no file.
        raise DataError(path, f"'labels' must have an integer dtype, got {labels.dtype}")
    if images.dtype == np.uint8:
        x = torch.from_numpy(images.reshape(len(images), -1)).to(torch.float32).div_(255.0)
    elif np.issubdtype(images.dtype, np.floating) or images.dtype == np.bool_:
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32))
        if not bool(((x >= 0) & (x <= 1)).all()):
            raise DataError(path, "float 'images' must lie in [0, 1]")
    else:
        raise DataError(path, f"'images' must be uint8 or float, got {images.dtype}")
    y = torch.from_numpy(labels.astype(np.int64))
    n = len(x)
    n_valid, n_test = max(1, round(valid_fraction * n)), max(1, round(test_fraction * n))
    if n_valid + n_test >= n:
        raise DataError(path, f"{n} images are too few to split")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    x, y = x[order], y[order]
    va, te = slice(0, n_valid), slice(n_valid, n_valid + n_test)
    tr = slice(n_valid + n_test, n)
    return Splits(
        name=f"npz:{path.name}",
        train=x[tr],
        valid=x[va],
        test=x[te],
        train_labels=y[tr],
        valid_labels=y[va],
        test_labels=y[te],
        image_shape=(int(images.shape[1]), int(images.shape[2])),
        description=(
            f"local file {path} ({n:,} images {images.shape[1]}x{images.shape[2]}), shuffled "
            f"with seed {seed}, split {n - n_valid - n_test:,} train / {n_valid:,} valid / "
            f"{n_test:,} test; grey levels in [0, 1]"
        ),
        extra={
            "source": "npz",
            "files": {"npz": str(path)},
            "split": f"numpy default_rng({seed}).permutation; valid = first {n_valid}, "
            f"test = next {n_test}, train = the rest",
            "binarization": describe_binarization("none"),
        },
    )
