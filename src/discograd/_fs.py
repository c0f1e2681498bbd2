"""File-system helpers shared by the trainer's checkpoints and the data downloads."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable, where directories can be fsync'ed.

    ``os.replace`` is atomic, but until the directory entry itself reaches the disk a crash can
    still lose the new name. Windows cannot open a directory for fsync; there it is skipped.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
