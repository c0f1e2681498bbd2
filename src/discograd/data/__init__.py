"""Data sets: the embedded default, standard-format loaders, downloads and binarization.

``load(name)`` returns a :class:`Splits` (train / valid / test) for ``"digits"`` (embedded,
no download), ``"mnist"``, ``"fashion-mnist"``, ``"binarized-mnist"`` and
``"mnist-npz:PATH"``; see :mod:`discograd.data.loaders`. Files are found on disk or
downloaded into ``$DISCOGRAD_DATA`` (default ``~/.cache/discograd``) and checked against
their published checksums.
"""

from discograd.data.amat import read_amat, write_amat
from discograd.data.binarize import (
    BINARIZATION_MODES,
    DynamicBinarizer,
    binarize,
    describe_binarization,
)
from discograd.data.cache import ENV_VAR, data_root, find_file, find_files, search_dirs
from discograd.data.checksum import RemoteFile, verify
from discograd.data.download import download
from discograd.data.embedded import Splits, load_digits
from discograd.data.errors import ChecksumError, DataError, DataNotFoundError, DownloadError
from discograd.data.idx import read_idx, write_idx
from discograd.data.loaders import (
    dataset_names,
    load,
    load_binarized_mnist,
    load_fashion_mnist,
    load_idx_dataset,
    load_mnist,
)
from discograd.data.npz import load_npz
from discograd.data.registry import DATASETS, DatasetSpec

__all__ = [
    "BINARIZATION_MODES",
    "ChecksumError",
    "DATASETS",
    "DataError",
    "DataNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "DynamicBinarizer",
    "ENV_VAR",
    "RemoteFile",
    "Splits",
    "binarize",
    "data_root",
    "dataset_names",
    "describe_binarization",
    "download",
    "find_file",
    "find_files",
    "load",
    "load_binarized_mnist",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_mnist",
    "load_npz",
    "read_amat",
    "read_idx",
    "search_dirs",
    "verify",
    "write_amat",
    "write_idx",
]
