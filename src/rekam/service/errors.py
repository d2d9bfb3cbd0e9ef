"""Errors of the use cases; only the API layer maps them to protocol statuses.

ServiceError
+-- NotFoundError          unknown patient, record, member or organisation
+-- InvalidContentError    content refused before anything was written (FHIR issues)
+-- AccessDenied           the policy refused an access; the denial is on the chain
+-- RejectedError          the network refused a transaction; ``code`` says which rule
+-- ContentUnavailable     content erased, missing or failing its on-chain hash
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of the service layer's errors."""


class NotFoundError(ServiceError):
    """Something referenced does not exist on the chain."""


class InvalidContentError(ServiceError):
    """Content was refused before anything was written."""

    def __init__(self, message: str, issues: list[str] | None = None) -> None:
        super().__init__(message)
        self.issues = issues or []


class AccessDenied(ServiceError):
    """The policy refused an access; the attempt is recorded on the chain."""

    def __init__(self, message: str, tx_id: str | None = None) -> None:
        super().__init__(message)
        self.tx_id = tx_id


class RejectedError(ServiceError):
    """The ledger rules refused a transaction."""

    def __init__(self, code: str, tx_id: str) -> None:
        super().__init__(f"transaction refused by the network: {code}")
        self.code = code
        self.tx_id = tx_id


class ContentUnavailable(ServiceError):
    """Content cannot be returned: erased, missing, or not matching its on-chain hash."""
