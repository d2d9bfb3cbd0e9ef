"""AES-256-GCM record sealing: round trips and the opaque failure on any change."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rekam.crypto import DecryptionError, open_sealed, seal


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _failure(key: bytes, ciphertext: bytes, aad: bytes) -> DecryptionError:
    with pytest.raises(DecryptionError) as info:
        open_sealed(key, ciphertext, aad)
    # Foreign exceptions must not be chained: their text or type would say which check failed.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    return info.value


@settings(max_examples=150, deadline=None)
@given(plaintext=st.binary(max_size=4096), aad=st.binary(max_size=256))
def test_roundtrip(plaintext: bytes, aad: bytes) -> None:
    key, ciphertext = seal(plaintext, aad)
    assert len(key) == 32
    assert len(ciphertext) == 12 + len(plaintext) + 16
    assert open_sealed(key, ciphertext, aad) == plaintext


def test_fresh_key_and_nonce() -> None:
    first = seal(b"same", b"aad")
    second = seal(b"same", b"aad")
    assert first[0] != second[0]
    assert first[1][:12] != second[1][:12]


def test_every_single_change_fails_identically() -> None:
    aad = b"record:42/v3"
    key, ciphertext = seal(b"blood type: O-", aad)
    errors = []
    for bit in range(len(ciphertext) * 8):
        errors.append(_failure(key, _flip(ciphertext, bit), aad))
    for bit in range(len(aad) * 8):
        errors.append(_failure(key, ciphertext, _flip(aad, bit)))
    for bit in range(len(key) * 8):
        errors.append(_failure(_flip(key, bit), ciphertext, aad))
    for size in range(len(ciphertext)):
        errors.append(_failure(key, ciphertext[:size], aad))
    errors.append(_failure(key, ciphertext + b"\x00", aad))
    errors.append(_failure(key, ciphertext, aad + b"\x00"))
    errors.append(_failure(key, ciphertext, b""))
    errors.append(_failure(key[:16], ciphertext, aad))
    errors.append(_failure(key + b"\x00", ciphertext, aad))
    errors.append(_failure(seal(b"", b"")[0], ciphertext, aad))
    assert {str(e) for e in errors} == {"decryption failed"}
    assert {e.args for e in errors} == {("decryption failed",)}
