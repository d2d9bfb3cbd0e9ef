"""Consent and emergency access: grants, revocations, break-glass, and key sharing.

A grant is a transaction signed by the patient or by their home organisation. Once it
commits, the node that holds the patient's home organisation key (the custodian) wraps the
content keys of the records in scope for the grantee; a revocation deletes the grantee's
wrapped keys. Revocation stops future reads; it cannot take back what was already read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rekam.crypto import DecryptionError, wrap_key
from rekam.encoding import b64d
from rekam.ledger.block import Block
from rekam.ledger.tx import EMERGENCY_REASONS, RESOURCE_TYPES, id_kind, new_id
from rekam.ledger.validate import BlockResult, TxResult
from rekam.service.errors import NotFoundError
from rekam.service.ports import ChainStore
from rekam.service.records import DEK_INFO, binding, require

if TYPE_CHECKING:
    from rekam.service.workspace import Actor, Workspace

DAY_MS = 24 * 3600 * 1000


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
