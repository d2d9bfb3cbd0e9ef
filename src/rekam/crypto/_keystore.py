"""Private keys at rest: a JSON file sealed with AES-256-GCM under an Argon2id passphrase key.

File layout (canonical JSON, one line)::

    {"aead": "aes-256-gcm", "ciphertext": B64, "format": "rekam-keystore/1",
     "kdf": {"iterations": N, "lanes": N, "memory_kib": N, "name": "argon2id", "salt": B64},
     "label": STR, "nonce": B64}

The plaintext is canonical JSON mapping each secret's name to its base64url bytes. The AAD is
the canonical JSON of everything else except nonce and ciphertext (format, kdf incl. salt,
aead, label), so editing any of it, e.g. weakening the KDF parameters or swapping labels
between files, makes decryption fail. The label is public: never put secrets in it.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _random
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from rekam._files import fsync_dir
from rekam.crypto._errors import DecryptionError, KeyFormatError
from rekam.encoding import CanonicalError, b64d, b64e, canonical, parse

FORMAT = "rekam-keystore/1"
_KDF_NAME = "argon2id"
_AEAD_NAME = "aes-256-gcm"
_SALT_SIZE = 16
_NONCE_SIZE = 12
_KEY_SIZE = 32
_TAG_SIZE = 16
_FILE_MODE = 0o600
# Keystores hold a handful of keys; refusing anything larger stops a stray multi-gigabyte file
# from being read into memory.
_MAX_FILE_SIZE = 1 << 20

# Parameters come from the file, so they are bounded: a planted or corrupted file must not be
# able to demand gigabytes of RAM or hours of CPU before the tag check rejects it, and writers
# must not be able to choose a uselessly weak KDF.
_MIN_MEMORY_KIB = 8 * 1024
_MAX_MEMORY_KIB = 1024 * 1024
_MAX_ITERATIONS = 64
_MAX_LANES = 16


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters; stored in each keystore so every file opens with its own."""

    memory_kib: int
    iterations: int
    lanes: int

    def __post_init__(self) -> None:
        for name in ("memory_kib", "iterations", "lanes"):
            if type(getattr(self, name)) is not int:
                raise ValueError(f"KdfParams.{name} must be an int")
        if not _MIN_MEMORY_KIB <= self.memory_kib <= _MAX_MEMORY_KIB:
            raise ValueError(
                f"KdfParams.memory_kib must be within {_MIN_MEMORY_KIB}..{_MAX_MEMORY_KIB}"
            )
        if not 1 <= self.iterations <= _MAX_ITERATIONS:
            raise ValueError(f"KdfParams.iterations must be within 1..{_MAX_ITERATIONS}")
        if not 1 <= self.lanes <= _MAX_LANES:
            raise ValueError(f"KdfParams.lanes must be within 1..{_MAX_LANES}")

    @classmethod
    def default(cls) -> KdfParams:
        """Production cost: Argon2id with 64 MiB, 3 passes, 4 lanes (about 0.2 s here)."""
        # RFC 9106 section 4's second recommended option (64 MiB, t=3, p=4).
        return cls(memory_kib=64 * 1024, iterations=3, lanes=4)

    @classmethod
    def fast(cls) -> KdfParams:
        """Cheap parameters for tests and demos only (8 MiB, 1 pass, 1 lane)."""
        return cls(memory_kib=8 * 1024, iterations=1, lanes=1)


def _passphrase_bytes(passphrase: str) -> bytes:
    # NFC so the same passphrase typed on systems that compose accents differently still
    # derives the same key.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _derive(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    return Argon2id(
        salt=salt,
        length=_KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    ).derive(_passphrase_bytes(passphrase))


def _kdf_header(salt: bytes, params: KdfParams) -> dict[str, Any]:
    return {
        "name": _KDF_NAME,
        "salt": b64e(salt),
        "memory_kib": params.memory_kib,
        "iterations": params.iterations,
        "lanes": params.lanes,
    }


def _aad(kdf: Mapping[str, Any], label: str) -> bytes:
    return canonical({"format": FORMAT, "kdf": dict(kdf), "aead": _AEAD_NAME, "label": label})


