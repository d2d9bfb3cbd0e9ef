"""SqliteBlobStore: content addressing, durable writes, erasure, formats, scans, migration."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import sqlite3
import stat
import sys
from contextlib import closing
from pathlib import Path

import pytest
from tests.blob_rows import tamper_blob, write_first_format

from rekam.blobs import FORMAT, BlobStoreFormatError, SqliteBlobStore


def _store(tmp_path: Path) -> SqliteBlobStore:
    return SqliteBlobStore(tmp_path / "content.db")


def test_put_get_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = b"\x00ciphertext\xff" * 100
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get(digest) == data
    for name in ("content.db", "content.db-wal", "content.db-shm"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    store.close()
    assert SqliteBlobStore(tmp_path / "content.db").get(digest) == data  # durable


def test_put_is_idempotent_and_empty_data_works(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.put(b"same") == store.put(b"same")
    empty = store.put(b"")
    assert store.get(empty) == b""
    assert sorted(store.iter_digests()) == sorted([empty, hashlib.sha256(b"same").hexdigest()])


def test_put_repairs_damaged_content(tmp_path: Path) -> None:
    """Storing content again replaces whatever damaged bytes are stored under its digest."""
    store = _store(tmp_path)
    digest = store.put(b"original")
    tamper_blob(tmp_path / "content.db", digest, b"tampered")
    assert not store.verify(digest)
    assert store.put(b"original") == digest
    assert store.get(digest) == b"original"


def test_large_blob(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(5 * 1024 * 1024 + 7)
    digest = store.put(data)
    assert store.get(digest) == data
    assert store.verify(digest)


def test_missing_blob(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.get("0" * 64) is None
    assert not store.verify("0" * 64)
    assert store.delete("0" * 64) is False


def test_get_many_in_the_order_given(tmp_path: Path) -> None:
    store = _store(tmp_path)
    digests = [store.put(f"blob {i}".encode()) for i in range(1203)]  # several batches
    absent = hashlib.sha256(b"never stored").hexdigest()
    asked = [*reversed(digests), absent, digests[0]]
    expected = [*(f"blob {i}".encode() for i in reversed(range(1203))), None, b"blob 0"]
    assert store.get_many(asked) == expected
    assert store.get_many([]) == []


def test_delete_erases_the_bytes_from_the_files(tmp_path: Path) -> None:
    """Erasure leaves the deleted bytes neither in the database file nor in its log."""
    store = _store(tmp_path)
    keep = store.put(b"keep")
    marker = b"ERASE-ME-" + os.urandom(16).hex().encode()
    gone = store.put(marker * 50)
    assert store.delete(gone) is True
    assert store.get(gone) is None
    assert store.delete(gone) is False
    assert list(store.iter_digests()) == [keep]
    for path in tmp_path.iterdir():
        assert marker not in path.read_bytes(), path.name


def test_verify_detects_tampering(tmp_path: Path) -> None:
    store = _store(tmp_path)
    digest = store.put(b"original")
    assert store.verify(digest)
    tamper_blob(tmp_path / "content.db", digest, b"tampered")
    assert store.get(digest) == b"tampered"  # get does not check ...
    assert not store.verify(digest)  # ... verify does


@pytest.mark.parametrize(
    "digest",
    [
        "../" * 20 + "etc/passwd",
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "a" * 64 + "\n",
        "a" * 62 + " a",
        "",
        "g" * 64,
    ],
)
def test_digests_that_are_not_sha256_hex_are_refused(tmp_path: Path, digest: str) -> None:
    store = _store(tmp_path)
    for call in (store.get, store.delete, store.verify):
        with pytest.raises(ValueError):
            call(digest)
    with pytest.raises(ValueError):
        store.get_many(["0" * 64, digest])
    with pytest.raises(ValueError):
        store.get(None)  # type: ignore[arg-type]


def test_a_failed_write_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write whose commit fails leaves no row, and a retry works."""
    store = _store(tmp_path)
    ok = store.put(b"before")
    with closing(sqlite3.connect(tmp_path / "content.db", timeout=0)) as other:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        monkeypatch.setattr("rekam.blobs._sqlite._BUSY_SECONDS", 0.0)
        locked = SqliteBlobStore(tmp_path / "content.db")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            locked.put(b"never stored")
        other.execute("ROLLBACK")
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert store.get(digest) is None
    assert list(store.iter_digests()) == [ok]
    assert store.put(b"never stored") == digest


