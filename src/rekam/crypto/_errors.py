"""The exception hierarchy of ``rekam.crypto``."""

from __future__ import annotations


class CryptoError(Exception):
    """Root of every error raised by ``rekam.crypto``."""


class DecryptionError(CryptoError):
    """Decryption, key unwrapping or keystore unlocking failed.

    Deliberately opaque: one message for every cause (wrong key, wrong recipient, wrong
    passphrase, wrong context, tampering, truncation), so a failure tells an attacker nothing
    about which check it tripped. Raise it as ``raise DecryptionError() from None`` so the
    foreign exception is not chained into tracebacks or logs either.
    """

    def __init__(self) -> None:
        super().__init__("decryption failed")


class KeyFormatError(CryptoError):
    """Key bytes (or a keystore file) are malformed: wrong length, unknown suite, bad encoding."""


class SignerError(CryptoError):
    """A signer reference cannot be used; the message names the problem, never a secret."""
