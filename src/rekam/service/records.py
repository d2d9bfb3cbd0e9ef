"""Writing and reading records: encryption, key wrapping, and the audited read path.

Every read goes through ``RecordService.read``: it chooses a basis at the current chain
state, commits the access event (allowed or denied) and only then decrypts. A crash after the
event commits and before the content is returned loses nothing but the reply; an access is
never returned without its event on the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rekam.consent.policy import Basis, choose_basis, purpose_for
from rekam.crypto import DecryptionError, open_sealed, seal, wrap_key
from rekam.encoding import b64d, canonical
from rekam.ledger.block import Block
from rekam.ledger.rules import authorship
from rekam.ledger.state import Row, StateReader
from rekam.ledger.tx import RESOURCE_TYPES, id_kind, new_id
from rekam.ledger.validate import BlockResult, TxResult
from rekam.records.fhir import FhirValidationError, content_bytes, validate_resource
from rekam.service.errors import (
    AccessDenied,
    ContentUnavailable,
    InvalidContentError,
    NotFoundError,
    RejectedError,
)
from rekam.service.ports import ChainStore, RefreshingBlobStore

if TYPE_CHECKING:
    from rekam.service.workspace import Actor, Workspace

DEK_INFO = b"rekam/dek/v1\n"


def require(store: StateReader, table: str, key: str) -> Row:
    """A state row that must exist; NotFoundError (naming the table only) when it does not."""
    row = store.get(table, key)
    if row is None:
        raise NotFoundError(f"unknown {table.replace('_', ' ')}")
    return row


def binding(record: str, version: int, patient: str) -> bytes:
    """The associated data that binds ciphertext and wrapped keys to one record version."""
    return canonical({"patient": patient, "record": record, "version": version})


@dataclass(frozen=True)
class WriteResult:
    """A committed record version."""

    record: str
    version: int
    tx_id: str
    content_hash: str


@dataclass(frozen=True)
class ReadResult:
    """Decrypted content of a record version and the access event that allowed it."""

    record: str
    version: int
    resource_type: str
    resource: dict[str, Any]
    access_tx: str
    basis: Basis


class RecordService:
    """Write new record versions and read them with audit."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    @property
    def _store(self) -> ChainStore:
        return self.ws.node.store

    # -- helpers --------------------------------------------------------------------------

    def _known(self, table: str, key: str) -> Row:
        """A patient or record row; NotFoundError for an unknown or malformed id."""
        if id_kind(key) != table:
            raise NotFoundError(f"unknown {table}")
        return require(self._store, table, key)

    def _patient(self, patient_id: str) -> Row:
        return self._known("patient", patient_id)

    def _record(self, record_id: str) -> Row:
        return self._known("record", record_id)

    def _candidates(self, accessor: str, patient_id: str) -> tuple[list[str], list[str]]:
        """Consents and emergency accesses of this patient that might cover this accessor."""
        grantees = [accessor]
        member = self._store.get("member", accessor) if id_kind(accessor) == "member" else None
        if member is not None:
            grantees.append(member["org"])
        consents = [
            key
            for key, row in self._store.query("consent", {"patient": patient_id})
            if row["grantee"] in grantees and not row["revoked"]
        ]
        emergencies = [
            key
            for key, _ in self._store.query(
                "emergency", {"patient": patient_id, "member": accessor}
            )
        ]
        return consents, emergencies

    def basis_for(
        self, accessor: str, patient_id: str, record: Row | None, resource_type: str, purpose: str
    ) -> Basis | None:
        """The basis this accessor has now for a patient's data of a type, or None."""
        patient = self._patient(patient_id)
        consents, emergencies = self._candidates(accessor, patient_id)
        return choose_basis(
            self._store,
            accessor,
            patient_id,
            patient,
            record,
            resource_type,
            purpose,
            self.ws.node.clock(),
            consents,
            emergencies,
        )

    def recipients(
        self, patient_id: str, patient: Row, author: str, resource_type: str
    ) -> dict[str, str]:
        """Who gets a wrapped key for new content: patient, author, their orgs, consent grantees."""
        store = self._store
        wanted = {patient_id: patient["enc_key"]}
        member = store.get("member", author)
        if member is not None:
            wanted[author] = member["enc_key"]
            wanted.setdefault(member["org"], require(store, "org", member["org"])["enc_key"])
        home = require(store, "org", patient["home_org"])
        wanted.setdefault(patient["home_org"], home["enc_key"])
        now = self.ws.node.clock()
        for _, consent in store.query("consent", {"patient": patient_id}):
            if consent["revoked"] or not consent["start"] <= now < consent["end"]:
                continue
            if (
                consent["resource_types"] != ["*"]
                and resource_type not in consent["resource_types"]
            ):
                continue
            table = "member" if consent["grantee_kind"] == "member" else "org"
            row = store.get(table, consent["grantee"])
            if row is not None:
                wanted.setdefault(consent["grantee"], row["enc_key"])
        return wanted

    # -- write ----------------------------------------------------------------------------

    def write(
        self,
        author: Actor,
        resource: Mapping[str, Any] | bytes | str,
        *,
        patient: str,
        record: str | None = None,
        expected_type: str | None = None,
    ) -> WriteResult:
        """Validate FHIR content, encrypt it, wrap its key and commit a new record version."""
        try:
            validated = validate_resource(resource, expected_type)
        except FhirValidationError as exc:
            raise InvalidContentError("invalid FHIR resource", exc.issues) from None
        if validated.resource_type not in RESOURCE_TYPES:
            raise InvalidContentError(f"{validated.resource_type} cannot be stored as a record")
        patient_row = self._patient(patient)
        head = None
        if record is not None:
            head = self._record(record)
            if head["patient"] != patient or head["resource_type"] != validated.resource_type:
                raise InvalidContentError("a new version must keep the record's patient and type")
            if head["erased"]:
                raise ContentUnavailable("the record was erased")
        record_id = record or new_id("record")
        version = 1 if head is None else int(head["version"]) + 1
        # The ledger accepts a write under any consent whose purpose allows writing.
        basis = None
        for purpose in ("treatment", "referral", "dispensing"):
            basis = self.basis_for(author.id, patient, head, validated.resource_type, purpose)
            if basis is not None:
                break
        if basis is None:
            raise AccessDenied("no basis to write for this patient")
        plaintext = content_bytes(validated)
        aad = binding(record_id, version, patient)
        dek, ciphertext = seal(plaintext, aad)
        digest = self.ws.node.blobs.put(ciphertext)
        keys = [
            (record_id, version, who, wrap_key(dek, b64d(enc), DEK_INFO + aad))
            for who, enc in self.recipients(
                patient, patient_row, author.id, validated.resource_type
            ).items()
        ]
        body = {
            "record": record_id,
            "version": version,
            "patient": patient,
            "resource_type": validated.resource_type,
            "content_hash": digest,
            "content_size": len(ciphertext),
            "basis": basis.kind,
            "basis_ref": basis.ref,
        }
        # The wrapped keys are stored with the block, in the same database transaction.
        try:
            result = self.ws.submit(author, "record.write", body, wrapped_keys=keys)
        except RejectedError:
            # Nothing points at this content: remove it so a refused write leaves no trace.
            self.ws.node.blobs.delete(digest)
            raise
        if validated.resource_type == "Patient":
            # The new head replaces the patient's search entries (a corrected name or NIK).
            self.ws.patient_index.update(patient, validated.data)
        return WriteResult(record_id, version, result.tx_id, digest)

    # -- read -----------------------------------------------------------------------------

    def read(
        self,
        reader: Actor,
        record_id: str,
        version: int | None = None,
        purpose: str = "treatment",
    ) -> ReadResult:
        """Check policy, commit the access event, then decrypt and return the content."""
        record = self._record(record_id)
        patient_id = str(record["patient"])
        version = int(record["version"]) if version is None else version
        if self._store.get("record_version", f"{record_id}@{version}") is None:
            raise NotFoundError("unknown record version")
        basis = None
        if not record["erased"]:
            written_by = authorship(self._store, record_id, version)
            basis = self.basis_for(
                reader.id, patient_id, written_by, record["resource_type"], purpose
            )
        body = {
            "patient": patient_id,
            "record": record_id,
            "version": version,
            "accessor": reader.id,
            "allowed": basis is not None,
            "basis": basis.kind if basis else "none",
            "basis_ref": basis.ref if basis else None,
            "purpose": purpose_for(basis, purpose) if basis else purpose,
        }
        result = self.ws.submit(reader, "access.read", body)
        if basis is None:
            if record["erased"]:
                raise ContentUnavailable("the record was erased")
            raise AccessDenied("no basis to read this record", result.tx_id)
        resource = self._decrypt(reader, record_id, version, patient_id)
        if record["resource_type"] == "Patient" and version == int(record["version"]):
            # The reader has just seen these identifiers under an audited read: indexing them
            # reveals nothing new and lets search find patients registered on other nodes.
            self.ws.patient_index.update(patient_id, resource)
        return ReadResult(
            record_id, version, str(record["resource_type"]), resource, result.tx_id, basis
        )

    def _decrypt(
        self, reader: Actor, record_id: str, version: int, patient_id: str
    ) -> dict[str, Any]:
        row = require(self._store, "record_version", f"{record_id}@{version}")
        ciphertext = self.ws.node.blobs.get(row["content_hash"])
        if ciphertext is None or hashlib.sha256(ciphertext).hexdigest() != row["content_hash"]:
            raise ContentUnavailable("content is missing or does not match the chain")
        aad = binding(record_id, version, patient_id)
        try:
            dek = self._unwrap(reader, record_id, version, patient_id, aad)
        except ContentUnavailable:
            # On a network node the key may have been wrapped for this reader since the
            # content came (a later consent): ask the content's source once more.
            blobs = self.ws.node.blobs
            if not (isinstance(blobs, RefreshingBlobStore) and blobs.refresh(row["content_hash"])):
                raise
            dek = self._unwrap(reader, record_id, version, patient_id, aad)
        try:
            plaintext = open_sealed(dek, ciphertext, aad)
        except DecryptionError:
            raise ContentUnavailable("content cannot be decrypted") from None
        resource: dict[str, Any] = json.loads(plaintext)
        return resource

    def _unwrap(
        self, reader: Actor, record_id: str, version: int, patient_id: str, aad: bytes
    ) -> bytes:
        """A content key this node can open for the reader, the reader's org or the custodian."""
        candidates = [(reader.id, reader.identity)]
        member = self._store.get("member", reader.id) if reader.kind == "member" else None
        orgs = self.ws.org_identities
        if member is not None and member["org"] in orgs:
            candidates.append((member["org"], orgs[member["org"]]))
        # The patient's home organisation is the custodian of their keys: once the chain has
        # accepted the access, it opens the key for the reader (emergency, organisation grants).
        home = self._patient(patient_id)["home_org"]
        if home in orgs:
            candidates.append((home, orgs[home]))
        for who, identity in candidates:
            wrapped = self._store.get_wrapped_key(record_id, version, who)
            if wrapped is None:
                continue
            try:
                return identity.unwrap(wrapped, DEK_INFO + aad)
            except DecryptionError:
                continue
        raise ContentUnavailable("no key for this reader is held by this node")

    def unwrap_as(
        self, holder: Actor, record_id: str, version: int, patient_id: str
    ) -> bytes | None:
        """The content key of a version, if ``holder`` has a wrapped key for it (for re-sharing)."""
        wrapped = self._store.get_wrapped_key(record_id, version, holder.id)
        if wrapped is None:
            return None
        try:
            return holder.identity.unwrap(
                wrapped, DEK_INFO + binding(record_id, version, patient_id)
            )
        except DecryptionError:
            return None

    # -- erasure --------------------------------------------------------------------------

    def _shred(self, record_id: str) -> None:
        head = self._store.get("record", record_id)
        if head is not None and head["resource_type"] == "Patient":
            # Erased demographics must not stay findable by name or NIK on this node.
            self.ws.patient_index.remove(str(head["patient"]))
        for _, row in self._store.query("record_version", {"record": record_id}):
            self.ws.node.blobs.delete(row["content_hash"])
        self._store.delete_wrapped_keys(record=record_id)

    def on_block(self, block: Block, result: BlockResult) -> None:
        """After a block commits: shred the content and keys of erased records."""
        for tx, res in zip(result.txs, result.results, strict=True):
            if tx is not None and res.valid and tx.type == "record.erase":
                self._shred(str(tx.body["record"]))

    def reconcile_erasures(self) -> None:
        """At start-up, finish shredding records whose erasure committed before a crash."""
        for key, _ in self._store.query("record", {"erased": True}):
            self._shred(key)

    def erase(self, actor: Actor, record_id: str, reason: str = "patient_request") -> TxResult:
        """Erase a record (patient or home organisation): content and keys are destroyed."""
        self._record(record_id)
        return self.ws.submit(actor, "record.erase", {"record": record_id, "reason": reason})

    # -- pharmacy -------------------------------------------------------------------------

    def dispense(
        self,
        pharmacist: Actor,
        prescription: str,
        dispense_resource: Mapping[str, Any] | None = None,
    ) -> tuple[TxResult, WriteResult | None]:
        """A pharmacist dispenses a shared prescription, optionally with a MedicationDispense."""
        record = self._record(prescription)
        member = self._store.get("member", pharmacist.id)
        if member is None:
            raise NotFoundError("unknown member")
        basis = self.basis_for(
            pharmacist.id, record["patient"], record, "MedicationRequest", "dispensing"
        )
        if basis is None:
            raise AccessDenied("the prescription is not shared with this pharmacy")
        written = None
        if dispense_resource is not None:
            written = self.write(
                pharmacist,
                dispense_resource,
                patient=record["patient"],
                expected_type="MedicationDispense",
            )
        body = {
            "prescription": prescription,
            "version": int(record["version"]),
            "pharmacy": member["org"],
            "dispense_record": written.record if written else None,
            "basis": basis.kind,
            "basis_ref": basis.ref,
        }
        return self.ws.submit(pharmacist, "prescription.dispense", body), written

    def for_patient(self, patient_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The heads of a patient's records (metadata only; no content)."""
        self._patient(patient_id)
        return list(self._store.query("record", {"patient": patient_id}, order_by="created"))
