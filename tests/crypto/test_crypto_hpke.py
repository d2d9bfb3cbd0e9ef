"""HPKE key wrapping over both suites: round trips, context binding, tampering, key formats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rekam.crypto import (
    SUITE_HYBRID,
    SUITE_X25519,
    DecryptionError,
    KeyFormatError,
    encryption_public_key,
    generate_encryption_key,
    unwrap_key,
    wrap_key,
)

SUITES = [SUITE_X25519, SUITE_HYBRID]
# Generated once: ML-KEM key generation inside hypothesis loops would dominate the run time.
KEYS = {suite: generate_encryption_key(suite) for suite in SUITES}


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _failure(wrapped: bytes, private: bytes, info: bytes) -> DecryptionError:
    with pytest.raises(DecryptionError) as caught:
        unwrap_key(wrapped, private, info)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    return caught.value


@pytest.mark.parametrize(
    ("suite", "tag", "public_size", "private_size"),
    [(SUITE_X25519, 0x01, 33, 33), (SUITE_HYBRID, 0x02, 1 + 1184 + 32, 1 + 64 + 32)],
)
def test_key_format(suite: str, tag: int, public_size: int, private_size: int) -> None:
    private, public = generate_encryption_key(suite)
    assert private[0] == tag
    assert public[0] == tag
    assert len(public) == public_size
    assert len(private) == private_size
    assert encryption_public_key(private) == public
    assert generate_encryption_key(suite) != (private, public)


def test_default_suite_is_x25519() -> None:
    private, public = generate_encryption_key()
    assert public[0] == 0x01
    assert private[0] == 0x01


def test_unknown_suite() -> None:
    with pytest.raises(ValueError, match="unknown HPKE suite"):
        generate_encryption_key("rsa")


@settings(max_examples=60, deadline=None)
@given(
    suite=st.sampled_from(SUITES),
    dek=st.binary(max_size=128),
    info=st.binary(max_size=128),
)
def test_roundtrip(suite: str, dek: bytes, info: bytes) -> None:
    private, public = KEYS[suite]
    wrapped = wrap_key(dek, public, info)
    assert wrapped[0] == public[0]
    assert unwrap_key(wrapped, private, info) == dek


@pytest.mark.parametrize("suite", SUITES)
def test_wrapping_is_randomised(suite: str) -> None:
    private, public = KEYS[suite]
    first = wrap_key(b"k" * 32, public, b"ctx")
    second = wrap_key(b"k" * 32, public, b"ctx")
    assert first != second
    assert unwrap_key(first, private, b"ctx") == unwrap_key(second, private, b"ctx")


@pytest.mark.parametrize("suite", SUITES)
def test_every_single_change_fails_identically(suite: str) -> None:
    private, public = KEYS[suite]
    info = b"record:7/v1"
    wrapped = wrap_key(b"\x42" * 32, public, info)
    errors = []
    for bit in range(len(wrapped) * 8):
        errors.append(_failure(_flip(wrapped, bit), private, info))
    for bit in range(len(info) * 8):
        errors.append(_failure(wrapped, private, _flip(info, bit)))
    for size in range(0, len(wrapped), 7):
        errors.append(_failure(wrapped[:size], private, info))
    errors.append(_failure(wrapped + b"\x00", private, info))
    errors.append(_failure(wrapped, private, b""))
    errors.append(_failure(wrapped, private, info + b"\x00"))
    assert {str(e) for e in errors} == {"decryption failed"}


@pytest.mark.parametrize("suite", SUITES)
def test_wrong_recipient(suite: str) -> None:
    _, public = KEYS[suite]
    other_private, _ = generate_encryption_key(suite)
    wrapped = wrap_key(b"k" * 32, public, b"ctx")
    assert str(_failure(wrapped, other_private, b"ctx")) == "decryption failed"


def test_suite_mismatch() -> None:
    x_private, x_public = KEYS[SUITE_X25519]
    h_private, h_public = KEYS[SUITE_HYBRID]
    to_x = wrap_key(b"k" * 32, x_public, b"ctx")
    to_h = wrap_key(b"k" * 32, h_public, b"ctx")
    _failure(to_x, h_private, b"ctx")
    _failure(to_h, x_private, b"ctx")
    # Relabelled suite byte: the body is the other suite's, so it fails too.
    _failure(b"\x02" + to_x[1:], h_private, b"ctx")
    _failure(b"\x01" + to_h[1:], x_private, b"ctx")
    _failure(b"\x03" + to_x[1:], x_private, b"ctx")


@pytest.mark.parametrize(
    "public",
    [
        b"",
        b"\x01",
        b"\x03" + bytes(32),
        b"\x01" + bytes(31),
        b"\x02" + bytes(32),
        b"\x01" + bytes(32),  # X25519 low-order point: shared secret would be all zero
        b"\x02" + b"\xff" * 1184 + bytes(31) + b"\x09",  # ML-KEM coefficients >= q
    ],
)
def test_bad_public_key(public: bytes) -> None:
    with pytest.raises(KeyFormatError):
        wrap_key(b"k" * 32, public, b"ctx")


@pytest.mark.parametrize("private", [b"", b"\x01" + bytes(31), b"\x02" + bytes(33), b"\x09" * 33])
def test_bad_private_key(private: bytes) -> None:
    wrapped = wrap_key(b"k" * 32, KEYS[SUITE_X25519][1], b"ctx")
    with pytest.raises(KeyFormatError):
        unwrap_key(wrapped, private, b"ctx")
    with pytest.raises(KeyFormatError):
        encryption_public_key(private)
