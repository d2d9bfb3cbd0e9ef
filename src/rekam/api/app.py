"""The FastAPI application: FHIR R4 under ``/fhir``, the ledger under ``/api``, OpenAPI docs.

Requests carry a bearer token (see :mod:`rekam.service.tokens`). The token's scopes are
checked here; whether the principal may see a patient's data is decided by the same consent
rules as the core, inside the service layer, which records every read and denial on the
chain. Ordinary requests run concurrently on worker threads (the service layer is
thread-safe, and concurrent requests share blocks); a transaction Bundle runs alone, so no
other write interleaves between its checks and its writes.

Errors are FHIR OperationOutcome bodies built from the service errors' messages, which
never contain input values; unexpected exceptions are logged by type name only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rekam.api.fhir_routes import build_fhir_router
from rekam.api.ledger_routes import build_ledger_router
from rekam.api.outcome import ApiError, http_status, outcome_response
from rekam.crypto import CryptoError
from rekam.service.datadir import DataDirError
from rekam.service.errors import (
    InvalidContentError,
    ServiceError,
)
from rekam.service.fhir_store import FhirService
from rekam.service.fhir_views import LedgerViews
from rekam.service.tokens import Session, TokenError, TokenStore
from rekam.service.workspace import Actor, Workspace

log = logging.getLogger("rekam.api")
T = TypeVar("T")


@dataclass(frozen=True)
class ApiConfig:
    """Limits of the HTTP API."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_count: int = 100


class SharedExclusiveLock:
    """Many shared holders at once, or one exclusive holder (writers are not starved)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    def acquire(self, exclusive: bool) -> None:
        """Wait until the lock can be held in the given mode."""
        with self._cond:
            if exclusive:
                self._waiting_exclusive += 1
                while self._exclusive or self._shared:
                    self._cond.wait()
                self._waiting_exclusive -= 1
                self._exclusive = True
            else:
                while self._exclusive or self._waiting_exclusive:
                    self._cond.wait()
                self._shared += 1

    def release(self, exclusive: bool) -> None:
        """Give the lock back in the mode it was taken."""
        with self._cond:
            if exclusive:
                self._exclusive = False
            else:
                self._shared -= 1
            self._cond.notify_all()


class ApiContext:
    """What the routes share: the workspace, services, tokens, and unlocked principals."""

    def __init__(self, ws: Workspace, tokens: TokenStore, config: ApiConfig) -> None:
        self.ws = ws
        self.tokens = tokens
        self.config = config
        self.fhir = FhirService(ws)
        self.views = LedgerViews(self.fhir)
        self.lock = SharedExclusiveLock()
        # Unlocked principals by token id: Argon2id runs once per token, not per request.
        self._actors: dict[str, Actor] = {}

    def close(self) -> None:
        """Release what this context holds (the patient index belongs to the workspace)."""

    async def call(self, fn: Callable[..., T], *args: Any, exclusive: bool = False) -> T:
        """Run a blocking service call on a worker thread (alone when ``exclusive``)."""

        def locked() -> T:
            self.lock.acquire(exclusive)
            try:
                return fn(*args)
            finally:
                self.lock.release(exclusive)

        return await run_in_threadpool(locked)

    async def authenticate(self, request: Request) -> tuple[Session, Actor]:
        """The session and unlocked principal of a request; ApiError 401 otherwise."""
        # On a worker thread: the first use of a token runs Argon2id to unlock the keystore.
        return await run_in_threadpool(self._authenticate, request)

    def _authenticate(self, request: Request) -> tuple[Session, Actor]:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "login", "a bearer token is required")
        try:
            session = self.tokens.authenticate(token, self.ws.node.clock())
        except TokenError:
            raise ApiError(401, "login", "the token is invalid, expired or revoked") from None
        info = session.info
        actor = self._actors.get(info.token_id)
        if actor is None:
            try:
                actor = self.ws.actor(info.principal, session.passphrase)
            except (DataDirError, CryptoError):
                raise ApiError(401, "login", "the token's principal cannot be unlocked") from None
            self._actors[info.token_id] = actor
        return session, actor

    def forget(self, token_id: str) -> None:
        """Drop an unlocked principal from memory (after revocation)."""
        self._actors.pop(token_id, None)


# The OperationOutcome issue code for each status a service error maps to.
_ISSUE_CODES = {
    422: "processing",
    404: "not-found",
    403: "forbidden",
    410: "deleted",
    409: "conflict",
}


def _status_for(exc: ServiceError) -> tuple[int, str]:
    status = http_status(exc)
    if status == 400:
        return 400, "invalid" if isinstance(exc, InvalidContentError) else "processing"
    return status, _ISSUE_CODES[status]


def create_app(ws: Workspace, tokens: TokenStore, config: ApiConfig | None = None) -> FastAPI:
    """The node's HTTP application over an open workspace and its token store."""
    ctx = ApiContext(ws, tokens, config or ApiConfig())
    app = FastAPI(
        title="Rekam node API",
        version="0.1.0",
        description=(
            "HL7 FHIR R4 REST API whose writes are ledger transactions and whose reads are "
            "audited ledger events, plus the ledger API (blocks, receipts, access history)."
        ),
    )
    app.state.ctx = ctx

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        return outcome_response(exc.status, exc.code, exc.message, exc.issues, exc.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> Response:
        status, code = _status_for(exc)
        issues = list(getattr(exc, "issues", []) or [])
        return outcome_response(status, code, str(exc), issues)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        message = {404: "no such endpoint", 405: "method not allowed"}.get(
            exc.status_code, "request refused"
        )
        return outcome_response(exc.status_code, code, message, [])

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        where = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return outcome_response(
            400, "invalid", "malformed request", [f"{w}: invalid" for w in where]
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        # Type name only: a message could carry content.
        log.error("unexpected %s while serving a request", type(exc).__name__)
        return outcome_response(500, "exception", "internal error", [])

    app.include_router(build_fhir_router(ctx))
    app.include_router(build_ledger_router(ctx))
    return app


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON as the API returns it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
