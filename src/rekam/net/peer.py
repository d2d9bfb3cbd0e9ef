"""The peer API (a small FastAPI app under ``/peer``), its server thread and its client.

Endpoints, every one authenticated by ``rekam.net.auth``:

* ``GET /peer/head``: this node's organisation, height and head hash.
* ``GET /peer/blocks?start=S&end=E``: committed blocks S..E-1 (at most ``MAX_BLOCKS``), each
  in its canonical transport bytes, base64; the caller checks every hash and signature.
* ``GET /peer/content/{record}/{version}``: the encrypted content of a record version and the
  wrapped keys meant for the calling organisation, its members or its patients; 404 when the
  caller holds none (content moves only to nodes that can open it).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from rekam.crypto import Signer
from rekam.net.auth import AuthError, RequestVerifier, sign_request

log = logging.getLogger(__name__)

MAX_BLOCKS = 100


class PeerBackend(Protocol):
    """What the peer API serves, implemented by the node (rekam.service.network)."""

    @property
    def network_id(self) -> str:
        """The network served."""
        ...

    def org_key(self, org: str) -> bytes | None:
        """An active organisation's signing key on this node's chain."""
        ...

    def head_info(self) -> dict[str, Any]:
        """{"org", "height", "hash"}."""
        ...

    def blocks_bytes(self, start: int, end: int) -> list[bytes]:
        """Transport bytes of committed blocks start..end-1."""
        ...

    def content_for(self, org: str, record: str, version: int) -> dict[str, Any] | None:
        """{"blob": bytes, "keys": [(recipient, wrapped)]} for ``org``, or None."""
        ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def peer_app(backend: PeerBackend) -> FastAPI:
    """The peer API bound to a backend."""
    app = FastAPI(title="Rekam peer API", docs_url=None, redoc_url=None, openapi_url=None)
    verifier = RequestVerifier(backend.network_id, backend.org_key)

    async def caller(request: Request) -> str:
        body = await request.body()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            return verifier.verify(dict(request.headers), request.method, path, body)
        except AuthError as exc:
            log.warning("peer request refused: %s", exc)
            raise HTTPException(401, "authentication failed") from None

    @app.get("/peer/head")
    async def head(request: Request) -> JSONResponse:
        await caller(request)
        return JSONResponse(backend.head_info())

    @app.get("/peer/blocks")
    async def blocks(request: Request, start: int, end: int) -> JSONResponse:
        await caller(request)
        if start < 1 or end <= start:
            raise HTTPException(400, "bad range")
        end = min(end, start + MAX_BLOCKS)
        return JSONResponse({"blocks": [_b64(b) for b in backend.blocks_bytes(start, end)]})

    @app.get("/peer/content/{record}/{version}")
    async def content(request: Request, record: str, version: int) -> JSONResponse:
        org = await caller(request)
        found = backend.content_for(org, record, version)
        if found is None:
            raise HTTPException(404, "no content for this caller")
        return JSONResponse(
            {
                "blob": _b64(found["blob"]),
                "keys": [[who, _b64(key)] for who, key in found["keys"]],
            }
        )

    return app


class PeerServer:
    """The peer API served by uvicorn on a background thread."""

    def __init__(self, backend: PeerBackend, host: str, port: int) -> None:
        config = uvicorn.Config(
            peer_app(backend), host=host, port=port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="rekam-peer", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving and wait until the socket listens."""
        self._thread.start()
        waited = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if self._server.started:
                return
            waited.wait(0.05)
        raise RuntimeError("the peer API did not start")

    def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        self._thread.join(timeout=10)


class PeerError(Exception):
    """A peer could not be reached or refused a request."""


@dataclass
class PeerClient:
    """Signed requests to other nodes' peer APIs."""

    network_id: str
    org: str
    signer: Signer
    timeout: float = 5.0

    def __post_init__(self) -> None:
        self._http = httpx.Client(timeout=self.timeout)

    def close(self) -> None:
        """Close connections."""
        self._http.close()

    def _get(self, base: str, path: str) -> Any:
        headers = sign_request(self.network_id, self.org, self.signer, "GET", path)
        try:
            response = self._http.get(base.rstrip("/") + path, headers=headers)
        except httpx.HTTPError as exc:
            raise PeerError(f"peer unreachable ({type(exc).__name__})") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PeerError(f"peer answered HTTP {response.status_code}")
        return response.json()

    def head(self, base: str) -> dict[str, Any]:
        """A peer's {"org", "height", "hash"}."""
        doc = self._get(base, "/peer/head")
        if not isinstance(doc, dict):
            raise PeerError("peer sent no head")
        return doc

    def blocks(self, base: str, start: int, end: int) -> list[bytes]:
        """Transport bytes of a peer's blocks start..end-1 (unchecked: the caller checks)."""
        doc = self._get(base, f"/peer/blocks?start={start}&end={end}")
        try:
            return [base64.b64decode(b) for b in doc["blocks"]]
        except (TypeError, KeyError, ValueError):
            raise PeerError("peer sent malformed blocks") from None

    def content(
        self, base: str, record: str, version: int
    ) -> tuple[bytes, Sequence[tuple[str, bytes]]] | None:
        """A record version's ciphertext and the caller's wrapped keys, or None."""
        doc = self._get(base, f"/peer/content/{record}/{version}")
        if doc is None:
            return None
        try:
            keys = [(str(w), base64.b64decode(k)) for w, k in doc["keys"]]
            return base64.b64decode(doc["blob"]), keys
        except (TypeError, KeyError, ValueError):
            raise PeerError("peer sent malformed content") from None
