"""Request authentication between nodes: each request is signed with the organisation's key.

The signed message binds the network, the calling organisation, the method, the path with its
query, a timestamp, a random nonce and the SHA-256 of the body::

    b"rekam/peer/v1\\n" + canonical({"body", "method", "network", "nonce", "org", "path", "time"})

A server accepts a request only when the organisation is active on its chain, the Ed25519
signature verifies with that organisation's key on record, the timestamp is within
``MAX_SKEW_MS`` of its own clock and the nonce has not been seen in that period (no replay).
Responses are not signed: what they carry is checked against the chain (blocks by their
hashes and signatures, content by its on-chain hash).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable

from rekam.crypto import Signer, verify_signature
from rekam.encoding import CanonicalError, b64d, b64e, canonical

DOMAIN = b"rekam/peer/v1\n"
MAX_SKEW_MS = 30_000
H_ORG = "x-rekam-org"
H_TIME = "x-rekam-time"
H_NONCE = "x-rekam-nonce"
H_SIG = "x-rekam-signature"


class AuthError(Exception):
    """A peer request's credentials were refused (the reason is for the server's log only)."""


def message(
    network: str, org: str, method: str, path: str, when: int, nonce: str, body: bytes
) -> bytes:
    """The bytes a requesting organisation signs."""
    return DOMAIN + canonical(
        {
            "body": hashlib.sha256(body).hexdigest(),
            "method": method.upper(),
            "network": network,
            "nonce": nonce,
            "org": org,
            "path": path,
            "time": when,
        }
    )


def sign_request(
    network: str, org: str, signer: Signer, method: str, path: str, body: bytes = b""
) -> dict[str, str]:
    """The headers that authenticate one request."""
    when = time.time_ns() // 1_000_000
    nonce = secrets.token_hex(16)
    sig = signer.sign(message(network, org, method, path, when, nonce, body))
    return {H_ORG: org, H_TIME: str(when), H_NONCE: nonce, H_SIG: b64e(sig)}


class RequestVerifier:
    """Checks request headers against organisation keys; remembers nonces to refuse replays."""

    def __init__(
        self,
        network: str,
        org_key: Callable[[str], bytes | None],
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._network = network
        self._org_key = org_key
        self._clock = clock
        self._nonces: dict[str, int] = {}
        self._lock = threading.Lock()

    def verify(self, headers: dict[str, str], method: str, path: str, body: bytes) -> str:
        """The authenticated organisation id; AuthError when anything does not check out."""
        try:
            org = headers[H_ORG]
            when = int(headers[H_TIME])
            nonce = headers[H_NONCE]
            sig = b64d(headers[H_SIG])
        except (KeyError, ValueError, CanonicalError) as exc:
            raise AuthError("missing or malformed authentication headers") from exc
        now = self._clock()
        if abs(now - when) > MAX_SKEW_MS:
            raise AuthError("request time is outside the allowed clock skew")
        if len(nonce) != 32:
            raise AuthError("malformed nonce")
        key = self._org_key(org)
        if key is None:
            raise AuthError("unknown or inactive organisation")
        if not verify_signature(
            key, message(self._network, org, method, path, when, nonce, body), sig
        ):
            raise AuthError("signature does not verify")
        with self._lock:
            for old in [n for n, t in self._nonces.items() if t < now - 2 * MAX_SKEW_MS]:
                del self._nonces[old]
            if nonce in self._nonces:
                raise AuthError("replayed request")
            self._nonces[nonce] = when
        return org
