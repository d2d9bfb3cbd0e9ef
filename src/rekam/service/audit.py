"""A patient's access history: who did what with their data, when, and on which basis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rekam.service.errors import NotFoundError

if TYPE_CHECKING:
    from rekam.service.workspace import Workspace

KIND_LABELS = {
    "access.read": "read",
    "record.write": "wrote",
    "record.erase": "erased",
    "consent.grant": "consent granted",
    "consent.revoke": "consent revoked",
    "emergency.open": "EMERGENCY ACCESS",
    "prescription.dispense": "dispensed",
    "patient.register": "registered",
}


@dataclass(frozen=True)
class AuditEntry:
    """One event in a patient's history (no clinical content)."""

    tx_id: str
    time: int
    kind: str
    actor: str
    actor_label: str
    actor_org: str | None
    record: str | None
    resource_type: str | None
    version: int | None
    allowed: bool | None
    basis: str | None
    basis_ref: str | None
    purpose: str | None

    @property
    def emergency(self) -> bool:
        """True for break-glass events and accesses made under them."""
        return self.kind == "emergency.open" or self.basis == "emergency"

    @property
    def label(self) -> str:
        """A short human label for the kind of event."""
        if self.kind == "access.read" and self.allowed is False:
            return "DENIED read"
        return KIND_LABELS.get(self.kind, self.kind)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "tx": self.tx_id,
            "time": self.time,
            "event": self.kind,
            "actor": self.actor,
            "actor_label": self.actor_label,
            "actor_org": self.actor_org,
            "record": self.record,
            "resource_type": self.resource_type,
            "version": self.version,
            "allowed": self.allowed,
            "basis": self.basis,
            "basis_ref": self.basis_ref,
            "purpose": self.purpose,
            "emergency": self.emergency,
        }


class AuditService:
    """Read the events the chain holds about a patient."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def history(self, patient: str) -> list[AuditEntry]:
        """Every event about the patient's data, oldest first."""
        store = self.ws.node.store
        if store.get("patient", patient) is None:
            raise NotFoundError("unknown patient")
        labels = self.ws.datadir.labels()
        entries = []
        rows = store.query("event", {"patient": patient}, order_by="time")
        # Events of one block share its time; the chain position is the true order.
        position = {}
        for tx_id, _ in rows:
            stored = store.get_tx(tx_id)
            position[tx_id] = (stored.height, stored.index) if stored else (0, 0)
        rows.sort(key=lambda item: position[item[0]])
        for tx_id, row in rows:
            record = store.get("record", row["record"]) if row["record"] else None
            actor = row["actor"]
            label = "the patient" if actor == patient else labels.get(actor, actor)
            entries.append(
                AuditEntry(
                    tx_id=tx_id,
                    time=row["time"],
                    kind=row["kind"],
                    actor=actor,
                    actor_label=label,
                    actor_org=row["actor_org"],
                    record=row["record"],
                    resource_type=record["resource_type"] if record else None,
                    version=row["version"],
                    allowed=row["allowed"],
                    basis=row["basis"],
                    basis_ref=row["basis_ref"],
                    purpose=row["purpose"],
                )
            )
        return entries
