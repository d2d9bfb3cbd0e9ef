"""Signer references: every URI form, the refusals, and identities that keep secrets inside."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from rekam.crypto import (
    SUITE_HYBRID,
    SUITE_X25519,
    DecryptionError,
    Ed25519Signer,
    Identity,
    KdfParams,
    KeyFormatError,
    Signer,
    SignerError,
    generate_encryption_key,
    generate_signing_seed,
    load_identity,
    new_identity_keystore,
    read_keystore,
    verify_signature,
    wrap_key,
    write_keystore,
)
from rekam.encoding import b64e, canonical

FAST = KdfParams.fast()
PASSPHRASE = "long enough passphrase"


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    keys = tmp_path / "keys"
    keys.mkdir()
    sign_public, enc_public = new_identity_keystore(
        keys / "node.keystore", PASSPHRASE, FAST, label="node-1"
    )
    return tmp_path, sign_public, enc_public


def _check(identity: Identity, sign_public: bytes, enc_public: bytes) -> None:
    assert identity.sign_public == sign_public
    assert identity.enc_public == enc_public
    assert isinstance(identity.signer, Signer)
    message = b"block header"
    assert verify_signature(sign_public, message, identity.signer.sign(message))
    wrapped = wrap_key(b"d" * 32, enc_public, b"record:1/v1")
    assert identity.unwrap(wrapped, b"record:1/v1") == b"d" * 32
    with pytest.raises(DecryptionError):
        identity.unwrap(wrapped, b"record:1/v2")


def _passphrase_file(path: Path, content: str, mode: int = 0o600) -> None:
    path.write_text(content)
    path.chmod(mode)


def _env_value(seed: bytes, enc_private: bytes) -> str:
    return b64e(canonical({"sign": b64e(seed), "enc": b64e(enc_private)}))


def test_new_identity_keystore_contents(store: tuple[Path, bytes, bytes]) -> None:
    base, _, enc_public = store
    secrets = read_keystore(base / "keys" / "node.keystore", PASSPHRASE)
    assert set(secrets) == {"sign", "enc"}
    assert len(secrets["sign"]) == 32
    assert enc_public[0] == 0x01


def test_new_identity_keystore_refuses_overwrite(store: tuple[Path, bytes, bytes]) -> None:
    base, _, _ = store
    path = base / "keys" / "node.keystore"
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        new_identity_keystore(path, PASSPHRASE, FAST)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["node.keystore"]


def test_keystore_with_passphrase_env(
    store: tuple[Path, bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, sign_public, enc_public = store
    monkeypatch.setenv("NODE_PASSPHRASE", PASSPHRASE)
    identity = load_identity("keystore:keys/node.keystore?passphrase-env=NODE_PASSPHRASE", base)
    _check(identity, sign_public, enc_public)


def test_keystore_with_passphrase_file(store: tuple[Path, bytes, bytes]) -> None:
    base, sign_public, enc_public = store
    _passphrase_file(base / "keys" / "pass.txt", PASSPHRASE + "\n")
    identity = load_identity("keystore:keys/node.keystore?passphrase-file=keys/pass.txt", base)
    _check(identity, sign_public, enc_public)
    (base / "keys" / "pass.txt").chmod(0o400)
    load_identity("keystore:keys/node.keystore?passphrase-file=keys/pass.txt", base)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_passphrase_file_must_be_private(store: tuple[Path, bytes, bytes], mode: int) -> None:
    base, _, _ = store
    _passphrase_file(base / "pass.txt", PASSPHRASE, mode)
    with pytest.raises(SignerError, match="group or others") as caught:
        load_identity("keystore:keys/node.keystore?passphrase-file=pass.txt", base)
    assert PASSPHRASE not in str(caught.value)


@pytest.mark.parametrize("content", ["", "\n"])
def test_empty_passphrase_file(store: tuple[Path, bytes, bytes], content: str) -> None:
    base, _, _ = store
    _passphrase_file(base / "pass.txt", content)
    with pytest.raises(SignerError, match="empty"):
        load_identity("keystore:keys/node.keystore?passphrase-file=pass.txt", base)


def test_passphrase_file_keeps_other_whitespace(store: tuple[Path, bytes, bytes]) -> None:
    base, _, _ = store
    _passphrase_file(base / "pass.txt", PASSPHRASE + " \n")
    with pytest.raises(DecryptionError):
        load_identity("keystore:keys/node.keystore?passphrase-file=pass.txt", base)


def test_keystore_with_explicit_passphrase(store: tuple[Path, bytes, bytes]) -> None:
    base, sign_public, enc_public = store
    identity = load_identity("keystore:keys/node.keystore", base, passphrase=PASSPHRASE)
    _check(identity, sign_public, enc_public)


def test_keystore_absolute_path(store: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    base, sign_public, enc_public = store
    uri = f"keystore:{base / 'keys' / 'node.keystore'}"
    identity = load_identity(uri, tmp_path / "elsewhere", passphrase=PASSPHRASE)
    _check(identity, sign_public, enc_public)


def test_wrong_passphrase_is_decryption_error(store: tuple[Path, bytes, bytes]) -> None:
    base, _, _ = store
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        load_identity("keystore:keys/node.keystore", base, passphrase="nope")


def test_hybrid_identity(tmp_path: Path) -> None:
    sign_public, enc_public = new_identity_keystore(
        tmp_path / "h.keystore", PASSPHRASE, FAST, suite=SUITE_HYBRID
    )
    assert enc_public[0] == 0x02
    identity = load_identity("keystore:h.keystore", tmp_path, passphrase=PASSPHRASE)
    _check(identity, sign_public, enc_public)


@pytest.mark.parametrize("suite", [SUITE_X25519, SUITE_HYBRID])
def test_env_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, suite: str) -> None:
    seed = generate_signing_seed()
    enc_private, enc_public = generate_encryption_key(suite)
    monkeypatch.setenv("REKAM_IDENTITY", _env_value(seed, enc_private))
    identity = load_identity("env:REKAM_IDENTITY", tmp_path)
    _check(identity, Ed25519Signer(seed).public_key, enc_public)


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        b64e(b"not json"),
        b64e(b"[1, 2]"),
        b64e(canonical({"sign": b64e(bytes(32))})),
        b64e(canonical({"sign": b64e(bytes(32)), "enc": "??", "x": "1"})),
        b64e(canonical({"sign": "not base64!", "enc": b64e(bytes(33))})),
    ],
)
def test_env_uri_bad_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    monkeypatch.setenv("REKAM_IDENTITY", value)
    with pytest.raises(SignerError) as caught:
        load_identity("env:REKAM_IDENTITY", tmp_path)
    assert value not in str(caught.value)
    assert caught.value.__cause__ is None


def test_env_uri_bad_key_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    enc_private, _ = generate_encryption_key()
    monkeypatch.setenv("REKAM_IDENTITY", _env_value(bytes(31), enc_private))
    with pytest.raises(KeyFormatError):
        load_identity("env:REKAM_IDENTITY", tmp_path)
    monkeypatch.setenv("REKAM_IDENTITY", _env_value(bytes(32), b"\x07" + bytes(32)))
    with pytest.raises(KeyFormatError):
        load_identity("env:REKAM_IDENTITY", tmp_path)


@pytest.mark.parametrize(
    ("uri", "passphrase", "match"),
    [
        ("keystore:keys/node.keystore", None, "needs"),
        ("keystore:keys/node.keystore?passphrase-env=P", PASSPHRASE, "exactly one"),
        ("keystore:keys/node.keystore?passphrase-env=P&passphrase-file=f", None, "exactly one"),
        ("keystore:keys/node.keystore?passphrase=hunter2", None, "unknown option"),
        ("keystore:keys/node.keystore?passphrase-env", None, "malformed"),
        ("keystore:keys/node.keystore?passphrase-env=", None, "variable name"),
        ("keystore:keys/node.keystore?passphrase-env=REKAM_UNSET_VAR", None, "not set"),
        ("keystore:keys/node.keystore?passphrase-file=", None, "needs a path"),
        ("keystore:keys/node.keystore?passphrase-file=absent.txt", None, "not found"),
        ("keystore:keys/absent.keystore", PASSPHRASE, "not found"),
        ("keystore:", PASSPHRASE, "no path"),
        ("keystore:?passphrase-env=P", None, "no path"),
        ("keystore:keys/node.keystore", "", "non-empty"),
        ("env:", None, "variable name"),
        ("env:REKAM_UNSET_VAR", None, "not set"),
        ("env:REKAM_IDENTITY", PASSPHRASE, "no passphrase"),
        ("file:keys/node.keystore", None, "unknown signer URI scheme 'file'"),
        ("awskms:alias/node", None, "unknown signer URI scheme"),
        ("keys/node.keystore", None, "not a signer URI"),
        ("", None, "not a signer URI"),
    ],
)
def test_bad_uris(
    store: tuple[Path, bytes, bytes],
    monkeypatch: pytest.MonkeyPatch,
    uri: str,
    passphrase: str | None,
    match: str,
) -> None:
    base, _, _ = store
    monkeypatch.delenv("REKAM_UNSET_VAR", raising=False)
    monkeypatch.setenv("P", PASSPHRASE)
    with pytest.raises(SignerError, match=match):
        load_identity(uri, base, passphrase=passphrase)


def test_unknown_scheme_does_not_echo_pasted_secret(tmp_path: Path) -> None:
    secret = b64e(generate_signing_seed())
    with pytest.raises(SignerError) as caught:
        load_identity(secret + ":" + secret, tmp_path)
    assert secret not in str(caught.value)


def test_empty_env_passphrase(
    store: tuple[Path, bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _, _ = store
    monkeypatch.setenv("P", "")
    with pytest.raises(SignerError, match="empty"):
        load_identity("keystore:keys/node.keystore?passphrase-env=P", base)


def test_keystore_missing_entries(tmp_path: Path) -> None:
    write_keystore(tmp_path / "k", PASSPHRASE, {"sign": generate_signing_seed()}, FAST)
    with pytest.raises(SignerError, match="'enc'"):
        load_identity("keystore:k", tmp_path, passphrase=PASSPHRASE)


def test_not_a_keystore(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("{}")
    with pytest.raises(KeyFormatError):
        load_identity("keystore:k", tmp_path, passphrase=PASSPHRASE)


def test_identity_hides_secrets(store: tuple[Path, bytes, bytes]) -> None:
    base, sign_public, _ = store
    identity = load_identity("keystore:keys/node.keystore", base, passphrase=PASSPHRASE)
    secrets = read_keystore(base / "keys" / "node.keystore", PASSPHRASE)
    text = repr(identity) + str(identity) + repr(identity.signer)
    assert sign_public.hex() in text
    assert secrets["sign"].hex() not in text
    assert secrets["enc"].hex() not in text
    assert secrets["enc"][1:].hex()[:16] not in text
    with pytest.raises(TypeError):
        pickle.dumps(identity)
    with pytest.raises(AttributeError):
        identity.signer = Ed25519Signer(generate_signing_seed())  # type: ignore[misc]


def test_identity_rejects_bad_enc_key() -> None:
    with pytest.raises(KeyFormatError):
        Identity(Ed25519Signer(generate_signing_seed()), b"\x01" + bytes(5))
