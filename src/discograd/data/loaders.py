"""Loading data sets into :class:`~discograd.data.embedded.Splits`.

=====================  ==========================  =========================================
name                   source                      train / validation / test
=====================  ==========================  =========================================
``digits``             embedded 8x8 UCI digits     1,197 / 200 / 400 (seeded shuffle)
``mnist``              IDX files                   50,000 / 10,000 / 10,000
``fashion-mnist``      IDX files                   50,000 / 10,000 / 10,000
``binarized-mnist``    ``.amat`` files             50,000 / 10,000 / 10,000
``mnist-npz:PATH``     a local ``.npz``            80% / 10% / 10% (seeded shuffle)
=====================  ==========================  =========================================

For MNIST and Fashion-MNIST the validation set is the *last* 10,000 of the 60,000 training
images and the test set is the official 10,000 (the split of the discrete-VAE papers);
binarized MNIST comes split by its authors. Images are float32 in [0, 1], flattened to
(n, 784); labels are int64 (-1 where a data set has none: binarized MNIST).

Files are looked for on disk first (:mod:`discograd.data.cache`), downloaded otherwise
(:mod:`discograd.data.download`), and checked against their published checksums
(:mod:`discograd.data.checksum`) every time they are read; ``Splits.extra`` records the
files used and how each was verified, and ``Splits.description`` says it in one line.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from discograd.data.amat import parse_amat
from discograd.data.binarize import describe_binarization
from discograd.data.cache import data_root, find_files, search_dirs
from discograd.data.checksum import RemoteFile, verify
from discograd.data.download import Progress
from discograd.data.download import download as download_file
from discograd.data.embedded import Splits, load_digits
from discograd.data.errors import DataError, DataNotFoundError, PathLike
from discograd.data.idx import decompress, parse_idx
from discograd.data.npz import load_npz
from discograd.data.registry import BINARIZED_MNIST, DATASETS, FASHION_MNIST, MNIST, DatasetSpec

log = logging.getLogger("discograd.data")

N_VALID = 10_000  # held out from the end of the MNIST training files
NPZ_PREFIXES = ("mnist-npz:", "npz:")


def _read_verified(path: Path, file: RemoteFile, as_published: bool) -> Tuple[Path, bytes, str]:
    blob = path.read_bytes()
    content = decompress(blob, path)
    return path, content, verify(blob, lambda: content, file, path, as_published=as_published)


def _obtain(
    file: RemoteFile,
    spec: DatasetSpec,
    root: Path,
    *,
    download: bool,
    mirrors: Optional[Sequence[str]],
    fetch: Dict[str, Any],
) -> Tuple[Path, bytes, str]:
    """Find (or download) one file, read and verify it: (path, content bytes, how verified).

    Copies on disk that are damaged or fail their checksum are skipped with a warning; when
    no good copy is found and ``download`` is False, the first such error is raised.
    """
    dirs = search_dirs(spec, root)
    rejected: List[DataError] = []
    for path, as_published in find_files(file, dirs):
        try:
            return _read_verified(path, file, as_published)
        except DataError as exc:
            log.warning("skipping %s", exc)
            rejected.append(exc)
    if not download:
        if rejected:
            raise rejected[0]
        searched = ", ".join(str(d) for d in dirs)
        raise DataNotFoundError(
            root / spec.name / file.name,
            f"{file.name} of {spec.name} is not on disk (searched {searched}) and download=False",
        )
    source = file.with_mirrors(tuple(mirrors)) if mirrors else file
    dest = download_file(source, root / spec.name / file.name, **fetch)
    return _read_verified(dest, file, True)


def _files_of(spec: DatasetSpec, root: Path, **kwargs: Any) -> Dict[str, Tuple[Path, bytes, str]]:
    return {role: _obtain(f, spec, root, **kwargs) for role, f in spec.files.items()}


def _check_idx_pair(images: np.ndarray, labels: np.ndarray, paths: Tuple[Path, Path]) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            paths[0], f"expected uint8 images (n, rows, cols), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(paths[1], f"expected uint8 labels (n,), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise DataError(paths[1], f"{len(labels)} labels for {len(images)} images in {paths[0]}")


def _tensors(images: np.ndarray, labels: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images.reshape(len(images), -1)).to(torch.float32).div_(255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_idx_dataset(
    spec: DatasetSpec,
    *,
    data_dir: Optional[PathLike] = None,
    download: bool = True,
    n_valid: int = N_VALID,
    mirrors: Optional[Sequence[str]] = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: Optional[Progress] = None,
) -> Splits:
    """An IDX data set (MNIST layout) split train / last ``n_valid`` training images / test.

    spec: its four files, roles ``train_images``, ``train_labels``, ``test_images``,
    ``test_labels``; mirrors: URL prefixes to download from instead of the published ones;
    the other arguments as in :func:`load`.
    """
    root = data_root(data_dir)
    fetch = {"retries": retries, "timeout": timeout, "progress": progress}
    files = _files_of(spec, root, download=download, mirrors=mirrors, fetch=fetch)
    arrays = {role: parse_idx(content, path) for role, (path, content, _) in files.items()}
    for part in ("train", "test"):
        pair = (files[f"{part}_images"][0], files[f"{part}_labels"][0])
        _check_idx_pair(arrays[f"{part}_images"], arrays[f"{part}_labels"], pair)
    n_train = len(arrays["train_images"])
    if not 0 < n_valid < n_train:
        raise ValueError(f"n_valid must be in (0, {n_train}), got {n_valid}")
    x, y = _tensors(arrays["train_images"], arrays["train_labels"])
    x_test, y_test = _tensors(arrays["test_images"], arrays["test_labels"])
    cut = n_train - n_valid
    rows, cols = arrays["train_images"].shape[1:]
    verified = {role: how for role, (_, _, how) in files.items()}
    folder = files["train_images"][0].parent
    return Splits(
        name=spec.name,
        train=x[:cut],
        valid=x[cut:],
        test=x_test,
        train_labels=y[:cut],
        valid_labels=y[cut:],
        test_labels=y_test,
        image_shape=(int(rows), int(cols)),
        description=(
            f"{spec.title} ({spec.license}), IDX files in {folder}, checksums: "
            f"{_summary(verified)}; validation = last {n_valid:,} of the {n_train:,} training "
            "images; grey levels in [0, 1]"
        ),
        extra={
            "source": "idx",
            "files": {role: str(path) for role, (path, _, _) in files.items()},
            "verified": verified,
            "split": f"train = training images [0, {cut}), valid = [{cut}, {n_train}), "
            "test = the test files",
            "citation": spec.citation,
            "binarization": describe_binarization("none"),
        },
    )


def _summary(verified: Dict[str, str]) -> str:
    kinds = sorted(set(verified.values()))
    return kinds[0] if len(kinds) == 1 else ", ".join(f"{r} {h}" for r, h in verified.items())


def load_mnist(**kwargs: Any) -> Splits:
    """MNIST, 50,000 / 10,000 / 10,000; keyword arguments as in :func:`load_idx_dataset`."""
    return load_idx_dataset(MNIST, **kwargs)


def load_fashion_mnist(**kwargs: Any) -> Splits:
    """Fashion-MNIST, 50,000 / 10,000 / 10,000; arguments as in :func:`load_idx_dataset`."""
    return load_idx_dataset(FASHION_MNIST, **kwargs)


def load_binarized_mnist(
    *,
    data_dir: Optional[PathLike] = None,
    download: bool = True,
    mirrors: Optional[Sequence[str]] = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: Optional[Progress] = None,
) -> Splits:
    """Binarized MNIST of Larochelle & Murray (2011), their 50,000 / 10,000 / 10,000 split.

    The pixels are a fixed Bernoulli draw (static binarization); there are no labels, so
    the label tensors hold -1.
    """
    spec = BINARIZED_MNIST
    root = data_root(data_dir)
    fetch = {"retries": retries, "timeout": timeout, "progress": progress}
    files = _files_of(spec, root, download=download, mirrors=mirrors, fetch=fetch)
    x = {
        role: torch.from_numpy(parse_amat(content, path)).to(torch.float32)
        for role, (path, content, _) in files.items()
    }
    verified = {role: how for role, (_, _, how) in files.items()}
    folder = files["train"][0].parent
    return Splits(
        name=spec.name,
        train=x["train"],
        valid=x["valid"],
        test=x["test"],
        train_labels=torch.full((len(x["train"]),), -1, dtype=torch.int64),
        valid_labels=torch.full((len(x["valid"]),), -1, dtype=torch.int64),
        test_labels=torch.full((len(x["test"]),), -1, dtype=torch.int64),
        image_shape=(28, 28),
        description=(
            f"{spec.title}, Larochelle & Murray's .amat files in {folder}, checksums: "
            f"{_summary(verified)}; their train / valid / test split; no labels"
        ),
        extra={
            "source": "amat",
            "files": {role: str(path) for role, (path, _, _) in files.items()},
            "verified": verified,
            "split": "as published (binarized_mnist_{train,valid,test}.amat)",
            "citation": spec.citation,
            "binarization": describe_binarization("given"),
        },
    )


def dataset_names() -> Tuple[str, ...]:
    """The names :func:`load` accepts (plus ``mnist-npz:PATH``)."""
    return ("digits", *DATASETS)


def load(
    name: str,
    *,
    data_dir: Optional[PathLike] = None,
    download: bool = True,
    seed: int = 0,
    mirrors: Optional[Sequence[str]] = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: Optional[Progress] = None,
) -> Splits:
    """Load a data set by name; see the table in the module docstring.

    name: ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"binarized-mnist"`` or
    ``"mnist-npz:PATH"``; data_dir: the data folder (default ``$DISCOGRAD_DATA`` or
    ``~/.cache/discograd``); download: fetch files not found on disk; seed: the shuffle of
    ``digits`` and of ``.npz`` files; mirrors: URL prefixes to download from instead of the
    published ones; retries, timeout, progress: as in :func:`discograd.data.download.download`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    for prefix in NPZ_PREFIXES:
        if name.startswith(prefix):
            return load_npz(name[len(prefix) :], seed=seed)
    key = name.strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "binarizedmnist": "binarized-mnist"}.get(key, key)
    if key == "digits":
        return load_digits(seed)
    loaders = {
        "mnist": functools.partial(load_idx_dataset, MNIST),
        "fashion-mnist": functools.partial(load_idx_dataset, FASHION_MNIST),
        "binarized-mnist": load_binarized_mnist,
    }
    if key not in loaders:
        raise ValueError(f"name must be one of {dataset_names()} or 'mnist-npz:PATH', got {name!r}")
    return loaders[key](
        data_dir=data_dir,
        download=download,
        mirrors=mirrors,
        retries=retries,
        timeout=timeout,
        progress=progress,
    )
