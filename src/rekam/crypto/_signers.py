"""Signer references: resolve a URI to an identity, so domain code never sees private key bytes.

URI forms (``base_dir`` anchors relative paths):

* ``keystore:RELPATH?passphrase-env=VAR`` - passphrase from environment variable VAR;
* ``keystore:RELPATH?passphrase-file=RELPATH`` - passphrase from a file only its owner can
  access (mode 0600 or 0400; one trailing newline is ignored);
* ``keystore:RELPATH`` - passphrase passed to ``load_identity(..., passphrase=...)``;
* ``env:VAR`` - VAR holds base64url of the JSON ``{"enc": B64, "sign": B64}`` (for containers
  and tests; the keys are then only as safe as the process environment).

A keystore holds the Ed25519 seed under ``"sign"`` and the HPKE private key under ``"enc"``.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl

from rekam.crypto._errors import SignerError
from rekam.crypto._hpke import (
    SUITE_X25519,
    encryption_public_key,
    generate_encryption_key,
    unwrap_key,
)
from rekam.crypto._keystore import KdfParams, read_keystore, write_keystore_file
from rekam.crypto._signing import (
    Ed25519Signer,
    Signer,
    generate_signing_seed,
    signing_public_key,
)
from rekam.encoding import CanonicalError, b64d, parse

_SIGN_ENTRY = "sign"
_ENC_ENTRY = "enc"

_OPT_ENV = "passphrase-env"
_OPT_FILE = "passphrase-file"
_MAX_PHRASE_FILE_SIZE = 64 * 1024
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, repr=False, eq=False)
class Identity:
    """A participant's signer plus its HPKE decryption key, loaded from a signer reference.

    The encryption private key stays inside: callers unwrap through ``unwrap``. Equality is
    identity, so no code path compares secret bytes.
    """

    signer: Signer
    _enc_private: bytes
    _enc_public: bytes = field(init=False)

    def __post_init__(self) -> None:
        # Derived once up front: this also validates the private key at load time rather than
        # at the first unwrap.
        object.__setattr__(self, "_enc_public", encryption_public_key(self._enc_private))

    @property
    def sign_public(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self.signer.public_key

    @property
    def enc_public(self) -> bytes:
        """The suite-prefixed HPKE public key others wrap record keys to."""
        return self._enc_public

    def unwrap(self, wrapped: bytes, info: bytes) -> bytes:
        """Unwrap a data key wrapped to this identity; DecryptionError on any failure."""
        return unwrap_key(wrapped, self._enc_private, info)

    def __repr__(self) -> str:
        return (
            f"Identity(sign_public={self.sign_public.hex()}, "
            f"enc_public={self._enc_public[:9].hex()}...)"
        )

    def __reduce__(self) -> NoReturn:
        # Pickling would copy the private keys into whatever stores the pickle.
        raise TypeError("Identity holds private keys and cannot be pickled")


def _identity(secrets: dict[str, bytes], source: str) -> Identity:
    missing = [name for name in (_SIGN_ENTRY, _ENC_ENTRY) if name not in secrets]
    if missing:
        raise SignerError(f"{source} has no {' or '.join(map(repr, missing))} secret")
    return Identity(Ed25519Signer(secrets[_SIGN_ENTRY]), secrets[_ENC_ENTRY])


def _env_value(name: str, what: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise SignerError(f"{what} needs an environment variable name")
    value = os.environ.get(name)
    if value is None:
        raise SignerError(f"environment variable {name} is not set")
    if not value:
        raise SignerError(f"environment variable {name} is empty")
    return value


def _passphrase_from_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SignerError(f"passphrase file {path} not found") from None
    except OSError as exc:
        raise SignerError(f"cannot open passphrase file {path}: {exc.strerror}") from None
    # Check the opened file, not the path, so the file cannot be swapped after the check.
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SignerError(f"passphrase file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SignerError(
                f"passphrase file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it"
            )
        raw = handle.read(_MAX_PHRASE_FILE_SIZE + 1)
    if len(raw) > _MAX_PHRASE_FILE_SIZE:
        raise SignerError(f"passphrase file {path} is too large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SignerError(f"passphrase file {path} is not UTF-8") from None
    # Editors and `echo` add one newline; anything else (spaces included) is passphrase.
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise SignerError(f"passphrase file {path} is empty")
    return text


def _from_keystore(reference: str, base_dir: Path, passphrase: str | None) -> Identity:
    relpath, _, query = reference.partition("?")
    if not relpath:
        raise SignerError("keystore URI has no path")
    try:
        options = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise SignerError("keystore URI has a malformed query") from None
    names = [name for name, _ in options]
    unknown = sorted(set(names) - {_OPT_ENV, _OPT_FILE})
    if unknown:
        raise SignerError(f"keystore URI has unknown option(s): {', '.join(unknown)}")
    sources = len(options) + (passphrase is not None)
    if sources == 0:
        raise SignerError(f"keystore URI needs {_OPT_ENV}=VAR, {_OPT_FILE}=PATH or a passphrase")
    if sources > 1:
        raise SignerError("keystore URI must name exactly one passphrase source")

    if passphrase is None:
        name, value = options[0]
        if name == _OPT_ENV:
            passphrase = _env_value(value, f"{_OPT_ENV}=")
        else:
            if not value:
                raise SignerError(f"{_OPT_FILE}= needs a path")
            passphrase = _passphrase_from_file(base_dir / value)
    elif not isinstance(passphrase, str) or not passphrase:
        raise SignerError("the passphrase must be a non-empty str")

    path = base_dir / relpath
    try:
        # Wrong passphrase or tampering surfaces as DecryptionError, a damaged file as
        # KeyFormatError; both pass through unchanged.
        secrets = read_keystore(path, passphrase)
    except FileNotFoundError:
        raise SignerError(f"keystore {path} not found") from None
    except OSError as exc:
        raise SignerError(f"cannot read keystore {path}: {exc.strerror}") from None
    return _identity(secrets, f"keystore {path}")


def _from_env(name: str) -> Identity:
    value = _env_value(name, "env: URI")
    # Chained exceptions are suppressed below: their text could quote the secret value.
    try:
        document = parse(b64d(value))
    except CanonicalError:
        raise SignerError(
            f"environment variable {name} is not base64url of a JSON object"
        ) from None
    if not isinstance(document, dict) or set(document) != {_SIGN_ENTRY, _ENC_ENTRY}:
        raise SignerError(
            f"environment variable {name} must hold exactly {_SIGN_ENTRY!r} and {_ENC_ENTRY!r}"
        )
    try:
        secrets = {key: b64d(item) for key, item in document.items()}
    except CanonicalError:
        raise SignerError(
            f"environment variable {name} holds a key that is not base64url"
        ) from None
    return _identity(secrets, f"environment variable {name}")


def load_identity(uri: str, base_dir: Path, passphrase: str | None = None) -> Identity:
    """Resolve a signer URI (``keystore:...`` or ``env:VAR``) to an Identity.

    SignerError for an unusable reference, DecryptionError for a wrong keystore passphrase,
    KeyFormatError for malformed key material.
    """
    if not isinstance(uri, str):
        raise SignerError("a signer URI must be a str")
    scheme, colon, reference = uri.partition(":")
    if scheme == "keystore" and colon:
        return _from_keystore(reference, Path(base_dir), passphrase)
    if scheme == "env" and colon:
        if passphrase is not None:
            raise SignerError("env: URIs take no passphrase")
        return _from_env(reference)
    if colon and _SCHEME.fullmatch(scheme):
        raise SignerError(f"unknown signer URI scheme {scheme!r}; use 'keystore:' or 'env:'")
    # The text is not echoed: a mistyped reference might be a pasted secret.
    raise SignerError("not a signer URI; use 'keystore:PATH...' or 'env:VAR'")


def new_identity_keystore(
    path: Path,
    passphrase: str,
    params: KdfParams | None = None,
    suite: str = SUITE_X25519,
    label: str = "",
) -> tuple[bytes, bytes]:
    """Generate a signing and an encryption key, store both in a new keystore at ``path``.

    Returns (sign_public, enc_public). Refuses (FileExistsError) to overwrite an existing
    file, which would destroy the keys it holds.
    """
    seed = generate_signing_seed()
    enc_private, enc_public = generate_encryption_key(suite)
    write_keystore_file(
        Path(path),
        passphrase,
        {_SIGN_ENTRY: seed, _ENC_ENTRY: enc_private},
        params,
        label,
        exclusive=True,
    )
    return signing_public_key(seed), enc_public
