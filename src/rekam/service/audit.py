"""Access events: a patient's own history, and the event search of admins and auditors.

Events are the ``event`` state rows the ledger rules write (pseudonymous ids and codes,
never content). A patient sees their own; an organisation admin searches the events made by
their organisation's members; an auditor searches every organisation's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rekam.ledger.tx import id_kind
from rekam.service.errors import InvalidContentError, NotFoundError
from rekam.service.ports import ChainStore

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
    "key.rotate": "keys replaced",
    "consent.request": "access requested",
    "consent.decline": "request declined",
}
# Every kind of event row the rules write, for filters.
EVENT_KINDS = (
    "access.read",
    "record.write",
    "record.erase",
    "emergency.open",
    "prescription.dispense",
    "consent.grant",
    "consent.revoke",
    "consent.request",
    "consent.decline",
    "patient.register",
    "key.rotate",
)
PAGE_SIZE = 50


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
    patient: str | None = None

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
            "patient": self.patient,
            "emergency": self.emergency,
        }


@dataclass(frozen=True)
class EventFilter:
    """Which events to list; None means any. ``since``/``until`` are ms, until exclusive."""

    org: str | None = None
    kind: str | None = None
    patient: str | None = None
    since: int | None = None
    until: int | None = None

    def check(self) -> None:
        """Raise InvalidContentError for a value that cannot match any event."""
        if self.org is not None and id_kind(self.org) != "org":
            raise InvalidContentError("organisation must be an organisation id")
        if self.patient is not None and id_kind(self.patient) != "patient":
            raise InvalidContentError("patient must be a pseudonymous patient id")
        if self.kind is not None and self.kind not in EVENT_KINDS:
            raise InvalidContentError("unknown event kind")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidContentError("the period ends before it starts")


@dataclass(frozen=True)
class EventPage:
    """One page of a search, newest first."""

    entries: list[AuditEntry]
    page: int
    pages: int
    total: int


class AuditService:
    """Read the events the chain holds about a patient."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def history(self, patient: str) -> list[AuditEntry]:
        """Every event about the patient's data, oldest first."""
        store = self.ws.node.store
        if store.get("patient", patient) is None:
            raise NotFoundError("unknown patient")
        rows = store.query("event", {"patient": patient}, order_by="time")
        # Events of one block share its time; the chain position is the true order.
        position = _chain_positions(store, rows)
        rows.sort(key=lambda item: position[item[0]])
        return _entries(store, rows, self.ws.datadir.labels())

    def search(self, where: EventFilter, page: int = 1, page_size: int = PAGE_SIZE) -> EventPage:
        """Events matching ``where``, newest first, one page of them.

        The one query behind both the admin page (``where.org`` is the admin's organisation)
        and the auditor's network-wide search (any organisation). Each event carries
        pseudonymous ids and codes only; record content is never touched.
        """
        where.check()
        if page < 1 or not 1 <= page_size <= 500:
            raise InvalidContentError("page out of range")
        store = self.ws.node.store
        equal: dict[str, Any] = {}
        if where.org is not None:
            equal["actor_org"] = where.org
        if where.kind is not None:
            equal["kind"] = where.kind
        if where.patient is not None:
            equal["patient"] = where.patient
        rows = [
            (tx_id, row)
            for tx_id, row in store.query("event", equal, order_by="time")
            if (where.since is None or row["time"] >= where.since)
            and (where.until is None or row["time"] < where.until)
        ]
        total = len(rows)
        pages = max(1, -(-total // page_size))
        page = min(page, pages)
        # Newest first; events of one block share its time, so the chain position decides.
        rows.reverse()
        chunk = rows[(page - 1) * page_size : page * page_size]
        position = _chain_positions(store, chunk)
        chunk.sort(key=lambda item: (item[1]["time"], position[item[0]]), reverse=True)
        entries = _entries(store, chunk, self.ws.datadir.labels())
        return EventPage(entries, page, pages, total)


def _chain_positions(
    store: ChainStore, rows: list[tuple[str, dict[str, Any]]]
) -> dict[str, tuple[int, int]]:
    """Each event's (height, index) in the chain, by its transaction id."""
    position = {}
    for tx_id, _ in rows:
        stored = store.get_tx(tx_id)
        position[tx_id] = (stored.height, stored.index) if stored else (0, 0)
    return position


def _entries(
    store: ChainStore, rows: list[tuple[str, dict[str, Any]]], labels: dict[str, str]
) -> list[AuditEntry]:
    """Event rows as entries, with actors' display labels and the records' types."""
    entries = []
    for tx_id, row in rows:
        record = store.get("record", row["record"]) if row["record"] else None
        actor = row["actor"]
        entries.append(
            AuditEntry(
                tx_id=tx_id,
                time=row["time"],
                kind=row["kind"],
                actor=actor,
                actor_label="the patient" if actor == row["patient"] else labels.get(actor, actor),
                actor_org=row["actor_org"],
                record=row["record"],
                resource_type=record["resource_type"] if record else None,
                version=row["version"],
                allowed=row["allowed"],
                basis=row["basis"],
                basis_ref=row["basis_ref"],
                purpose=row["purpose"],
                patient=row["patient"],
            )
        )
    return entries
