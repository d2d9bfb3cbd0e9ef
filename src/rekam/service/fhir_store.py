"""FHIR R4 use cases over the ledger: create, read, version history, search, import, export.

Every FHIR resource of a clinical type is a record: its FHIR id is the record id (``r-...``),
except Patient, whose FHIR id is the patient's pseudonymous id (``p-...``). Writes go
through :class:`~rekam.service.records.RecordService` (validated, encrypted, committed);
reads go through its audited read path, so every read, search hit and denial is an access
event on the chain before any content is decrypted.

Search over encrypted content is decrypt-and-filter over the records the caller may read:
candidates are chosen from chain metadata (patient, type, update time), each candidate the
caller may not read is attempted anyway so the denial is recorded, and content filters
(``code``, ``date``) are applied after the audited decryption. Patient identifiers (a NIK,
a medical record number) and names are found through the node-local keyed
:class:`~rekam.service.patient_index.PatientIndex` (HMAC-SHA256 under a node secret), never
on the chain; the index only yields candidate patients, whose Patient records are then read
through the audited path.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rekam.ledger.rules import CARE_PURPOSES, CLINICAL_ROLES, REGISTRAR_ROLES, authorship
from rekam.ledger.tx import RESOURCE_TYPES, id_kind
from rekam.records.fhir import (
    FhirValidationError,
    json_references,
    map_references,
    patient_reference,
    references,
    validate_resource,
)
from rekam.service.errors import (
    AccessDenied,
    ContentUnavailable,
    InvalidContentError,
    NotFoundError,
    ServiceError,
)
from rekam.service.patient_index import PatientIndex, name_tokens
from rekam.service.satusehat import SatusehatMapping, to_satusehat

if TYPE_CHECKING:
    from rekam.service.workspace import Actor, Workspace

RECORD_TYPES = frozenset(RESOURCE_TYPES)
VIEW_TYPES = frozenset({"Practitioner", "Organization", "Consent", "AuditEvent", "Provenance"})
FHIR_TYPES = RECORD_TYPES | VIEW_TYPES
LEDGER_TX_EXT = "https://rekam.invalid/fhir/StructureDefinition/ledger-transaction"
RECEIPT_EXT = "https://rekam.invalid/fhir/StructureDefinition/ledger-receipt"
DCM = "http://dicom.nema.org/resources/ontology/DCM"

# Which element each type's ``date`` search parameter reads (R4 search parameter paths).
DATE_PATHS: Mapping[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "recordedDate"),
    "Encounter": ("period.start",),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "Immunization": ("occurrenceDateTime",),
    "MedicationRequest": ("authoredOn",),
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
    "DocumentReference": ("date",),
    "ServiceRequest": ("authoredOn",),
}
# Which element each type's ``code`` search parameter reads.
CODE_PATHS: Mapping[str, tuple[str, ...]] = {
    "MedicationRequest": ("medicationCodeableConcept",),
    "MedicationDispense": ("medicationCodeableConcept",),
    "Immunization": ("vaccineCode",),
    "DocumentReference": ("type",),
    "Encounter": ("type",),
}
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


class SearchError(InvalidContentError):
    """A search cannot be run as asked (missing or malformed parameters)."""


class UnknownReferenceError(InvalidContentError):
    """Content references something this network does not hold; nothing was written."""


@dataclass(frozen=True)
class FhirVersion:
    """One version of a resource as a client sees it: content with id and meta."""

    resource_type: str
    fhir_id: str
    version: int
    tx_id: str
    time: int
    resource: dict[str, Any]


@dataclass
class SearchParams:
    """Parsed search parameters (the API layer parses the query string into this)."""

    patient: str | None = None
    ids: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    date: list[tuple[str, str]] = field(default_factory=list)
    last_updated: list[tuple[str, str]] = field(default_factory=list)
    identifier: str | None = None
    name: str | None = None
    count: int = 20
    offset: int = 0


@dataclass(frozen=True)
class SearchResult:
    """A page of matches and how many matched in all."""

    hits: list[FhirVersion]
    total: int


def iso(ms: int) -> str:
    """A FHIR instant for a chain time in milliseconds."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def split_prefix(value: str) -> tuple[str, str]:
    """Split a FHIR date parameter into its comparison prefix and value."""
    if value[:2] in _PREFIXES and len(value) > 2 and value[2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _as_instant(value: str, upper: bool) -> datetime | None:
    """A FHIR date/dateTime as an aware datetime; partial dates widen to their range."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}", text):
            text = text + ("-12-31" if upper else "-01-01")
        elif re.fullmatch(r"\d{4}-\d{2}", text):
            year, month = int(text[:4]), int(text[5:])
            if upper:
                nxt = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
                return nxt.replace(microsecond=0) - (nxt - nxt.replace(day=1))
            text = text + "-01"
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return day.replace(hour=23, minute=59, second=59) if upper else day
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        return None


def date_matches(resource_value: str, prefix: str, wanted: str) -> bool:
    """Whether a resource's date satisfies one date parameter (ranges from partial dates)."""
    low, high = _as_instant(resource_value, False), _as_instant(resource_value, True)
    w_low, w_high = _as_instant(wanted, False), _as_instant(wanted, True)
    if low is None or high is None or w_low is None or w_high is None:
        return False
    if prefix == "eq":
        return w_low <= low and high <= w_high
    if prefix == "ne":
        return not (w_low <= low and high <= w_high)
    if prefix in ("gt", "sa"):
        return high > w_high
    if prefix in ("lt", "eb"):
        return low < w_low
    if prefix == "ge":
        return high >= w_low
    if prefix == "le":
        return low <= w_high
    return w_low <= high and low <= w_high  # ap: overlapping


def check_date_param(value: str) -> tuple[str, str]:
    """Parse a date parameter; SearchError when its value is not a FHIR date."""
    prefix, rest = split_prefix(value)
    if _as_instant(rest, False) is None:
        raise SearchError("a date parameter must be a FHIR date or dateTime")
    return prefix, rest


def _path(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def code_matches(data: Mapping[str, Any], resource_type: str, wanted: str) -> bool:
    """Whether any coding of the type's code element matches ``system|code`` or ``code``."""
    system, _, code = wanted.rpartition("|") if "|" in wanted else ("", "", wanted)
    has_system = "|" in wanted
    for dotted in CODE_PATHS.get(resource_type, ("code",)):
        concepts = _path(data, dotted)
        for concept in concepts if isinstance(concepts, list) else [concepts]:
            if not isinstance(concept, Mapping):
                continue
            for coding in concept.get("coding", []):
                if not isinstance(coding, Mapping) or coding.get("code") != code:
                    continue
                if not has_system or coding.get("system", "") == system:
                    return True
    return False


def _strip_server_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A copy without what the server assigns (id, meta.versionId, meta.lastUpdated)."""
    clean = copy.deepcopy(data)
    clean.pop("id", None)
    meta = clean.get("meta")
    if isinstance(meta, dict):
        meta.pop("versionId", None)
        meta.pop("lastUpdated", None)
        if not meta:
            clean.pop("meta")
    return clean


@dataclass(frozen=True)
class BundleOutcome:
    """One entry of a committed transaction Bundle: where the new resource lives."""

    resource_type: str
    fhir_id: str
    version: int
    created: bool
    time: int


class FhirService:
    """FHIR use cases on a workspace: writes become records, reads become access events."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    @property
    def index(self) -> PatientIndex:
        """The node's keyed patient index (filled by the record service, not here)."""
        return self.ws.patient_index

    @property
    def _store(self) -> Any:
        return self.ws.node.store

    # -- ids --------------------------------------------------------------------------------

    def _record_of(self, resource_type: str, fhir_id: str) -> tuple[str, dict[str, Any]]:
        """The record behind a FHIR id of a type; NotFoundError otherwise."""
        if resource_type == "Patient":
            if id_kind(fhir_id) != "patient":
                raise NotFoundError("unknown Patient")
            rows = self._store.query(
                "record", {"patient": fhir_id, "resource_type": "Patient"}, order_by="created"
            )
            if not rows:
                raise NotFoundError("unknown Patient")
            key, row = rows[0]
            return str(key), dict(row)
        if id_kind(fhir_id) != "record":
            raise NotFoundError(f"unknown {resource_type}")
        row = self._store.get("record", fhir_id)
        if row is None or row["resource_type"] != resource_type:
            raise NotFoundError(f"unknown {resource_type}")
        return fhir_id, dict(row)

    def patient_of(self, resource_type: str, fhir_id: str) -> str:
        """The patient a resource belongs to (chain metadata; nothing is read or audited)."""
        return str(self._record_of(resource_type, fhir_id)[1]["patient"])

    def refuse(
        self, actor: Actor, resource_type: str | None, fhir_id: str | None, patient: str
    ) -> int:
        """Put refused reads on the chain (the API refused them by token scope, not consent).

        Covers one resource (all its versions' head) or, without ``fhir_id``, every record of
        the patient of that type (every record when ``resource_type`` is None); returns how
        many denials were committed.
        """
        if fhir_id is not None and resource_type is not None:
            targets = [self._record_of(resource_type, fhir_id)]
        else:
            where = {"patient": patient}
            if resource_type is not None:
                where["resource_type"] = resource_type
            targets = [(str(k), dict(r)) for k, r in self._store.query("record", where)]
        for record_id, row in targets:
            body = {
                "patient": str(row["patient"]),
                "record": record_id,
                "version": int(row["version"]),
                "accessor": actor.id,
                "allowed": False,
                "basis": "none",
                "basis_ref": None,
                "purpose": "own" if actor.id == row["patient"] else "treatment",
            }
            self.ws.submit(actor, "access.read", body)
        return len(targets)

    @staticmethod
    def fhir_id_of(record_id: str, row: Mapping[str, Any]) -> str:
        """The FHIR id a record is served under."""
        return str(row["patient"]) if row["resource_type"] == "Patient" else record_id

    def _version_time(self, record_id: str, version: int) -> tuple[str, int]:
        row = self._store.get("record_version", f"{record_id}@{version}")
        if row is None:
            raise NotFoundError("unknown version")
        return str(row["tx"]), int(row["time"])

    def _present(
        self, record_id: str, row: Mapping[str, Any], version: int, content: Mapping[str, Any]
    ) -> FhirVersion:
        """Content as served: the stored JSON with the server's id and meta."""
        tx_id, time = self._version_time(record_id, version)
        fhir_id = self.fhir_id_of(record_id, row)
        resource: dict[str, Any] = {"resourceType": row["resource_type"], "id": fhir_id}
        for key, value in content.items():
            if key not in ("resourceType", "id", "meta"):
                resource[key] = value
        meta = dict(content.get("meta", {})) if isinstance(content.get("meta"), dict) else {}
        meta.update({"versionId": str(version), "lastUpdated": iso(time)})
        resource["meta"] = meta
        resource = {
            "resourceType": resource.pop("resourceType"),
            "id": resource.pop("id"),
            "meta": resource.pop("meta"),
            **resource,
        }
        return FhirVersion(str(row["resource_type"]), fhir_id, version, tx_id, time, resource)

    # -- authorisation helpers ---------------------------------------------------------------

    def _purpose(self, actor: Actor, patient: str, record_id: str, version: int) -> str:
        """The purpose to claim: the patient's own, else the first care purpose with a basis."""
        if actor.id == patient:
            return "own"
        row = self._store.get("record", record_id)
        written = authorship(self._store, record_id, version)
        for purpose in ("treatment", "dispensing", "referral", "emergency"):
            if self.ws.records.basis_for(actor.id, patient, written, row["resource_type"], purpose):
                return purpose
        return "treatment"

    def _read(self, actor: Actor, record_id: str, version: int | None = None) -> FhirVersion:
        """The audited read of one record version, presented as FHIR."""
        row = self._store.get("record", record_id)
        if row is None:
            raise NotFoundError("unknown record")
        wanted = int(row["version"]) if version is None else version
        if wanted < 1 or wanted > int(row["version"]):
            raise NotFoundError("unknown version")
        purpose = self._purpose(actor, str(row["patient"]), record_id, wanted)
        # A Patient head read here also refreshes the node's patient index (RecordService.read).
        result = self.ws.records.read(actor, record_id, wanted, purpose=purpose)
        return self._present(record_id, row, wanted, result.resource)

    def _may_read(self, actor: Actor, record_id: str, row: Mapping[str, Any]) -> bool:
        """Whether a read of the head version would be allowed now (no side effect)."""
        if row["erased"]:
            return False
        patient, version = str(row["patient"]), int(row["version"])
        if actor.id == patient:
            return True
        written = authorship(self._store, record_id, version)
        return any(
            self.ws.records.basis_for(actor.id, patient, written, row["resource_type"], p)
            for p in ("treatment", "dispensing", "referral", "emergency")
        )

    def may_see_patient_metadata(self, actor: Actor, patient: str) -> bool:
        """Patient, home organisation staff, or a current grantee: may see consents/audit."""
        row = self._store.get("patient", patient)
        if row is None:
            raise NotFoundError("unknown patient")
        if actor.id == patient or actor.id == row["home_org"]:
            return True
        member = self._store.get("member", actor.id)
        if member is None or member["revoked"]:
            return False
        if member["org"] == row["home_org"]:
            return True
        now = self.ws.node.clock()
        return any(
            c["grantee"] in (actor.id, member["org"])
            and not c["revoked"]
            and c["start"] <= now < c["end"]
            for _, c in self._store.query("consent", {"patient": patient})
        )

    # -- references ------------------------------------------------------------------------

    def _check_reference(self, ref: str, patient: str, resolved: Mapping[str, str]) -> None:
        """Refuse a reference to something this network does not know (InvalidContentError)."""
        if ref.startswith("#") or ref.startswith(("http://", "https://")):
            return
        if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
            if ref in resolved:
                return
            raise UnknownReferenceError("a reference names an entry that is not in the Bundle")
        parts = ref.split("/")
        if len(parts) == 4 and parts[2] == "_history":
            parts = parts[:2]
        if len(parts) != 2:
            raise UnknownReferenceError("a reference is neither Type/id, #contained, urn nor URL")
        rtype, rid = parts
        if rtype == "Patient":
            if self._store.get("patient", rid) is None:
                raise UnknownReferenceError("a reference names an unknown Patient")
            if rid != patient:
                raise InvalidContentError("a resource may reference only its own patient")
        elif rtype == "Practitioner":
            if id_kind(rid) != "member" or self._store.get("member", rid) is None:
                raise UnknownReferenceError("a reference names an unknown Practitioner")
        elif rtype == "Organization":
            if id_kind(rid) != "org" or self._store.get("org", rid) is None:
                raise UnknownReferenceError("a reference names an unknown Organization")
        elif rtype in RECORD_TYPES:
            row = self._store.get("record", rid) if id_kind(rid) == "record" else None
            if row is None or row["resource_type"] != rtype:
                raise UnknownReferenceError(f"a reference names an unknown {rtype}")
            if row["patient"] != patient:
                raise InvalidContentError("a resource may reference only its own patient's data")
        else:
            raise UnknownReferenceError("a reference names a resource type this node does not hold")

    def _validated(self, resource: Mapping[str, Any] | bytes, resource_type: str) -> Any:
        try:
            return validate_resource(resource, resource_type)
        except FhirValidationError as exc:
            raise InvalidContentError("invalid FHIR resource", exc.issues) from None

    def _register_actor(self, actor: Actor) -> tuple[Actor, Actor]:
        """Who signs a patient registration (member or their local org) and who writes it."""
        member = self._store.get("member", actor.id)
        if member is None:
            raise AccessDenied("only members register patients")
        if member["role"] in REGISTRAR_ROLES:
            return actor, actor
        if member["org"] in self.ws.org_identities:
            return self.ws.actor(member["org"]), actor
        raise AccessDenied("this member may not register patients")

    # -- writes ----------------------------------------------------------------------------

    def create(
        self, actor: Actor, resource_type: str, resource: Mapping[str, Any] | bytes
    ) -> FhirVersion:
        """Create a resource: a new patient for Patient, else a new record for its patient."""
        validated = self._validated(resource, resource_type)
        if resource_type not in RECORD_TYPES:
            raise InvalidContentError(f"{resource_type} is a read-only view of the ledger")
        data = _strip_server_fields(validated.data)
        if resource_type == "Patient":
            signer, writer = self._register_actor(actor)
            for ref in references(validated):
                self._check_reference(ref, "", {})
            passphrase = secrets.token_urlsafe(24)
            registered, written = self.ws.admin.register_patient(
                signer, passphrase, demographics=data, writer=writer
            )
            # The home organisation is the custodian of the patient's keys (as for the CLI).
            self.ws.datadir.write_secret(registered.id, passphrase)
            assert written is not None
            stored = {**data, "id": registered.id}
            row = self._store.get("record", written.record)
            return self._present(written.record, row, written.version, stored)
        patient = self._patient_of(validated)
        for ref in references(validated):
            self._check_reference(ref, patient, {})
        written = self.ws.records.write(actor, data, patient=patient, expected_type=resource_type)
        row = self._store.get("record", written.record)
        return self._present(written.record, row, written.version, data)

    def _patient_of(self, validated: Any) -> str:
        ref = patient_reference(validated)
        if ref is None:
            raise InvalidContentError("the resource must name its Patient in subject or patient")
        patient = ref.split("/", 1)[1]
        if id_kind(patient) != "patient" or self._store.get("patient", patient) is None:
            raise UnknownReferenceError("a reference names an unknown Patient")
        return patient

    def update(
        self, actor: Actor, resource_type: str, fhir_id: str, resource: Mapping[str, Any] | bytes
    ) -> FhirVersion:
        """Write a new version of an existing resource; the old versions stay readable."""
        validated = self._validated(resource, resource_type)
        if resource_type not in RECORD_TYPES:
            raise InvalidContentError(f"{resource_type} is a read-only view of the ledger")
        if "id" in validated.data and validated.data["id"] != fhir_id:
            raise InvalidContentError("the resource id does not match the URL")
        record_id, row = self._record_of(resource_type, fhir_id)
        patient = str(row["patient"])
        data = _strip_server_fields(validated.data)
        if resource_type == "Patient":
            data = {**data, "id": patient}
        elif self._patient_of(validated) != patient:
            raise InvalidContentError("a new version must keep the resource's patient")
        for ref in references(validated):
            self._check_reference(ref, patient, {})
        written = self.ws.records.write(
            actor, data, patient=patient, record=record_id, expected_type=resource_type
        )
        row = self._store.get("record", record_id)
        return self._present(record_id, row, written.version, data)

    # -- reads -----------------------------------------------------------------------------

    def read(
        self, actor: Actor, resource_type: str, fhir_id: str, version: int | None = None
    ) -> FhirVersion:
        """Read (or vread) a resource through the audited read path."""
        record_id, _ = self._record_of(resource_type, fhir_id)
        return self._read(actor, record_id, version)

    def history(self, actor: Actor, resource_type: str, fhir_id: str) -> list[FhirVersion]:
        """Every version of a resource, newest first (each an audited read)."""
        record_id, row = self._record_of(resource_type, fhir_id)
        return [self._read(actor, record_id, v) for v in range(int(row["version"]), 0, -1)]

    def _candidates(self, patient: str, resource_type: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self._store.query("record", {"patient": patient, "resource_type": resource_type})
        return [(str(k), dict(r)) for k, r in rows if not r["erased"]]

    def search(self, actor: Actor, resource_type: str, params: SearchParams) -> SearchResult:
        """Search one type; every candidate is read (audited) or its denial recorded."""
        patients = self._search_patients(actor, resource_type, params)
        candidates: list[tuple[str, dict[str, Any]]] = []
        for patient in patients:
            candidates.extend(self._candidates(patient, resource_type))
        if params.ids:
            candidates = [(k, r) for k, r in candidates if self.fhir_id_of(k, r) in set(params.ids)]
        for prefix, value in params.last_updated:
            candidates = [
                (k, r) for k, r in candidates if date_matches(iso(int(r["updated"])), prefix, value)
            ]
        candidates.sort(key=lambda item: (-int(item[1]["updated"]), item[0]))
        allowed = []
        for key, row in candidates:
            if self._may_read(actor, key, row):
                allowed.append((key, row))
            else:
                self._record_denial(actor, key)
        content_filtered = bool(params.code or params.date)
        page: list[FhirVersion] = []
        if not content_filtered:
            for key, _ in allowed[params.offset : params.offset + params.count]:
                hit = self._try_read(actor, key)
                if hit is not None:
                    page.append(hit)
            return SearchResult(page, len(allowed))
        matched = []
        for key, _ in allowed:
            hit = self._try_read(actor, key)
            if hit is not None and self._content_matches(hit, params):
                matched.append(hit)
        return SearchResult(matched[params.offset : params.offset + params.count], len(matched))

    def _content_matches(self, hit: FhirVersion, params: SearchParams) -> bool:
        data = hit.resource
        if params.code and not any(code_matches(data, hit.resource_type, c) for c in params.code):
            return False
        for prefix, value in params.date:
            paths = DATE_PATHS.get(hit.resource_type, ())
            values = [v for v in (_path(data, p) for p in paths) if isinstance(v, str)]
            if not values or not date_matches(values[0], prefix, value):
                return False
        return True

    def _try_read(self, actor: Actor, record_id: str) -> FhirVersion | None:
        try:
            return self._read(actor, record_id)
        except (AccessDenied, ContentUnavailable):
            return None

    def _record_denial(self, actor: Actor, record_id: str) -> None:
        """Attempt the read so the chain records the denial; nothing is returned."""
        try:
            self._read(actor, record_id)
        except (AccessDenied, ContentUnavailable):
            return

    def _search_patients(self, actor: Actor, resource_type: str, params: SearchParams) -> list[str]:
        if params.identifier is not None or params.name is not None:
            if resource_type != "Patient":
                raise SearchError("identifier and name are searchable on Patient only")
            found: set[str] | None = None
            if params.identifier is not None:
                found = set(self.index.find_identifier(params.identifier))
            if params.name is not None:
                if not name_tokens(params.name):
                    raise SearchError("name needs at least one letter or digit")
                by_name = set(self.index.find_name(params.name))
                found = by_name if found is None else found & by_name
            return sorted(p for p in found or () if params.patient is None or p == params.patient)
        if params.patient is not None:
            if id_kind(params.patient) != "patient" or not self._store.get(
                "patient", params.patient
            ):
                return []
            return [params.patient]
        if resource_type == "Patient" and params.ids:
            return [p for p in params.ids if id_kind(p) == "patient"]
        if actor.kind == "patient":
            return [actor.id]
        raise SearchError("search needs patient (or subject), or identifier for Patient")

    def everything(self, actor: Actor, patient: str) -> list[FhirVersion]:
        """The patient's Patient resource and every record the caller may read (audited)."""
        if id_kind(patient) != "patient" or self._store.get("patient", patient) is None:
            raise NotFoundError("unknown Patient")
        out = []
        rows = self._store.query("record", {"patient": patient}, order_by="created")
        for key, row in rows:
            if row["erased"]:
                continue
            if self._may_read(actor, str(key), row):
                hit = self._try_read(actor, str(key))
                if hit is not None:
                    out.append(hit)
            else:
                self._record_denial(actor, str(key))
        return out

    def export_satusehat(
        self, actor: Actor, patient: str, mapping: SatusehatMapping
    ) -> list[dict[str, Any]]:
        """``everything`` in the SATUSEHAT shape (ids and Encounter elements it expects)."""
        out = []
        for hit in self.everything(actor, patient):
            record_id, _ = self._record_of(hit.resource_type, hit.fhir_id)
            written = authorship(self._store, record_id, hit.version)
            org = str(written["author_org"]) if written and written["author_org"] else None
            out.append(to_satusehat(hit.resource, org, mapping))
        return out

    # -- transaction Bundles ---------------------------------------------------------------

    def transaction(
        self,
        actor: Actor,
        bundle: Mapping[str, Any],
        may_write: Callable[[str], bool] = lambda _t: True,
    ) -> list[BundleOutcome]:
        """Import a transaction Bundle: all entries are checked before any is written.

        Entries are written in dependency order with ``urn:uuid`` references replaced by the
        new ids. If a write still fails after the checks (the network refused it), the
        records already written for this Bundle are erased, so no partial import stays
        readable; the chain keeps their tombstones.
        """
        entries = self._bundle_entries(bundle)
        order = self._bundle_order(entries)
        self._precheck(actor, entries, may_write)
        resolved: dict[str, str] = {}
        outcomes: dict[int, BundleOutcome] = {}
        written: list[str] = []
        try:
            for i in order:
                entry = entries[i]
                resource = map_references(entry["resource"], lambda r: resolved.get(r, r))
                rtype = resource["resourceType"]
                method, url = entry["method"], entry["url"]
                if method == "PUT":
                    result = self.update(actor, rtype, url.split("/", 1)[1], resource)
                else:
                    result = self.create(actor, rtype, resource)
                    written.append(result.fhir_id)
                if entry["fullUrl"]:
                    resolved[entry["fullUrl"]] = f"{rtype}/{result.fhir_id}"
                outcomes[i] = BundleOutcome(
                    rtype, result.fhir_id, result.version, method == "POST", result.time
                )
        except ServiceError:
            self._compensate(actor, [(o.resource_type, o.fhir_id) for o in outcomes.values()])
            raise
        return [outcomes[i] for i in range(len(entries))]

    def _compensate(self, actor: Actor, created: Sequence[tuple[str, str]]) -> None:
        """Erase records a failed Bundle created (as their home organisation, if local)."""
        for rtype, fhir_id in created:
            try:
                record_id, row = self._record_of(rtype, fhir_id)
                home = self._store.get("patient", row["patient"])["home_org"]
                eraser = self.ws.actor(home) if home in self.ws.org_identities else actor
                self.ws.records.erase(eraser, record_id, reason="entered_in_error")
            except ServiceError:
                continue

    @staticmethod
    def _bundle_entries(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise InvalidContentError("POST /fhir takes a Bundle of type transaction")
        raw = bundle.get("entry", [])
        if not isinstance(raw, list) or not raw:
            raise InvalidContentError("the Bundle has no entries")
        entries = []
        for n, entry in enumerate(raw):
            if not isinstance(entry, Mapping):
                raise InvalidContentError(f"Bundle.entry[{n}]: not an object")
            resource, request = entry.get("resource"), entry.get("request")
            if not isinstance(resource, Mapping) or not isinstance(request, Mapping):
                raise InvalidContentError(f"Bundle.entry[{n}]: needs resource and request")
            rtype = resource.get("resourceType")
            method, url = request.get("method"), request.get("url")
            if not isinstance(rtype, str) or rtype not in RECORD_TYPES:
                raise InvalidContentError(f"Bundle.entry[{n}]: resource type not writable")
            ok = (method == "POST" and url == rtype) or (
                method == "PUT" and isinstance(url, str) and url.startswith(rtype + "/")
            )
            if not ok:
                raise InvalidContentError(
                    f"Bundle.entry[{n}]: request must be POST {{type}} or PUT {{type}}/{{id}}"
                )
            full_url = entry.get("fullUrl")
            entries.append(
                {
                    "resource": dict(resource),
                    "method": method,
                    "url": url,
                    "fullUrl": full_url if isinstance(full_url, str) else None,
                }
            )
        return entries

    @staticmethod
    def _bundle_order(entries: list[dict[str, Any]]) -> list[int]:
        """Entries ordered so each comes after the entries its urn references name."""
        by_url = {e["fullUrl"]: i for i, e in enumerate(entries) if e["fullUrl"]}
        deps = []
        for entry in entries:
            refs = json_references(entry["resource"])
            deps.append({by_url[r] for r in refs if r in by_url})
        order: list[int] = []
        state = [0] * len(entries)

        def visit(i: int) -> None:
            if state[i] == 2:
                return
            if state[i] == 1:
                raise InvalidContentError("Bundle entries reference each other in a cycle")
            state[i] = 1
            for d in sorted(deps[i]):
                visit(d)
            state[i] = 2
            order.append(i)

        for i in range(len(entries)):
            visit(i)
        return order

    def _precheck(
        self, actor: Actor, entries: list[dict[str, Any]], may_write: Callable[[str], bool]
    ) -> None:
        """Validate every entry and check the actor may write it, before anything is written."""
        urls = {e["fullUrl"]: e["resource"]["resourceType"] for e in entries if e["fullUrl"]}
        # Stand-in ids of the right shape let entries validate before their targets exist.
        stand_in = {
            url: f"{rtype}/{'p' if rtype == 'Patient' else 'r'}-{'0' * 32}"
            for url, rtype in urls.items()
        }
        new_patients = {u for u, t in urls.items() if t == "Patient"}
        for n, entry in enumerate(entries):
            rtype = entry["resource"]["resourceType"]
            if not may_write(rtype):
                raise AccessDenied(f"Bundle.entry[{n}]: the token's scopes do not allow this")
            try:
                validated = validate_resource(
                    map_references(entry["resource"], lambda r: stand_in.get(r, r)), rtype
                )
            except FhirValidationError as exc:
                raise InvalidContentError(
                    f"Bundle.entry[{n}]: invalid FHIR resource", exc.issues
                ) from None
            original_refs = json_references(entry["resource"])
            for ref in original_refs:
                if (ref.startswith("urn:") and ref not in urls) or (
                    ref in urls and urls[ref] not in FHIR_TYPES
                ):
                    raise UnknownReferenceError(
                        f"Bundle.entry[{n}]: a reference is not in the Bundle"
                    )
            if rtype == "Patient":
                if entry["method"] == "POST":
                    self._register_actor(actor)
                continue
            patient_ref = next(
                (r for r in original_refs if r in new_patients or r.startswith("Patient/")),
                None,
            )
            subject = patient_reference(validated)
            if subject is None or patient_ref is None:
                raise InvalidContentError(f"Bundle.entry[{n}]: must name its Patient")
            if patient_ref in new_patients:
                member = self._store.get("member", actor.id)
                # A new patient's home is the writer's organisation: the organisation basis
                # then holds for clinical staff, as the ledger will check at write time.
                if member is None or member["role"] not in CLINICAL_ROLES:
                    raise AccessDenied(f"Bundle.entry[{n}]: no basis to write for this patient")
            patient = subject.split("/", 1)[1]
            if patient_ref in new_patients:
                try:
                    self._check_refs_existing(validated, patient, urls)
                except ServiceError as exc:
                    raise type(exc)(f"Bundle.entry[{n}]: {exc}") from None
                continue
            try:
                self._check_refs_existing(validated, patient, urls)
            except ServiceError as exc:
                raise type(exc)(f"Bundle.entry[{n}]: {exc}") from None
            if not self._may_write(actor, patient, rtype):
                raise AccessDenied(f"Bundle.entry[{n}]: no basis to write for this patient")

    def _check_refs_existing(self, validated: Any, patient: str, urls: Mapping[str, str]) -> None:
        resolved = {u: u for u in urls}
        for ref in references(validated):
            if ref.endswith("-" + "0" * 32):
                continue
            self._check_reference(ref, patient, resolved)

    def _may_write(self, actor: Actor, patient: str, resource_type: str) -> bool:
        if self._store.get("patient", patient) is None:
            raise UnknownReferenceError("a reference names an unknown Patient")
        return any(
            self.ws.records.basis_for(actor.id, patient, None, resource_type, p) is not None
            for p in sorted(CARE_PURPOSES)
        )
