"""File-system durability shared by the keystores, the content store and the data folder."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries to disk.

    A file created in, or renamed into, a directory survives a power cut only once the
    directory itself has been flushed too.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
