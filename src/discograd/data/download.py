"""Downloading one published file: mirrors, resume, bounded retries, checksum, atomic rename.

For each mirror URL in turn, up to ``1 + retries`` attempts are made:

1. Bytes go to ``<dest>.part``. When a ``.part`` is already there (an earlier attempt or
   an interrupted run), the request asks for the rest with ``Range: bytes=<size>-``. A
   server that answers ``206 Partial Content`` at that offset is appended to; one that
   answers ``200`` with the whole file (no range support, ``file://`` URLs) restarts the
   ``.part`` from zero; ``416`` (range not satisfiable) or another range deletes the
   ``.part`` and restarts at once.
2. A transfer that ends before its ``Content-Length`` (or the published size) is an
   interrupted one: the next attempt resumes it, after a pause of ``backoff * 2**k`` s.
3. The finished ``.part`` is flushed and fsync'ed, checked against the published checksum
   (:mod:`discograd.data.checksum`), and only then renamed to ``dest`` (``os.replace``,
   atomic on POSIX and Windows), so ``dest`` never holds a partial or wrong file. A
   ``.part`` that fails the checksum is deleted; the same URL is tried once more from zero
   when the ``.part`` had been resumed, the next mirror otherwise.

Failures raise :class:`~discograd.data.errors.ChecksumError` (some mirror delivered wrong
bytes and none right ones) or :class:`~discograd.data.errors.DownloadError` (no mirror
delivered), both naming ``dest`` and listing each URL's failure. Only ``urllib`` is used.
Two processes downloading the same file into the same folder at once are not coordinated.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, List, Optional

from discograd._fs import fsync_dir
from discograd.data.checksum import RemoteFile, verify
from discograd.data.errors import ChecksumError, DownloadError, PathLike
from discograd.data.idx import decompress

log = logging.getLogger("discograd.data")

Progress = Callable[[int, Optional[int]], None]
"""Called as ``progress(bytes_so_far, total_or_None)`` while a file downloads."""

_USER_AGENT = "discograd-data/1 (+urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Interrupted(Exception):
    """A transfer that stopped early; the ``.part`` keeps what arrived."""


# Why urllib's file:// handler fails for a missing or unreadable local file: retrying the same
# path cannot help (a network failure's reason is another OSError, or a socket error).
_LOCAL_FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _transient(exc: BaseException) -> bool:
    """Whether retrying the same URL may help: not for 404, 403 and other client errors, a
    local file that is not there (file://) or a URL scheme urllib does not know."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, _LOCAL_FILE_ERRORS):
            return False
        if isinstance(reason, str) and reason.startswith("unknown url type"):
            return False
    return True


def _fetch_once(
    url: str,
    part: Path,
    size: Optional[int],
    timeout: float,
    chunk: int,
    progress: Optional[Progress],
) -> bool:
    """One attempt: append the rest of ``url`` to ``part`` (or restart it).

    Returns whether the finished ``part`` holds bytes from before this attempt.
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        offset = 0  # longer than the published file: cannot be a prefix of it
    if size is not None and offset == size:
        return True  # complete already; the checksum decides
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is no prefix of what the server has
            part.unlink()
            return _fetch_once(url, part, size, timeout, chunk, progress)
        raise
    with response:
        status = getattr(response, "status", None)
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink()
                response.close()
                return _fetch_once(url, part, size, timeout, chunk, progress)
        else:
            offset = 0  # whole file sent (200, file://): start the .part over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        received = offset
        with open(part, "ab" if offset else "wb") as out:
            while True:
                block = response.read(chunk)
                if not block:
                    break
                out.write(block)
                received += len(block)
                if progress is not None:
                    progress(received, total)
            out.flush()
            os.fsync(out.fileno())
    expected = total if total is not None else size
    if expected is not None and received < expected:
        raise _Interrupted(f"connection closed after {received} of {expected} bytes")
    return offset > 0


def download(
    file: RemoteFile,
    dest: PathLike,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    chunk_size: int = 1 << 20,
    progress: Optional[Progress] = None,
) -> Path:
    """Download ``file`` to the path ``dest`` and verify it (see the module docstring).

    retries: further attempts per mirror after the first (each resumes the ``.part``);
    timeout: seconds a connection may stay silent; backoff: first pause between attempts,
    doubled each time. Returns ``dest``.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    if not file.urls:
        raise ValueError(f"file: {file.name} has no URLs to download from")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures: List[str] = []
    bad_bytes = False
    for url in file.urls:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            log.info("downloading %s -> %s (attempt %d)", url, dest, attempt + 1)
            try:
                resumed = _fetch_once(url, part, file.size, timeout, chunk_size, progress)
            except _Interrupted as exc:
                failures.append(f"{url}: {exc}")
                continue
            except (
                urllib.error.URLError,
                http.client.HTTPException,
                socket.timeout,
                ConnectionError,
                TimeoutError,
            ) as exc:
                failures.append(f"{url}: {exc}")
                if _transient(exc):
                    continue
                break
            blob = part.read_bytes()
            try:
                how = verify(blob, functools.partial(decompress, blob, url), file, url)
            except ChecksumError as exc:
                part.unlink()
                failures.append(exc.reason + f" (from {url})")
                if resumed:
                    continue  # the old .part may be the culprit: fetch the whole file again
                bad_bytes = True
                break
            os.replace(part, dest)
            fsync_dir(dest.parent)
            log.info("verified %s (%s)", dest, how)
            return dest
    report = "; ".join(failures[-8:])
    if bad_bytes:
        raise ChecksumError(dest, f"no mirror delivered the published bytes: {report}")
    raise DownloadError(dest, f"could not download {file.name}: {report}")