def _atomic_write(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write ``data`` to ``path`` all-or-nothing, mode 0600; ``exclusive`` refuses to replace."""
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        # mkstemp already creates 0600; set it explicitly so the guarantee is visible here.
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            # link() fails if the target exists, making "create only if absent" atomic.
            os.link(tmp, path)
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def _check_passphrase(passphrase: str) -> None:
    if not isinstance(passphrase, str):
        raise TypeError("passphrase must be a str")
    if not passphrase:
        raise ValueError("refusing to protect a keystore with an empty passphrase")


def _encode(passphrase: str, secrets: Mapping[str, bytes], params: KdfParams, label: str) -> bytes:
    _check_passphrase(passphrase)
    if not isinstance(label, str):
        raise TypeError("label must be a str")
    plain: dict[str, str] = {}
    for name, value in secrets.items():
        if not isinstance(name, str) or type(value) is not bytes:
            raise TypeError("keystore secrets must map str names to bytes")
        plain[name] = b64e(value)
    salt = _random.token_bytes(_SALT_SIZE)
    kdf = _kdf_header(salt, params)
    key = _derive(passphrase, salt, params)
    nonce = _random.token_bytes(_NONCE_SIZE)
    ciphertext = AESGCM(key).encrypt(nonce, canonical(plain), _aad(kdf, label))
    document = {
        "format": FORMAT,
        "kdf": kdf,
        "aead": _AEAD_NAME,
        "nonce": b64e(nonce),
        "ciphertext": b64e(ciphertext),
        "label": label,
    }
    return canonical(document) + b"\n"


def write_keystore_file(
    path: Path,
    passphrase: str,
    secrets: Mapping[str, bytes],
    params: KdfParams | None,
    label: str,
    *,
    exclusive: bool,
) -> None:
    """Encrypt and atomically write a keystore; ``exclusive`` refuses an existing file."""
    data = _encode(passphrase, secrets, params or KdfParams.default(), label)
    _atomic_write(Path(path), data, exclusive=exclusive)


def write_keystore(
    path: Path,
    passphrase: str,
    secrets: Mapping[str, bytes],
    params: KdfParams | None = None,
    label: str = "",
) -> None:
    """Encrypt ``secrets`` under ``passphrase`` and atomically (re)place the file at ``path``.

    The file gets mode 0600. An empty passphrase raises ValueError. ``label`` is stored in clear.
    """
    write_keystore_file(path, passphrase, secrets, params, label, exclusive=False)


def _field(document: Mapping[str, Any], name: str, kind: type) -> Any:
    value = document.get(name)
    if type(value) is not kind:
        raise KeyFormatError(f"keystore field {name!r} is missing or not a {kind.__name__}")
    return value


def _bytes_field(document: Mapping[str, Any], name: str) -> bytes:
    try:
        return b64d(_field(document, name, str))
    except CanonicalError:
        raise KeyFormatError(f"keystore field {name!r} is not base64url") from None


@dataclass(frozen=True)
class _Opened:
    secrets: dict[str, bytes]
    params: KdfParams
    label: str


def _read(path: Path, passphrase: str) -> _Opened:
    with Path(path).open("rb") as handle:
        data = handle.read(_MAX_FILE_SIZE + 1)
    if len(data) > _MAX_FILE_SIZE:
        raise KeyFormatError("file is too large to be a keystore")
    try:
        document = parse(data)
    except CanonicalError:
        raise KeyFormatError("not a keystore: not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeyFormatError(f"not a keystore: format is not {FORMAT!r}")
    if set(document) != {"format", "kdf", "aead", "nonce", "ciphertext", "label"}:
        raise KeyFormatError("keystore has missing or unexpected fields")
    if document["aead"] != _AEAD_NAME:
        raise KeyFormatError(f"keystore aead is not {_AEAD_NAME!r}")
    kdf = _field(document, "kdf", dict)
    if set(kdf) != {"name", "salt", "memory_kib", "iterations", "lanes"}:
        raise KeyFormatError("keystore kdf has missing or unexpected fields")
    if kdf["name"] != _KDF_NAME:
        raise KeyFormatError(f"keystore kdf is not {_KDF_NAME!r}")
    salt = _bytes_field(kdf, "salt")
    if len(salt) < _SALT_SIZE:
        raise KeyFormatError("keystore salt is too short")
    try:
        params = KdfParams(kdf["memory_kib"], kdf["iterations"], kdf["lanes"])
    except ValueError as exc:
        raise KeyFormatError(f"keystore kdf parameters rejected: {exc}") from None
    label = _field(document, "label", str)
    nonce = _bytes_field(document, "nonce")
    ciphertext = _bytes_field(document, "ciphertext")
    if len(nonce) != _NONCE_SIZE or len(ciphertext) < _TAG_SIZE:
        raise KeyFormatError("keystore nonce or ciphertext has the wrong size")
    if not isinstance(passphrase, str):
        raise TypeError("passphrase must be a str")

    key = _derive(passphrase, salt, params)
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, _aad(kdf, label))
    except InvalidTag:
        raise DecryptionError() from None

    # Past the tag check the content is what a writer produced; a bad shape here means the
    # writer was broken, not that the passphrase was wrong.
    try:
        plain = parse(plaintext)
        if not isinstance(plain, dict) or not all(isinstance(v, str) for v in plain.values()):
            raise KeyFormatError("keystore content is not a map of base64url secrets")
        secrets = {name: b64d(value) for name, value in plain.items()}
    except CanonicalError:
        raise KeyFormatError("keystore content is not a map of base64url secrets") from None
    return _Opened(secrets, params, label)


def read_keystore(path: Path, passphrase: str) -> dict[str, bytes]:
    """Decrypt a keystore; DecryptionError for a wrong passphrase or any tampering.

    KeyFormatError when the file is not a keystore at all; OSError if it cannot be read.
    """
    return _read(path, passphrase).secrets


def change_passphrase(path: Path, old: str, new: str) -> None:
    """Re-encrypt a keystore under a new passphrase, keeping its secrets, KDF params and label.

    A fresh salt and nonce are drawn; the file is replaced atomically.
    """
    _check_passphrase(new)
    opened = _read(path, old)
    write_keystore_file(path, new, opened.secrets, opened.params, opened.label, exclusive=False)