def test_a_newer_format_or_another_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "content.db"
    SqliteBlobStore(path).close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (FORMAT,)
        db.execute(f"PRAGMA user_version = {FORMAT + 1}")
    with pytest.raises(BlobStoreFormatError, match=f"format {FORMAT + 1}"):
        SqliteBlobStore(path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(BlobStoreFormatError, match="not a Rekam content file"):
        SqliteBlobStore(junk)


def test_partitioned_scan_reads_every_blob_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    stored = {store.put(f"blob {i}".encode()): f"blob {i}".encode() for i in range(1234)}
    for gone in list(stored)[::7]:
        store.delete(gone)
        del stored[gone]
    for parts in (1, 2, 4, 5000):
        ranges = store.partition(parts)
        assert 1 <= len(ranges) <= parts
        scanned = [pair for part in ranges for pair in store.scan(part)]
        assert len(scanned) == len(stored)
        assert dict(scanned) == stored
    empty = _store(tmp_path / "empty")
    assert [list(empty.scan(part)) for part in empty.partition(4)] == [[]]


def test_the_last_part_takes_blobs_stored_after_partitioning(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = store.put(b"first")
    parts = store.partition(2)
    later = store.put(b"later")
    assert {d for part in parts for d, _ in store.scan(part)} == {first, later}


def _read_in_child(store: SqliteBlobStore, digest: str, out: multiprocessing.Queue[bytes]) -> None:
    out.put(store.get(digest) or b"")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is Linux-only here")
def test_a_forked_process_and_a_pickled_copy_open_their_own_connection(tmp_path: Path) -> None:
    store = _store(tmp_path)
    digest = store.put(b"shared")
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[bytes] = context.Queue()
    child = context.Process(target=_read_in_child, args=(store, digest, out))
    child.start()
    assert out.get(timeout=30) == b"shared"
    child.join(30)
    assert child.exitcode == 0
    assert store.get(digest) == b"shared"  # the parent's connection is untouched
    copy = pickle.loads(pickle.dumps(store))
    assert copy is pickle.loads(pickle.dumps(store))  # one store per path in a process
    assert copy.get(digest) == b"shared"


def test_import_of_a_blob_directory(tmp_path: Path) -> None:
    """Every blob moves over as it is (damaged ones stay damaged); the folder goes."""
    good = {hashlib.sha256(b"a").hexdigest(): b"a", hashlib.sha256(b"b").hexdigest(): b"b"}
    damaged = hashlib.sha256(b"c").hexdigest()
    folder = write_first_format(tmp_path, {**good, damaged: b"not c"})
    shard = folder / damaged[:2] / damaged[2:4]
    (shard / ".tmp-0123").write_bytes(b"an interrupted write")
    (shard / ("f" * 64)).write_bytes(b"in the wrong folder")
    store = _store(tmp_path)
    assert store.import_directory(folder) == 3
    assert not folder.exists()
    assert sorted(store.iter_digests()) == sorted([*good, damaged])
    assert all(store.get(d) == data for d, data in good.items())
    assert store.get(damaged) == b"not c"
    assert not store.verify(damaged)
    # An interrupted import (the folder still there) is simply done again.
    again = write_first_format(tmp_path, good)
    assert store.import_directory(again) == 2
    assert sorted(store.iter_digests()) == sorted([*good, damaged])
