"""Consent and emergency access: grants, revocations, break-glass, access requests, and key
sharing.

A grant is a transaction signed by the patient or by their home organisation. Once it
commits, the node that holds the patient's home organisation key (the custodian) wraps the
content keys of the records in scope for the grantee; a revocation deletes the grantee's
wrapped keys. Revocation stops future reads; it cannot take back what was already read.

A clinician asks for access with a ``consent.request`` (scope, purpose and duration as codes;
an event the patient sees). The patient answers with a normal ``consent.grant`` of exactly
the requested scope, or a ``consent.decline``; an unanswered request lapses after
:data:`REQUEST_OPEN_DAYS` days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rekam.crypto import DecryptionError, wrap_key
from rekam.encoding import b64d
from rekam.ledger.block import Block
from rekam.ledger.tx import (
    CONSENT_PURPOSES,
    EMERGENCY_REASONS,
    RESOURCE_TYPES,
    Transaction,
    id_kind,
    new_id,
)
from rekam.ledger.validate import BlockResult, TxResult
from rekam.service.errors import AccessDenied, InvalidContentError, NotFoundError
from rekam.service.ports import ChainStore
from rekam.service.records import DEK_INFO, binding, require

if TYPE_CHECKING:
    from rekam.service.workspace import Actor, Workspace

DAY_MS = 24 * 3600 * 1000
# How long a clinician's request waits for an answer before it lapses (a node-side reading
# of the chain: the ledger keeps every request; this only decides what is listed as open).
REQUEST_OPEN_DAYS = 14


@dataclass(frozen=True)
class AccessRequest:
    """A clinician's request for access to a patient's data, and where it stands."""

    tx_id: str
    time: int
    patient: str
    requester: str
    requester_org: str | None
    resource_types: list[str]
    purpose: str
    days: int
    status: str  # open, granted, declined or expired
    consent: str | None  # the grant that answered it

    @property
    def open(self) -> bool:
        """Still waiting for the patient's answer."""
        return self.status == "open"

    @property
    def expires(self) -> int:
        """When an unanswered request stops being listed as open (ms)."""
        return self.time + REQUEST_OPEN_DAYS * DAY_MS


@dataclass(frozen=True)
class Grant:
    """A committed consent."""

    consent: str
    tx_id: str


