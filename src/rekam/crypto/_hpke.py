"""Wrapping data keys to a recipient with HPKE (RFC 9180, base mode, single-shot).

Key bytes are self-describing: the first byte names the suite, so a recipient's public key
alone decides how to wrap for it and a wrapped key says which private key can open it.

Layouts (after the suite byte):

* 0x01 ``x25519``: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. Public: the raw
  32-byte X25519 key. Private: the raw 32-byte X25519 scalar.
* 0x02 ``mlkem768-x25519``: the ML-KEM-768 + X25519 hybrid KEM, HKDF-SHA256, AES-256-GCM.
  Public: ML-KEM-768 encapsulation key (1184 bytes) || X25519 key (32). Private: ML-KEM-768
  seed (64 bytes, FIPS 203 d || z) || X25519 scalar (32). The private form stores the two
  component keys because that is how ``cryptography`` builds the hybrid key.

Wrapped key: suite byte || HPKE encapsulated key || AEAD ciphertext and tag.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from rekam.crypto._errors import DecryptionError, KeyFormatError

SUITE_X25519 = "x25519"
SUITE_HYBRID = "mlkem768-x25519"

_X25519_SIZE = 32
_MLKEM_PUBLIC_SIZE = 1184
_MLKEM_SEED_SIZE = 64
_TAG_SIZE = 16

_PublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
_PrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


@dataclass(frozen=True)
class _Suite:
    name: str
    tag: int
    hpke: hpke.Suite
    public_size: int
    private_size: int
    enc_size: int


_SUITES = (
    _Suite(
        SUITE_X25519,
        0x01,
        hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
        _X25519_SIZE,
        _X25519_SIZE,
        hpke.KEM.X25519.enc_length(),
    ),
    _Suite(
        SUITE_HYBRID,
        0x02,
        hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
        _MLKEM_PUBLIC_SIZE + _X25519_SIZE,
        _MLKEM_SEED_SIZE + _X25519_SIZE,
        hpke.KEM.MLKEM768_X25519.enc_length(),
    ),
)
_BY_NAME = {s.name: s for s in _SUITES}
_BY_TAG = {s.tag: s for s in _SUITES}


def _suite_of(data: bytes, what: str, size_of: str) -> _Suite:
    if type(data) is not bytes or not data:
        raise KeyFormatError(f"{what} must be non-empty bytes")
    suite = _BY_TAG.get(data[0])
    if suite is None:
        raise KeyFormatError(f"{what} has an unknown suite byte 0x{data[0]:02x}")
    expected = getattr(suite, size_of)
    if len(data) != 1 + expected:
        raise KeyFormatError(f"a {suite.name} {what} is {1 + expected} bytes, got {len(data)}")
    return suite


def _load_public(data: bytes) -> tuple[_Suite, _PublicKey]:
    suite = _suite_of(data, "public key", "public_size")
    raw = data[1:]
    try:
        if suite.name == SUITE_X25519:
            return suite, x25519.X25519PublicKey.from_public_bytes(raw)
        return suite, hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUBLIC_SIZE]),
            x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUBLIC_SIZE:]),
        )
    except ValueError:
        # e.g. ML-KEM coefficients outside the modulus (FIPS 203 encapsulation key check).
        raise KeyFormatError(f"not a valid {suite.name} public key") from None


def _parse_private(
    data: bytes,
) -> tuple[_Suite, x25519.X25519PrivateKey, mlkem.MLKEM768PrivateKey | None]:
    suite = _suite_of(data, "private key", "private_size")
    raw = data[1:]
    try:
        if suite.name == SUITE_X25519:
            return suite, x25519.X25519PrivateKey.from_private_bytes(raw), None
        return (
            suite,
            x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED_SIZE:]),
            mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED_SIZE]),
        )
    except ValueError:
        raise KeyFormatError(f"not a valid {suite.name} private key") from None


def _load_private(data: bytes) -> tuple[_Suite, _PrivateKey]:
    suite, xkey, mkey = _parse_private(data)
    if mkey is None:
        return suite, xkey
    return suite, hpke.MLKEM768X25519PrivateKey(mkey, xkey)


def generate_encryption_key(suite: str = SUITE_X25519) -> tuple[bytes, bytes]:
    """Generate an HPKE key pair for ``suite``; returns (private_bytes, public_bytes).

    Both are prefixed with the suite byte, so the public key tells senders which suite to use.
    """
    chosen = _BY_NAME.get(suite)
    if chosen is None:
        raise ValueError(f"unknown HPKE suite {suite!r}; use {SUITE_X25519!r} or {SUITE_HYBRID!r}")
    tag = bytes([chosen.tag])
    xkey = x25519.X25519PrivateKey.generate()
    if chosen.name == SUITE_X25519:
        return tag + xkey.private_bytes_raw(), tag + xkey.public_key().public_bytes_raw()
    mkey = mlkem.MLKEM768PrivateKey.generate()
    private = tag + mkey.private_bytes_raw() + xkey.private_bytes_raw()
    public = tag + mkey.public_key().public_bytes_raw() + xkey.public_key().public_bytes_raw()
    return private, public


def encryption_public_key(private: bytes) -> bytes:
    """Return the suite-prefixed public key that belongs to a suite-prefixed private key."""
    # The hybrid key object offers no serialisation, so the public key is rebuilt from the
    # component keys in the same order generate_encryption_key writes it.
    suite, xkey, mkey = _parse_private(private)
    mlkem_public = b"" if mkey is None else mkey.public_key().public_bytes_raw()
    return bytes([suite.tag]) + mlkem_public + xkey.public_key().public_bytes_raw()


def wrap_key(dek: bytes, recipient_public: bytes, info: bytes) -> bytes:
    """Encrypt ``dek`` to a recipient's public key with HPKE; returns suite byte || HPKE output.

    ``info`` binds the context (e.g. record id and version): unwrapping needs the same bytes.
    """
    suite, key = _load_public(recipient_public)
    try:
        return bytes([suite.tag]) + suite.hpke.encrypt(dek, key, info=info)
    except ValueError:
        # X25519 refuses low-order public keys (all-zero shared secret).
        raise KeyFormatError(f"not a usable {suite.name} public key") from None


def unwrap_key(wrapped: bytes, recipient_private: bytes, info: bytes) -> bytes:
    """Recover the data key from ``wrap_key`` output; DecryptionError on any failure.

    Wrong recipient, wrong ``info``, tampering, truncation and a suite that does not match the
    private key all raise the same DecryptionError. Malformed private key bytes (a local
    configuration fault, not attacker input) raise KeyFormatError.
    """
    suite, key = _load_private(recipient_private)
    if (
        type(wrapped) is not bytes
        or len(wrapped) < 1 + suite.enc_size + _TAG_SIZE
        or wrapped[0] != suite.tag
    ):
        raise DecryptionError()
    try:
        return suite.hpke.decrypt(wrapped[1:], key, info=info)
    except (InvalidTag, ValueError, TypeError):
        raise DecryptionError() from None
