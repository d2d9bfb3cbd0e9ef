"""A content-addressed blob store in one SQLite file.

Each record version's encrypted content is one row, keyed by the SHA-256 of its bytes. A write
is one SQLite transaction in WAL mode with ``synchronous=FULL``: when ``put`` returns, the
content is complete and durable, and a crash before that leaves nothing of it.

Why one file and not a file per blob (the store's first format, still read to migrate data
folders): record content is small, one to a few kilobytes a version, and ``rekam verify``
reads every version's content. Each separate file costs an open, two reads and a close, and
on this project's machines the open and close alone took 4.4 us, more than reading and
hashing the bytes; a cold cache made it thousands of small random reads. From SQLite, 10,000
blobs are read in batches at about 2.5 us each, and a cold cache reads one file. Writing is
one WAL sync instead of a sync of the file and of its directory.

The store holds encrypted content and never looks inside; it does not re-hash what it reads
(``rekam verify`` does). Erasure deletes the row with ``secure_delete`` on, so SQLite
overwrites the freed space, and then checkpoints the write-ahead log into the database so the
log's copy of the page goes too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rekam._files import fsync_dir

#: The format of the blob table, kept in SQLite's ``user_version``.
FORMAT = 1
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
# Digests per statement when reading many: SQLite allows 32,766 parameters; a few hundred
# already make the statement's own cost negligible.
_READ_BATCH = 500
# Reads map the database file instead of copying each page through a read call; the map
# grows with the file up to this size (SQLite reads the rest as before).
_MMAP_BYTES = 1 << 30
# How long a statement waits for another process's write to finish.
_BUSY_SECONDS = 30.0


class BlobStoreFormatError(RuntimeError):
    """The content file was written by a newer Rekam, or is not a Rekam content file."""


def _key(digest: str) -> bytes:
    """The 32-byte key of a SHA-256 hex digest, refusing anything else."""
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        raise ValueError("a blob digest is exactly 64 lowercase hex digits")
    return bytes.fromhex(digest)


class SqliteBlobStore:
    """A BlobStore keeping every blob as a row of one SQLite file at ``path``.

    Safe to share between threads (one connection, used under a lock: each call is a few
    microseconds, or one sync for a write) and between processes (SQLite's own locking). A
    process forked from one holding the store opens a connection of its own, and a pickled
    store carries only its path.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        with self._lock:
            self._connection()  # creates the file, or refuses it, now rather than later

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the path travels; see _in_this_process.
        return (_in_this_process, (self.path,))

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (call with the lock held)."""
        if self._db is None or self._pid != os.getpid():
            # A connection must never be used across a fork: a child opens its own and
            # leaves the parent's alone.
            self._db = self._open()
            self._pid = os.getpid()
        return self._db

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created here, empty (an empty file is an empty database), so that it and the
            # log files SQLite makes beside it (with its mode) are private from the start.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                fsync_dir(self.path.parent)
        # Autocommit: every statement is its own transaction unless one is begun explicitly.
        db = sqlite3.connect(
            self.path, timeout=_BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            self._check_format(db)
        except sqlite3.OperationalError:  # locked, unreadable, out of space: said as it is
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            raise BlobStoreFormatError(
                f"{self.path} is not a Rekam content file ({type(exc).__name__})"
            ) from None
        except BaseException:
            db.close()
            raise
        return db

    def _check_format(self, db: sqlite3.Connection) -> None:
        """Refuse a newer format; create the table in a new file."""
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version == FORMAT:
            return
        if version != 0:
            raise BlobStoreFormatError(
                f"{self.path} holds content in format {version}; this Rekam reads format "
                f"{FORMAT}. Use the Rekam release that wrote it, or a newer one."
            )
        db.execute("BEGIN IMMEDIATE")  # two processes creating it at once: one does
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS blob ("
                " id INTEGER PRIMARY KEY,"
                " digest BLOB NOT NULL UNIQUE,"
                " data BLOB NOT NULL)"
            )
            db.execute(f"PRAGMA user_version={FORMAT}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def put(self, data: bytes) -> str:
        """Store bytes durably and atomically; returns their SHA-256 hex."""
        data = bytes(data)
        digest = hashlib.sha256(data).digest()
        with self._lock:
            # Storing the same content again is a no-op, unless what is stored under its
            # digest has been damaged: then the good bytes replace it.
            self._connection().execute(
                "INSERT INTO blob (digest, data) VALUES (?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET data = excluded.data"
                " WHERE data IS NOT excluded.data",
                (digest, data),
            )
        return digest.hex()

    def get(self, digest: str) -> bytes | None:
        """The bytes stored under this digest, or None (not re-hashed; see verify)."""
        key = _key(digest)
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT data FROM blob WHERE digest = ?", (key,))
                .fetchone()
            )
        return None if row is None else row[0]

    def get_many(self, digests: Sequence[str]) -> list[bytes | None]:
        """The bytes stored under each digest, in the order given (None where absent)."""
        keys = [_key(d) for d in digests]
        found: dict[bytes, bytes] = {}
        for start in range(0, len(keys), _READ_BATCH):
            batch = keys[start : start + _READ_BATCH]
            # Only placeholders go into the text; the digests are bound as parameters.
            marks = ",".join("?" * len(batch))
            query = f"SELECT digest, data FROM blob WHERE digest IN ({marks})"  # noqa: S608
            with self._lock:  # a batch at a time, so writers are not held up for long
                found.update(self._connection().execute(query, batch))
        return [found.get(key) for key in keys]

    def verify(self, digest: str) -> bool:
        """True when the blob exists and its bytes still hash to its digest."""
        data = self.get(digest)
        return data is not None and hashlib.sha256(data).hexdigest() == digest

    def delete(self, digest: str) -> bool:
        """Remove a blob (erasure); True when one was removed.

        With ``secure_delete`` the freed space is overwritten; the checkpoint then copies the
        overwritten page into the database file and empties the log that still held the old
        one. A checkpoint can only finish while no other connection reads: when one does,
        the log is emptied by a later checkpoint (the content is unreadable either way, its
        keys having gone first).
        """
        key = _key(digest)
        with self._lock:
            db = self._connection()
            removed = db.execute("DELETE FROM blob WHERE digest = ?", (key,)).rowcount > 0
            if removed:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return removed

    def partition(self, parts: int) -> list[tuple[int, int]]:
        """Up to ``parts`` disjoint ranges of row ids that together hold every blob stored
        now (the last range also takes whatever is stored later): for ``scan``."""
        with self._lock:
            (top,) = self._connection().execute("SELECT max(id) FROM blob").fetchone()
        bounds = sorted({(top or 0) * i // parts for i in range(parts)})
        return list(zip(bounds, [*bounds[1:], _NO_ID], strict=True))

    def scan(self, part: tuple[int, int]) -> Iterator[tuple[str, bytes]]:
        """Every blob whose row id is in ``part`` (low excluded, high included), as (digest,
        bytes), in storage order: ``rekam verify`` hashes every blob, a range per worker."""
        low, high = part
        while low < high:
            with self._lock:  # a batch at a time, so writers are not held up for long
                rows = (
                    self._connection()
                    .execute(
                        "SELECT id, digest, data FROM blob WHERE id > ? AND id <= ? ORDER BY id"
                        " LIMIT ?",
                        (low, high, _READ_BATCH),
                    )
                    .fetchall()
                )
            if not rows:
                return
            for _, key, data in rows:
                yield key.hex(), data
            low = rows[-1][0]

    def iter_digests(self) -> Iterator[str]:
        """Every stored digest, in sorted order."""
        with self._lock:
            keys = self._connection().execute("SELECT digest FROM blob ORDER BY digest").fetchall()
        for (key,) in keys:
            yield bytes(key).hex()

    def import_directory(self, folder: Path) -> int:
        """Move the content of a blob directory (the first format) into this store.

        The directory holds ``ab/cd/<digest>`` files. Each one's bytes are stored under the
        digest its name gives, without re-hashing: damaged content stays damaged, for
        ``rekam verify`` to find. Temporary files of interrupted writes are dropped. The rows
        are committed in one transaction before the directory is removed, so an interrupted
        import is simply done again. Returns how many blobs were imported.
        """
        files = list(_directory_blobs(folder))
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                for name, path in files:
                    db.execute(
                        "INSERT INTO blob (digest, data) VALUES (?, ?)"
                        " ON CONFLICT (digest) DO NOTHING",
                        (bytes.fromhex(name), path.read_bytes()),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        shutil.rmtree(folder)
        fsync_dir(folder.parent)
        return len(files)

    def close(self) -> None:
        """Close this process's connection (a later call opens a new one)."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None and self._pid == os.getpid():
                db.close()


# The upper bound of the last range ``partition`` gives: SQLite's largest row id.
_NO_ID = 2**63 - 1
# The stores unpickled in this process, by path.
_UNPICKLED: dict[Path, SqliteBlobStore] = {}


def _in_this_process(path: Path) -> SqliteBlobStore:
    """What a pickled store becomes: one store per path in each process, so that the tasks
    sent to a worker process share its connection instead of opening one each."""
    store = _UNPICKLED.get(path)
    if store is None:
        store = _UNPICKLED[path] = SqliteBlobStore(path)
    return store


def _directory_blobs(folder: Path) -> Iterator[tuple[str, Path]]:
    """The ``(digest, path)`` of every blob file in a first-format blob directory."""
    for first in sorted(folder.iterdir()):
        if not (first.is_dir() and _SHARD.fullmatch(first.name)):
            continue
        for second in sorted(first.iterdir()):
            if not (second.is_dir() and _SHARD.fullmatch(second.name)):
                continue
            for path in sorted(second.iterdir()):
                name = path.name
                if (
                    _DIGEST.fullmatch(name)
                    and name[:2] == first.name
                    and name[2:4] == second.name
                    and path.is_file()
                ):
                    yield name, path
