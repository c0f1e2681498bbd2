"""Errors raised by the data package. Every one names the file it is about.

``DataError`` is a ``ValueError`` (the file's contents are wrong); the two others also derive
from the built-in ``OSError`` kinds that callers already catch for missing files and
network failures.
"""

from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


class DataError(ValueError):
    """A data file is malformed, truncated, or fails its checksum.

    ``path`` is the file (or URL) concerned; the message starts with it; ``reason`` is the
    message without it.
    """

    def __init__(self, path: PathLike, message: str) -> None:
        self.path = os.fspath(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class ChecksumError(DataError):
    """A file's bytes differ from the published checksum."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file is on none of the searched paths and may not be downloaded."""


class DownloadError(DataError, ConnectionError):
    """Every mirror and every retry failed to deliver a file."""
