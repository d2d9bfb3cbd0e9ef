"""Ed25519 signatures through PyNaCl (libsodium), and the one rule every node verifies with."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, Protocol, runtime_checkable

import nacl.bindings
import nacl.exceptions
import nacl.signing

from rekam.crypto._errors import KeyFormatError

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# Below this many items the cost of handing work to threads exceeds the verification itself
# (~70 us per signature here), so small batches are verified on the calling thread.
_INLINE_BELOW = 64

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def generate_signing_seed() -> bytes:
    """Return a fresh random 32-byte Ed25519 seed (the private signing key)."""
    return secrets.token_bytes(SEED_SIZE)


def _signing_key(seed: bytes) -> nacl.signing.SigningKey:
    if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
        raise KeyFormatError(f"an Ed25519 seed is {SEED_SIZE} bytes")
    return nacl.signing.SigningKey(seed)


def signing_public_key(seed: bytes) -> bytes:
    """Return the 32-byte Ed25519 public key of a 32-byte seed."""
    return bytes(_signing_key(seed).verify_key)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check an Ed25519 signature with libsodium's strict rules; False on any problem, never raises.

    THE single verification rule of Rekam: every node must accept exactly the same signatures,
    or nodes could disagree about a block's validity. Ed25519 implementations differ on edge
    cases (non-canonical encodings, small-order keys, the cofactor), so all verification goes
    through this function: PyNaCl's ``crypto_sign_open`` (libsodium), which rejects a
    non-canonical S (S >= L), small-order or non-canonical R and A, and keys that are not curve
    points. A wrong-length key or signature, or non-bytes input, is simply invalid.

    It is the call ``VerifyKey(key).verify(message, signature)`` makes, after the same length
    checks as here, without building a ``VerifyKey`` for each check (about 1 us of 63).
    """
    if (
        type(public_key) is not bytes
        or type(signature) is not bytes
        or type(message) is not bytes
        or len(public_key) != PUBLIC_KEY_SIZE
        or len(signature) != SIGNATURE_SIZE
    ):
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        # BadSignatureError covers forged signatures and keys that are not valid points.
        return False
    return True


def _verify_chunk(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [verify_signature(key, message, sig) for key, message, sig in items]


def _reset_pool_after_fork() -> None:
    # A forked child inherits the executor object but not its threads; submitting to it would
    # hang, so the child starts without a pool and makes its own on first use.
    global _pool  # noqa: PLW0603
    _pool = None


os.register_at_fork(after_in_child=_reset_pool_after_fork)


def _shared_pool() -> ThreadPoolExecutor:
    global _pool  # noqa: PLW0603
    # Created lazily so importing rekam.crypto starts no threads.
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1, thread_name_prefix="rekam-verify"
            )
        return _pool


def verify_many(
    items: Sequence[tuple[bytes, bytes, bytes]], workers: int | None = None
) -> list[bool]:
    """Apply ``verify_signature`` to (public_key, message, signature) items; results in input order.

    Large batches are split into one contiguous chunk per worker on a shared thread pool (sized
    to the CPU count); libsodium runs without the GIL, so the chunks verify in parallel.
    """
    if workers is not None and workers < 1:
        raise ValueError("workers must be at least 1")
    count = len(items)
    parallel = (os.cpu_count() or 1) if workers is None else workers
    if count < _INLINE_BELOW or parallel == 1:
        return _verify_chunk(items)
    # Each chunk is at least _INLINE_BELOW // 2 items so that per-chunk overhead stays small.
    chunks = min(parallel, max(1, count // (_INLINE_BELOW // 2)))
    size = -(-count // chunks)
    try:
        parts = _shared_pool().map(
            _verify_chunk, [items[i : i + size] for i in range(0, count, size)]
        )
        return [ok for part in parts for ok in part]
    except RuntimeError:
        # The pool refuses work during interpreter shutdown; verify here instead.
        return _verify_chunk(items)


@runtime_checkable
class Signer(Protocol):
    """Something that signs with one Ed25519 key; domain code holds signers, never seeds."""

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key of this signer."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        ...


class Ed25519Signer:
    """A ``Signer`` over an in-memory Ed25519 seed; the seed is never exposed or printed."""

    __slots__ = ("__key", "__public")

    def __init__(self, seed: bytes) -> None:
        """Create a signer from a 32-byte seed (KeyFormatError if it is not 32 bytes)."""
        self.__key = _signing_key(seed)
        self.__public = bytes(self.__key.verify_key)

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self.__public

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of ``message``."""
        return bytes(self.__key.sign(message).signature)

    def __repr__(self) -> str:
        return f"Ed25519Signer(public_key={self.__public.hex()})"

    def __reduce__(self) -> NoReturn:
        # Pickling would write the seed into whatever the pickle lands in (a cache, a queue,
        # a crash dump); keys move only through keystores.
        raise TypeError("Ed25519Signer holds a private key and cannot be pickled")