class ConsentService:
    """Grant and revoke consent, open emergency access, and keep wrapped keys in step."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    @property
    def _store(self) -> ChainStore:
        return self.ws.node.store

    def grant(
        self,
        actor: Actor,
        patient: str,
        grantee: str,
        *,
        resource_types: Sequence[str] = ("*",),
        purpose: str = "treatment",
        days: int = 30,
        start: int | None = None,
    ) -> Grant:
        """Grant a member or organisation access to a patient's records of some types."""
        if self._store.get("patient", patient) is None:
            raise NotFoundError("unknown patient")
        types = ["*"] if list(resource_types) == ["*"] else sorted(set(resource_types))
        unknown = [t for t in types if t != "*" and t not in RESOURCE_TYPES]
        if unknown:
            raise NotFoundError(f"unknown resource types: {', '.join(unknown)}")
        begin = self.ws.node.clock() if start is None else start
        consent = new_id("consent")
        body = {
            "consent": consent,
            "patient": patient,
            "grantee": grantee,
            "resource_types": types,
            "purpose": purpose,
            "start": begin,
            "end": begin + days * DAY_MS,
        }
        result = self.ws.submit(actor, "consent.grant", body)
        return Grant(consent, result.tx_id)

    def revoke(self, actor: Actor, consent: str) -> TxResult:
        """Revoke a consent: future reads stop and the grantee's wrapped keys are deleted."""
        if self._store.get("consent", consent) is None:
            raise NotFoundError("unknown consent")
        return self.ws.submit(actor, "consent.revoke", {"consent": consent})

    def emergency(
        self, member: Actor, patient: str, reason: str, minutes: int = 60
    ) -> tuple[str, TxResult]:
        """Break the glass: time-limited access for a doctor or nurse, with a coded reason."""
        if reason not in EMERGENCY_REASONS:
            raise NotFoundError(f"reason must be one of {', '.join(EMERGENCY_REASONS)}")
        if self._store.get("patient", patient) is None:
            raise NotFoundError("unknown patient")
        access = new_id("emergency")
        body = {
            "access": access,
            "patient": patient,
            "member": member.id,
            "reason": reason,
            "expires": self.ws.node.clock() + minutes * 60 * 1000,
        }
        return access, self.ws.submit(member, "emergency.open", body)

    def active_for_patient(self, patient: str) -> list[tuple[str, dict[str, Any]]]:
        """A patient's consents that are neither revoked nor expired."""
        now = self.ws.node.clock()
        return [
            (key, row)
            for key, row in self._store.query("consent", {"patient": patient}, order_by="start")
            if not row["revoked"] and row["start"] <= now < row["end"]
        ]

    # -- access requests ----------------------------------------------------------------

    def request(
        self,
        member: Actor,
        patient: str,
        *,
        resource_types: Sequence[str] = ("*",),
        purpose: str = "treatment",
        days: int = 30,
    ) -> TxResult:
        """A clinical member asks a patient for access; the ledger checks who may ask."""
        if id_kind(patient) != "patient" or self._store.get("patient", patient) is None:
            raise NotFoundError("unknown patient")
        types = ["*"] if "*" in resource_types else sorted(set(resource_types))
        if not types or any(t != "*" and t not in RESOURCE_TYPES for t in types):
            raise InvalidContentError("resource types must be * or known FHIR resource types")
        if purpose not in CONSENT_PURPOSES:
            raise InvalidContentError(f"purpose must be one of {', '.join(CONSENT_PURPOSES)}")
        if not 1 <= days <= 365:
            raise InvalidContentError("the requested duration is 1 to 365 days")
        body = {"patient": patient, "resource_types": types, "purpose": purpose, "days": days}
        return self.ws.submit(member, "consent.request", body)

    def _request_of(self, tx_id: str, row: dict[str, Any], now: int) -> AccessRequest:
        stored = self._store.get_tx(tx_id)
        if stored is None:
            raise NotFoundError("unknown request")
        body = Transaction.decode(stored.raw).body
        types = list(body["resource_types"])
        consent = None
        if row["allowed"] is False:
            status = "declined"
        else:
            consent = self._answer(row, types, str(body["purpose"]))
            if consent is not None:
                status = "granted"
            elif now >= row["time"] + REQUEST_OPEN_DAYS * DAY_MS:
                status = "expired"
            else:
                status = "open"
        return AccessRequest(
            tx_id=tx_id,
            time=row["time"],
            patient=row["patient"],
            requester=row["actor"],
            requester_org=row["actor_org"],
            resource_types=types,
            purpose=str(body["purpose"]),
            days=int(body["days"]),
            status=status,
            consent=consent,
        )

    def _answer(self, request: dict[str, Any], types: list[str], purpose: str) -> str | None:
        """A grant made after the request to the requester, for its purpose, covering its
        scope: the request is answered (whether or not it was granted from the request)."""
        for key, consent in self._store.query(
            "consent", {"patient": request["patient"], "grantee": request["actor"]}
        ):
            covers = consent["resource_types"] == ["*"] or (
                types != ["*"] and set(types) <= set(consent["resource_types"])
            )
            if consent["purpose"] == purpose and covers and consent["start"] >= request["time"]:
                return key
        return None

    def requests_for_patient(self, patient: str) -> list[AccessRequest]:
        """Every request made to a patient, newest first."""
        now = self.ws.node.clock()
        rows = self._store.query("event", {"patient": patient, "kind": "consent.request"})
        found = [self._request_of(tx_id, row, now) for tx_id, row in rows]
        return sorted(found, key=lambda r: (r.time, r.tx_id), reverse=True)

    def requests_by(self, member: str) -> list[AccessRequest]:
        """Every request a member made, newest first."""
        now = self.ws.node.clock()
        rows = self._store.query("event", {"actor": member, "kind": "consent.request"})
        found = [self._request_of(tx_id, row, now) for tx_id, row in rows]
        return sorted(found, key=lambda r: (r.time, r.tx_id), reverse=True)

    def _open_request(self, patient: str, request: str) -> AccessRequest:
        row = self._store.get("event", request)
        if row is None or row["kind"] != "consent.request" or row["patient"] != patient:
            raise NotFoundError("unknown request")
        found = self._request_of(request, dict(row), self.ws.node.clock())
        if not found.open:
            raise AccessDenied(f"the request is {found.status} already")
        return found

    def grant_request(self, actor: Actor, patient: str, request: str) -> Grant:
        """Answer a request with a consent of exactly the requested scope, purpose and days."""
        found = self._open_request(patient, request)
        return self.grant(
            actor,
            patient,
            found.requester,
            resource_types=found.resource_types,
            purpose=found.purpose,
            days=found.days,
        )

    def decline_request(self, actor: Actor, patient: str, request: str) -> TxResult:
        """Decline a request: a ``consent.decline`` on the chain closes it."""
        self._open_request(patient, request)
        return self.ws.submit(actor, "consent.decline", {"request": request})

    # -- key sharing after commit ---------------------------------------------------------

    def share_keys(self, consent_id: str) -> int:
        """Wrap the content keys in a consent's scope for its grantee; returns how many."""
        store = self._store
        consent = store.get("consent", consent_id)
        if consent is None or consent["revoked"]:
            return 0
        patient = require(store, "patient", consent["patient"])
        custodian = self.ws.org_identities.get(patient["home_org"])
        if custodian is None:
            return 0  # another node holds this patient's custodian key
        table = "member" if id_kind(consent["grantee"]) == "member" else "org"
        grantee = store.get(table, consent["grantee"])
        if grantee is None:
            return 0
        types = consent["resource_types"]
        entries = []
        for record_id, record in store.query("record", {"patient": consent["patient"]}):
            if record["erased"] or (types != ["*"] and record["resource_type"] not in types):
                continue
            for _, version in store.query("record_version", {"record": record_id}):
                aad = binding(record_id, version["version"], consent["patient"])
                wrapped = store.get_wrapped_key(record_id, version["version"], patient["home_org"])
                if wrapped is None:
                    continue
                try:
                    dek = custodian.unwrap(wrapped, DEK_INFO + aad)
                except DecryptionError:
                    continue
                entries.append(
                    (
                        record_id,
                        version["version"],
                        consent["grantee"],
                        wrap_key(dek, b64d(grantee["enc_key"]), DEK_INFO + aad),
                    )
                )
        store.put_wrapped_keys(entries)
        return len(entries)

    def _unshare(self, consent_id: str) -> None:
        store = self._store
        consent = store.get("consent", consent_id)
        if consent is None:
            return
        for record_id, _ in store.query("record", {"patient": consent["patient"]}):
            store.delete_wrapped_keys(record=record_id, recipient=consent["grantee"])
        # Other consents of the same grantee may still cover some records: share those again.
        for other, row in self.active_for_patient(consent["patient"]):
            if row["grantee"] == consent["grantee"]:
                self.share_keys(other)

    def on_block(self, block: Block, result: BlockResult) -> None:
        """After a block commits: share keys for new grants, delete them for revocations."""
        for tx, res in zip(result.txs, result.results, strict=True):
            if tx is None or not res.valid:
                continue
            if tx.type == "consent.grant":
                self.share_keys(str(tx.body["consent"]))
            elif tx.type == "consent.revoke":
                self._unshare(str(tx.body["consent"]))
