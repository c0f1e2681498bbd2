"""Published files and their checksums, and checking bytes against them.

A :class:`RemoteFile` is one file of a data set: its published name, the URLs it is served
from (mirrors, tried in order), its size, and whichever digests are published for it.
Which kinds are known differs from file to file, so each is a separate field:

- ``sha256``: SHA-256 of the file as served. The primary check.
- ``md5``: MD5 of the file as served. Checked only when no SHA-256 is known (MD5 still
  catches truncation and corruption, not a deliberate forgery).
- ``content_sha256``: SHA-256 of the *decompressed* bytes of a gzip file. A copy that was
  re-compressed (Debian's ``dataset-fashion-mnist`` re-gzips the Fashion-MNIST files: same
  IDX bytes, another gzip header) fails the file digests but passes this one; so does a
  copy a user gunzipped.

:func:`verify` reports how bytes were checked: ``"sha256"``, ``"md5"``,
``"content-sha256"``, or ``"unverified"`` when no published digest applies (an
uncompressed copy of a file for which only digests of the ``.gz`` are known). Bytes that
contradict a digest raise :class:`~discograd.data.errors.ChecksumError` naming the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from discograd.data.errors import ChecksumError, PathLike


@dataclass(frozen=True)
class RemoteFile:
    """One published file: ``name``, mirror ``urls`` and its known digests (hex strings)."""

    name: str
    urls: Tuple[str, ...] = ()
    size: Optional[int] = None
    sha256: Optional[str] = None
    md5: Optional[str] = None
    content_sha256: Optional[str] = None

    @property
    def file_digest(self) -> Optional[Tuple[str, str]]:
        """The digest that checks the file as served, ``(kind, hex)``: SHA-256, else MD5."""
        if self.sha256:
            return "sha256", self.sha256.lower()
        if self.md5:
            return "md5", self.md5.lower()
        return None

    def with_mirrors(self, bases: Tuple[str, ...]) -> RemoteFile:
        """A copy served from ``bases`` (each a URL prefix ending in '/') instead."""
        return RemoteFile(
            self.name,
            tuple(base + self.name for base in bases),
            self.size,
            self.sha256,
            self.md5,
            self.content_sha256,
        )


def digest(data: bytes, kind: str) -> str:
    """Hex digest of ``data``; ``kind`` is a hashlib name such as "sha256" or "md5"."""
    return hashlib.new(kind, data).hexdigest()


def check_file(blob: bytes, spec: RemoteFile) -> Optional[bool]:
    """Whether ``blob`` matches the file digest of ``spec``; None when none is published."""
    known = spec.file_digest
    if known is None:
        return None
    kind, expected = known
    return digest(blob, kind) == expected


def verify(
    blob: bytes,
    content: Callable[[], bytes],
    spec: RemoteFile,
    source: PathLike,
    *,
    as_published: bool = True,
) -> str:
    """Check the bytes of one file against ``spec`` and say how they were checked.

    blob: the file's bytes; content: returns its decompressed bytes (``blob`` itself when not
    gzip), called only when the content digest is needed;
    as_published: whether the file is in its published form (same name and compression),
    so that the file digests apply to it. Raises ChecksumError when every digest that
    applies disagrees.
    """
    checked = []
    if as_published and spec.file_digest is not None:
        kind = spec.file_digest[0]
        if check_file(blob, spec):
            return kind
        checked.append(kind)
    if spec.content_sha256:
        if digest(content(), "sha256") == spec.content_sha256.lower():
            return "content-sha256"
        checked.append("sha256 of the decompressed content")
    if not checked:
        return "unverified"
    size = f"{len(blob)} bytes" + (f", published size {spec.size}" if spec.size else "")
    raise ChecksumError(
        source, f"does not match the published {' or '.join(checked)} of {spec.name} ({size})"
    )
