"""HTTP API of a node: HL7 FHIR R4 under ``/fhir`` and the ledger under ``/api``.

Only this package maps service errors to HTTP statuses (FHIR OperationOutcome bodies).
"""

from rekam.api.app import ApiConfig, create_app

__all__ = ["ApiConfig", "create_app"]
