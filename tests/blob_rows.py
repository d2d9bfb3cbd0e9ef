"""Editing a content file's rows directly, as someone with access to the disk could."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def tamper_blob(content_db: Path, digest: str, data: bytes | None) -> None:
    """Replace the stored bytes of a blob, or remove its row when ``data`` is None."""
    with closing(sqlite3.connect(content_db)) as db, db:
        if data is None:
            cursor = db.execute("DELETE FROM blob WHERE digest = ?", (bytes.fromhex(digest),))
        else:
            cursor = db.execute(
                "UPDATE blob SET data = ? WHERE digest = ?", (data, bytes.fromhex(digest))
            )
        assert cursor.rowcount == 1, "no such blob"


def write_first_format(root: Path, blobs: dict[str, bytes]) -> Path:
    """Lay blobs out as the first format kept them, ``root/blobs/ab/cd/<digest>``."""
    folder = root / "blobs"
    for digest, data in blobs.items():
        shard = folder / digest[:2] / digest[2:4]
        shard.mkdir(parents=True, exist_ok=True)
        (shard / digest).write_bytes(data)
    return folder
