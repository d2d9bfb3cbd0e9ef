"""Ed25519: RFC 8032 vectors, the strict verification rule, batch verification, signers."""

from __future__ import annotations

import os
import pickle

import nacl.bindings
import pytest

import rekam.crypto._signing as signing_module
from rekam.crypto import (
    Ed25519Signer,
    KeyFormatError,
    Signer,
    generate_signing_seed,
    signing_public_key,
    verify_many,
    verify_signature,
)

# RFC 8032 section 7.1, TEST 1 (empty message) and TEST 2 (one byte).
RFC8032_1 = (
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "",
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
)
RFC8032_2 = (
    "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    "72",
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
)

# Group order of the Ed25519 base point (RFC 8032 section 5.1).
L = 2**252 + 27742317777372353535851937790883648493


def _not_on_curve() -> bytes:
    """The smallest y whose encoding (sign bit 0) decodes to no curve point."""
    # x^2 = (y^2 - 1) / (d y^2 + 1) mod p has a solution iff the right side is a square;
    # Euler's criterion finds the first y where it is not. Test-only arithmetic.
    p = 2**255 - 19
    d = -121665 * pow(121666, -1, p) % p
    for y in range(2, 1000):
        u = (y * y - 1) % p
        v = (d * y * y + 1) % p
        if pow(u * pow(v, -1, p) % p, (p - 1) // 2, p) == p - 1:
            return y.to_bytes(32, "little")
    raise AssertionError("no non-point found")


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("vector", [RFC8032_1, RFC8032_2])
def test_rfc8032_vectors(vector: tuple[str, str, str, str]) -> None:
    seed, public, message, signature = (bytes.fromhex(v) for v in vector)
    assert signing_public_key(seed) == public
    signer = Ed25519Signer(seed)
    assert signer.public_key == public
    assert signer.sign(message) == signature
    assert verify_signature(public, message, signature)


def test_generate_signing_seed() -> None:
    seeds = {generate_signing_seed() for _ in range(8)}
    assert len(seeds) == 8
    assert all(len(s) == 32 for s in seeds)


def test_sign_verify_roundtrip() -> None:
    signer = Ed25519Signer(generate_signing_seed())
    message = os.urandom(100)
    signature = signer.sign(message)
    assert len(signature) == 64
    assert verify_signature(signer.public_key, message, signature)
    assert not verify_signature(signer.public_key, message + b"x", signature)
    other = Ed25519Signer(generate_signing_seed())
    assert not verify_signature(other.public_key, message, signature)


def test_every_flipped_signature_bit_fails() -> None:
    _, public, message, signature = (bytes.fromhex(v) for v in RFC8032_2)
    for bit in range(len(signature) * 8):
        assert not verify_signature(public, message, _flip(signature, bit)), bit
    for bit in range(len(public) * 8):
        assert not verify_signature(_flip(public, bit), message, signature), bit
    for bit in range(len(message) * 8):
        assert not verify_signature(public, _flip(message, bit), signature), bit


@pytest.mark.parametrize(
    ("key_len", "sig_len"), [(0, 64), (31, 64), (33, 64), (32, 0), (32, 63), (32, 65)]
)
def test_wrong_lengths_are_false(key_len: int, sig_len: int) -> None:
    _, public, message, signature = (bytes.fromhex(v) for v in RFC8032_1)
    key = (public + b"\x00")[:key_len] if key_len <= 33 else public
    sig = (signature + b"\x00")[:sig_len]
    assert verify_signature(key, message, sig) is False


def test_non_point_key_is_false() -> None:
    key = _not_on_curve()
    assert not nacl.bindings.crypto_core_ed25519_is_valid_point(key)
    _, _, message, signature = (bytes.fromhex(v) for v in RFC8032_1)
    assert verify_signature(key, message, signature) is False


def test_small_order_forgery_is_false() -> None:
    # Identity public key with R = identity and S = 0 satisfies the cofactorless equation for
    # every message; strict verification must reject small-order keys and R.
    identity = b"\x01" + bytes(31)
    forged = identity + bytes(32)
    for message in (b"", b"pay 1000", os.urandom(40)):
        assert verify_signature(identity, message, forged) is False


def test_non_canonical_s_is_false() -> None:
    _, public, message, signature = (bytes.fromhex(v) for v in RFC8032_2)
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + L).to_bytes(32, "little")
    assert verify_signature(public, message, malleated) is False


@pytest.mark.parametrize(
    "args",
    [
        ("key", b"m", b"s" * 64),
        (bytearray(32), b"m", bytes(64)),
        (bytes(32), "message", bytes(64)),
        (bytes(32), b"m", None),
    ],
)
def test_non_bytes_is_false(args: tuple[object, object, object]) -> None:
    assert verify_signature(*args) is False  # type: ignore[arg-type]


def _mixed_batch(n: int) -> list[tuple[bytes, bytes, bytes]]:
    signers = [Ed25519Signer(generate_signing_seed()) for _ in range(5)]
    non_point = _not_on_curve()
    items: list[tuple[bytes, bytes, bytes]] = []
    for i in range(n):
        signer = signers[i % len(signers)]
        message = os.urandom(i % 97)
        signature = signer.sign(message)
        kind = i % 6
        if kind == 1:
            signature = _flip(signature, i % 512)
        elif kind == 2:
            message += b"!"
        elif kind == 3:
            signature = signature[:63]
        elif kind == 4:
            items.append((non_point, message, signature))
            continue
        items.append((signer.public_key, message, signature))
    return items


def test_verify_many_matches_elementwise() -> None:
    items = _mixed_batch(500)
    expected = [verify_signature(*item) for item in items]
    assert any(expected)
    assert not all(expected)
    assert verify_many(items) == expected
    for workers in (1, 2, 3, 16):
        assert verify_many(items, workers=workers) == expected
    assert verify_many(items[:10]) == expected[:10]
    assert verify_many([]) == []


def test_verify_many_uses_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = signing_module._verify_chunk

    def counting(items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
        calls.append(len(items))
        return original(items)

    monkeypatch.setattr(signing_module, "_verify_chunk", counting)
    items = _mixed_batch(300)
    verify_many(items, workers=4)
    assert sorted(calls) == [75, 75, 75, 75]
    calls.clear()
    verify_many(items[:63], workers=4)
    assert calls == [63]


def test_verify_many_rejects_bad_workers() -> None:
    with pytest.raises(ValueError, match="workers"):
        verify_many([], workers=0)


def test_signer_hides_seed() -> None:
    seed = generate_signing_seed()
    signer = Ed25519Signer(seed)
    assert isinstance(signer, Signer)
    text = repr(signer) + str(signer)
    assert seed.hex() not in text
    assert signer.public_key.hex() in text
    assert not hasattr(signer, "seed")
    with pytest.raises(TypeError):
        pickle.dumps(signer)


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "x" * 32])
def test_bad_seed(seed: bytes) -> None:
    with pytest.raises(KeyFormatError):
        Ed25519Signer(seed)
    with pytest.raises(KeyFormatError):
        signing_public_key(seed)
