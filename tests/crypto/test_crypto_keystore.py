"""Passphrase-protected keystores: round trips, tamper detection, parameters and file handling."""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rekam.crypto import (
    DecryptionError,
    KdfParams,
    KeyFormatError,
    change_passphrase,
    read_keystore,
    write_keystore,
)
from rekam.encoding import b64d, b64e

FAST = KdfParams.fast()
SECRETS = {"sign": bytes(range(32)), "enc": b"\x01" + bytes(32), "empty": b""}


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "node.keystore"
    write_keystore(path, "correct horse", SECRETS, FAST, label="clinic-a node 1")
    return path


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _save(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document))


def test_roundtrip(keystore: Path) -> None:
    assert read_keystore(keystore, "correct horse") == SECRETS


def test_file_layout(keystore: Path) -> None:
    document = _load(keystore)
    assert set(document) == {"format", "kdf", "aead", "nonce", "ciphertext", "label"}
    assert document["format"] == "rekam-keystore/1"
    assert document["aead"] == "aes-256-gcm"
    assert document["label"] == "clinic-a node 1"
    kdf = document["kdf"]
    assert kdf["name"] == "argon2id"
    assert (kdf["memory_kib"], kdf["iterations"], kdf["lanes"]) == (8192, 1, 1)
    assert len(b64d(kdf["salt"])) == 16
    assert len(b64d(document["nonce"])) == 12
    raw = keystore.read_text()
    for value in SECRETS.values():
        if value:
            assert b64e(value) not in raw


def test_mode_0600_despite_umask(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "k.json"
    write_keystore(path, "pw", SECRETS, FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    write_keystore(path, "pw", SECRETS, FAST)  # replacing resets the mode as well
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    write_keystore(path, "pw", {"a": b"1"}, FAST)
    write_keystore(path, "pw", {"a": b"2"}, FAST)
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]
    assert read_keystore(path, "pw") == {"a": b"2"}


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    write_keystore(path, "pw", {"a": b"1"}, FAST)
    with pytest.raises(TypeError):
        write_keystore(path, "pw", {"a": "not bytes"}, FAST)  # type: ignore[dict-item]
    assert read_keystore(path, "pw") == {"a": b"1"}
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]


def test_wrong_passphrase(keystore: Path) -> None:
    for wrong in ("correct horsE", "correct horse ", "", "x" * 1000):
        with pytest.raises(DecryptionError) as caught:
            read_keystore(keystore, wrong)
        assert str(caught.value) == "decryption failed"
        assert caught.value.__cause__ is None


def _tamper_char(text: str) -> str:
    # Swap the first character for another valid base64url character.
    return ("B" if text[0] == "A" else "A") + text[1:]


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(ciphertext=_tamper_char(d["ciphertext"])),
        lambda d: d.update(nonce=_tamper_char(d["nonce"])),
        lambda d: d.update(label="clinic-b node 1"),
        lambda d: d.update(label=""),
        lambda d: d["kdf"].update(salt=_tamper_char(d["kdf"]["salt"])),
        lambda d: d["kdf"].update(iterations=2),
        lambda d: d["kdf"].update(memory_kib=16384),
        lambda d: d["kdf"].update(lanes=2),
    ],
)
def test_tampering_is_decryption_error(keystore: Path, edit: Any) -> None:
    document = _load(keystore)
    edit(document)
    _save(keystore, document)
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        read_keystore(keystore, "correct horse")


