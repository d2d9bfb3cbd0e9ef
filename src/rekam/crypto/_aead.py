"""AES-256-GCM record encryption: one fresh key per sealed record."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rekam.crypto._errors import DecryptionError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM encrypt under a random nonce; returns nonce || ciphertext || tag."""
    # A random 96-bit nonce is safe here: record keys encrypt exactly one message and keystore
    # keys are derived from a fresh salt on every write, so no key ever sees two nonces.
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Invert ``encrypt``; DecryptionError on any failure."""
    if (
        type(key) is not bytes
        or len(key) != KEY_SIZE
        or type(sealed) is not bytes
        or len(sealed) < NONCE_SIZE + TAG_SIZE
    ):
        raise DecryptionError()
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except (InvalidTag, ValueError, TypeError):
        raise DecryptionError() from None


def seal(plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt a record under a fresh random 256-bit key; returns (key, nonce || ciphertext).

    ``aad`` is authenticated but not encrypted (bind the record id and version here).
    """
    key = AESGCM.generate_key(bit_length=256)
    return key, encrypt(key, plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt what ``seal`` produced with the same ``aad``; DecryptionError on any failure."""
    return decrypt(key, ciphertext, aad)
