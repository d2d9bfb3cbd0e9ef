"""DirectoryBlobStore: content addressing, atomic durable writes, erasure, path safety."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from rekam.blobs import TEMP_PREFIX, DirectoryBlobStore


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_get_round_trip(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path / "blobs")
    data = b"\x00ciphertext\xff" * 100
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get(digest) == data
    path = tmp_path / "blobs" / digest[:2] / digest[2:4] / digest
    assert store.path_of(digest) == path
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _files(tmp_path / "blobs") == [f"{digest[:2]}/{digest[2:4]}/{digest}"]


def test_put_is_idempotent_and_empty_data_works(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    assert store.put(b"same") == store.put(b"same")
    empty = store.put(b"")
    assert store.get(empty) == b""
    assert len(_files(tmp_path)) == 2


def test_large_blob(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    data = os.urandom(5 * 1024 * 1024 + 7)
    digest = store.put(data)
    assert store.get(digest) == data
    assert store.verify(digest)


def test_missing_blob(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    assert store.get("0" * 64) is None
    assert not store.verify("0" * 64)
    assert store.delete("0" * 64) is False


def test_delete_erases(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    keep = store.put(b"keep")
    gone = store.put(b"erase me")
    assert store.delete(gone) is True
    assert store.get(gone) is None
    assert not store.path_of(gone).exists()
    assert store.delete(gone) is False
    assert list(store.iter_digests()) == [keep]


def test_iter_digests_lists_only_blobs(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    digests = sorted(store.put(f"blob {i}".encode()) for i in range(20))
    some = digests[0]
    shard = tmp_path / some[:2] / some[2:4]
    (shard / f"{TEMP_PREFIX}leftover").write_bytes(b"partial")
    (shard / "README").write_text("not a blob")
    misplaced = "f" * 64
    (shard / misplaced).write_bytes(b"wrong folder")
    (tmp_path / "zz").mkdir()
    (tmp_path / ".lock").write_text("")
    assert list(store.iter_digests()) == digests
    assert list(DirectoryBlobStore(tmp_path / "new").iter_digests()) == []


def test_verify_detects_tampering(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    digest = store.put(b"original")
    assert store.verify(digest)
    store.path_of(digest).write_bytes(b"tampered")
    assert store.get(digest) == b"tampered"  # get does not check ...
    assert not store.verify(digest)  # ... verify does


@pytest.mark.parametrize(
    "digest",
    [
        "../" * 20 + "etc/passwd",
        "/etc/passwd",
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "a" * 64 + "\n",
        "a" * 62 + "/.",
        "..",
        "",
        "g" * 64,
    ],
)
def test_digests_that_are_not_sha256_hex_are_refused(tmp_path: Path, digest: str) -> None:
    store = DirectoryBlobStore(tmp_path)
    for call in (store.get, store.delete, store.verify, store.path_of):
        with pytest.raises(ValueError):
            call(digest)
    with pytest.raises(ValueError):
        store.get(None)  # type: ignore[arg-type]


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryBlobStore(tmp_path)
    ok = store.put(b"before")
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(5, "simulated I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated"):
        store.put(b"never stored")
    monkeypatch.undo()
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert store.get(digest) is None
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert leftovers == []
    assert list(store.iter_digests()) == [ok]
    assert store.put(b"never stored") == digest  # and a retry works


def test_a_failed_rename_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryBlobStore(tmp_path)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "simulated full disk")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="full disk"):
        store.put(b"data")
    assert _files(tmp_path) == []


def test_clean_temp_removes_only_old_leftovers(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    digest = store.put(b"blob")
    shard = store.path_of(digest).parent
    old = shard / f"{TEMP_PREFIX}old"
    fresh = shard / f"{TEMP_PREFIX}fresh"
    old.write_bytes(b"crashed write")
    fresh.write_bytes(b"write in progress")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert store.clean_temp(older_than=3600) == 1
    assert not old.exists()
    assert fresh.exists()
    assert store.get(digest) == b"blob"
    assert store.clean_temp(older_than=0) == 1
    assert _files(tmp_path) == [str(store.path_of(digest).relative_to(tmp_path))]


def test_root_is_created(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "blobs"
    store = DirectoryBlobStore(root)
    assert root.is_dir()
    digest = store.put(b"x")
    assert DirectoryBlobStore(root).get(digest) == b"x"
