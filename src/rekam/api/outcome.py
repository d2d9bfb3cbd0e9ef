"""FHIR OperationOutcome responses and the API's own error."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import Response

from rekam.service.errors import (
    AccessDenied,
    ContentUnavailable,
    NotFoundError,
    RejectedError,
    ServiceError,
)
from rekam.service.fhir_store import UnknownReferenceError

FHIR_JSON = "application/fhir+json"


def http_status(exc: ServiceError) -> int:
    """The HTTP status of a service error: one mapping for the FHIR API and the portal."""
    if isinstance(exc, UnknownReferenceError):
        return 422
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, AccessDenied):
        return 403
    if isinstance(exc, ContentUnavailable):
        return 410
    if isinstance(exc, RejectedError):
        return 409
    return 400  # InvalidContentError and anything else the caller sent wrong


class ApiError(Exception):
    """An HTTP-level refusal decided by the API layer (auth, scopes, body, parameters)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        issues: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.issues = list(issues)
        self.headers = dict(headers or {})
        if status == 401:
            self.headers.setdefault("WWW-Authenticate", 'Bearer realm="rekam"')


def fhir_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A FHIR JSON response."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(data, status_code=status, media_type=FHIR_JSON, headers=dict(headers or {}))


def outcome_response(
    status: int,
    code: str,
    message: str,
    issues: Sequence[str],
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An OperationOutcome: one error issue with the message, one per detail issue."""
    severity = "error" if status < 500 else "fatal"
    entries: list[dict[str, Any]] = [{"severity": severity, "code": code, "diagnostics": message}]
    for issue in issues[:50]:
        path, _, problem = issue.partition(": ")
        entry: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": problem or path}
        if problem:
            entry["expression"] = [path]
        entries.append(entry)
    body = {"resourceType": "OperationOutcome", "issue": entries}
    return fhir_response(body, status, headers)
