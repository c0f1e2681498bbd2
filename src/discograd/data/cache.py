"""Where data files live: the data folder, and finding files already on disk.

The data folder is, first match wins: the ``data_dir`` argument, the environment variable
``DISCOGRAD_DATA``, ``$XDG_CACHE_HOME/discograd``, ``~/.cache/discograd``. A data set
``name`` is downloaded into ``<data folder>/<name>/``.

Before downloading, each file is looked for, in order, in ``<data folder>/<name>/``, the
sub-folders other tools use (torchvision's ``MNIST/raw``...), the data folder itself, and
the system folders of OS packages (``/usr/share/datasets/fashion-mnist`` of Debian's
``dataset-fashion-mnist``). In each folder the published name (``x.gz``) is preferred to
a decompressed copy (``x``). A copy that fails its checksum is passed over (with a logged
warning) for the next one, or for a fresh download into ``<data folder>/<name>/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from discograd.data.checksum import RemoteFile
from discograd.data.errors import PathLike
from discograd.data.registry import DatasetSpec

ENV_VAR = "DISCOGRAD_DATA"


def data_root(data_dir: Optional[PathLike] = None) -> Path:
    """The data folder (see the module docstring); not created here."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "discograd"


def search_dirs(spec: DatasetSpec, root: Path) -> List[Path]:
    """The folders searched for the files of ``spec``, in order."""
    dirs = [root / spec.name, *(root / sub for sub in spec.folders), root]
    return dirs + [Path(d) for d in spec.system_dirs]


def find_files(file: RemoteFile, dirs: Sequence[Path]) -> Iterator[Tuple[Path, bool]]:
    """Every copy of ``file`` on disk, in search order, with whether it is in published form.

    A ``.gz`` file may also be present decompressed (name without ``.gz``); such a copy
    comes with ``False`` since the published file digests do not apply to it.
    """
    names = [file.name]
    if file.name.endswith(".gz"):
        names.append(file.name[: -len(".gz")])
    for folder in dirs:
        for name in names:
            path = folder / name
            if path.is_file():
                yield path, name == file.name


def find_file(file: RemoteFile, dirs: Sequence[Path]) -> Optional[Tuple[Path, bool]]:
    """The first of :func:`find_files`, or None."""
    return next(find_files(file, dirs), None)