def test_every_ciphertext_byte_change_fails(keystore: Path) -> None:
    document = _load(keystore)
    raw = b64d(document["ciphertext"])
    for index in range(len(raw)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        document["ciphertext"] = b64e(bytes(tampered))
        _save(keystore, document)
        with pytest.raises(DecryptionError):
            read_keystore(keystore, "correct horse")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "something-else"}',
        b'{"format": "rekam-keystore/1"}',
    ],
)
def test_not_a_keystore(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    with pytest.raises(KeyFormatError):
        read_keystore(path, "pw")


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(format="rekam-keystore/2"),
        lambda d: d.update(aead="chacha20-poly1305"),
        lambda d: d.pop("label"),
        lambda d: d.update(extra=1),
        lambda d: d.update(nonce="not base64!"),
        lambda d: d.update(nonce=b64e(bytes(11))),
        lambda d: d.update(ciphertext=b64e(bytes(15))),
        lambda d: d.update(label=7),
        lambda d: d["kdf"].update(name="scrypt"),
        lambda d: d["kdf"].update(salt=b64e(bytes(4))),
        lambda d: d["kdf"].update(memory_kib=1 << 40),  # would demand a petabyte of RAM
        lambda d: d["kdf"].update(memory_kib=8),
        lambda d: d["kdf"].update(iterations=0),
        lambda d: d["kdf"].update(iterations=10**6),
        lambda d: d["kdf"].update(lanes="4"),
    ],
)
def test_malformed_fields_are_key_format_errors(keystore: Path, edit: Any) -> None:
    document = _load(keystore)
    edit(document)
    _save(keystore, document)
    with pytest.raises(KeyFormatError):
        read_keystore(keystore, "correct horse")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_keystore(tmp_path / "absent", "pw")


def test_empty_passphrase_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty passphrase"):
        write_keystore(tmp_path / "k.json", "", SECRETS, FAST)
    assert not list(tmp_path.iterdir())


def test_params_travel_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    params = KdfParams(memory_kib=16384, iterations=2, lanes=2)
    write_keystore(path, "pw", SECRETS, params)
    kdf = _load(path)["kdf"]
    assert (kdf["memory_kib"], kdf["iterations"], kdf["lanes"]) == (16384, 2, 2)
    assert read_keystore(path, "pw") == SECRETS


def test_default_params(tmp_path: Path) -> None:
    assert KdfParams.default() == KdfParams(memory_kib=65536, iterations=3, lanes=4)
    path = tmp_path / "k.json"
    write_keystore(path, "pw", {"a": b"1"})  # default params when none are given
    assert _load(path)["kdf"]["memory_kib"] == 65536
    assert read_keystore(path, "pw") == {"a": b"1"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory_kib": 1024, "iterations": 1, "lanes": 1},
        {"memory_kib": 8192, "iterations": 0, "lanes": 1},
        {"memory_kib": 8192, "iterations": 1, "lanes": 0},
        {"memory_kib": 8192, "iterations": 1, "lanes": 100},
        {"memory_kib": 8192.0, "iterations": 1, "lanes": 1},
        {"memory_kib": 8192, "iterations": True, "lanes": 1},
    ],
)
def test_kdf_params_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KdfParams(**kwargs)


def test_unicode_passphrase_is_normalised(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    composed = "caf\u00e9 \u0101"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    write_keystore(path, composed, SECRETS, FAST)
    assert read_keystore(path, decomposed) == SECRETS


def test_change_passphrase(keystore: Path) -> None:
    before = _load(keystore)
    change_passphrase(keystore, "correct horse", "battery staple")
    after = _load(keystore)
    assert read_keystore(keystore, "battery staple") == SECRETS
    with pytest.raises(DecryptionError):
        read_keystore(keystore, "correct horse")
    assert after["label"] == before["label"]
    assert {k: v for k, v in after["kdf"].items() if k != "salt"} == {
        k: v for k, v in before["kdf"].items() if k != "salt"
    }
    assert after["kdf"]["salt"] != before["kdf"]["salt"]
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600


def test_change_passphrase_wrong_old_keeps_file(keystore: Path) -> None:
    before = keystore.read_bytes()
    with pytest.raises(DecryptionError):
        change_passphrase(keystore, "wrong", "new")
    with pytest.raises(ValueError):
        change_passphrase(keystore, "correct horse", "")
    assert keystore.read_bytes() == before
