"""Use cases the web portal needs beyond the core services: who may a member look up (and
find by name, NIK or medical record number), which prescriptions a pharmacy may see, ICD-10
coded diagnoses, and a record version's proof of inclusion.

Everything here lists metadata only (pseudonymous ids, types, times); content is read
through :meth:`RecordService.read`, which checks consent and commits the access event.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rekam.ledger.block import Checkpoint
from rekam.ledger.rules import authorship
from rekam.ledger.tx import id_kind
from rekam.ledger.validate import TxResult
from rekam.records import synthetic
from rekam.service import icd10
from rekam.service.errors import (
    AccessDenied,
    ContentUnavailable,
    InvalidContentError,
    NotFoundError,
)
from rekam.service.patient_index import mrn_org
from rekam.service.proofs import (
    ReceiptError,
    build_receipt,
    make_checkpoint,
    verify_receipt,
)
from rekam.service.records import WriteResult

if TYPE_CHECKING:
    from rekam.service.workspace import Actor, Workspace


@dataclass(frozen=True)
class PatientLink:
    """Why a member may look up a patient: home organisation, consent or emergency."""

    patient: str
    home_org: str
    via: str  # "home", "consent" or "emergency"


# A patient search needs this many characters: fewer would match too many names.
MIN_PATIENT_QUERY = 3
MAX_PATIENT_QUERY = 100
# At most this many hits are read (each an audited read) and shown; the page asks to refine.
MAX_PATIENT_HITS = 20


class PatientQueryError(InvalidContentError):
    """A patient search term that is empty, too short or too long."""


@dataclass(frozen=True)
class PatientHit:
    """A patient found by search, with what their Patient resource (read, audited) says."""

    link: PatientLink
    name: str
    birth_date: str | None
    mrns: tuple[tuple[str, str], ...]  # (organisation, medical record number)


@dataclass(frozen=True)
class PatientSearch:
    """Hits the member may see, and whether more of those matched than were read."""

    hits: list[PatientHit]
    more: bool


def _display_name(resource: Mapping[str, Any]) -> str:
    names = resource.get("name")
    for name in names if isinstance(names, list) else []:
        if not isinstance(name, Mapping):
            continue
        if isinstance(name.get("text"), str) and name["text"].strip():
            return str(name["text"]).strip()
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        family = name.get("family")
        joined = " ".join([*given, family if isinstance(family, str) else ""]).strip()
        if joined:
            return joined
    return ""


def _mrns(resource: Mapping[str, Any], first_org: str | None) -> tuple[tuple[str, str], ...]:
    found = []
    idents = resource.get("identifier")
    for ident in idents if isinstance(idents, list) else []:
        if not isinstance(ident, Mapping) or not isinstance(ident.get("value"), str):
            continue
        org = mrn_org(str(ident.get("system", "")))
        if org is not None:
            found.append((org, str(ident["value"])))
    # The searcher's own organisation's number first: it is the one on their folders.
    return tuple(sorted(found, key=lambda item: (item[0] != first_org, item)))


@dataclass(frozen=True)
class Proof:
    """A record version's write transaction, its block and whether its receipt verifies."""

    tx_id: str
    height: int
    checkpoint_height: int
    verified: bool


_ORDER_REF = re.compile(r"^ServiceRequest/(r-[0-9a-f]{32})$")


def result_orders(resource: Mapping[str, Any]) -> list[str]:
    """The record ids of the lab orders (ServiceRequests) an Observation is ``basedOn``."""
    if resource.get("resourceType") != "Observation":
        return []
    found = []
    based = resource.get("basedOn")
    for ref in based if isinstance(based, list) else []:
        target = ref.get("reference") if isinstance(ref, Mapping) else None
        match = _ORDER_REF.match(target) if isinstance(target, str) else None
        if match:
            found.append(match.group(1))
    return found


class LabResultIndex:
    """Which result records (Observations) name which lab order in ``basedOn``, in
    ``DIR/portal-lab-results.json`` (owner-only; pseudonymous record ids only).

    The link is in the encrypted content, so the chain's metadata cannot show it; this
    node notes it when it writes a result or reads one under audit, so that order lists
    can show the order as completed without reading every Observation. A link counts only
    while both records are on the chain for the same patient and the result is not erased.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "portal-lab-results.json"
        self._lock = threading.Lock()

    def _read(self) -> dict[str, list[str]]:
        if not self.path.is_file():
            return {}
        data: dict[str, list[str]] = json.loads(self.path.read_text("utf-8"))
        return data

    def note(self, store: Any, result: str, resource: Mapping[str, Any]) -> None:
        """Link a result record to the orders its content names (orders of the same
        patient on the chain only; anything else in ``basedOn`` is ignored)."""
        row = store.get("record", result)
        if row is None or row["resource_type"] != "Observation":
            return
        orders = []
        for order in result_orders(resource):
            head = store.get("record", order)
            if (
                head is not None
                and head["resource_type"] == "ServiceRequest"
                and head["patient"] == row["patient"]
            ):
                orders.append(order)
        if not orders:
            return
        with self._lock:
            data = self._read()
            changed = False
            for order in orders:
                linked = data.setdefault(order, [])
                if result not in linked:
                    linked.append(result)
                    changed = True
            if changed:
                tmp = self.path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out, indent=2, sort_keys=True)
                os.replace(tmp, self.path)

    def completed(self, store: Any, orders: Iterable[str]) -> set[str]:
        """Those of ``orders`` with a result on the chain that is not erased."""
        with self._lock:
            data = self._read()
        done = set()
        for order in orders:
            head = store.get("record", order)
            for result in data.get(order, []):
                row = store.get("record", result)
                if (
                    head is not None
                    and row is not None
                    and not row["erased"]
                    and row["patient"] == head["patient"]
                ):
                    done.add(order)
                    break
        return done


class PortalService:
    """Read-only queries for the portal's pages, on the node's state tables."""

    def __init__(self, ws: Workspace, lab_results: LabResultIndex | None = None) -> None:
        self.ws = ws
        self.lab_results = lab_results or LabResultIndex(ws.datadir.root)

    def completed_orders(self, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> set[str]:
        """The lab orders among these record heads whose result has arrived (see
        :class:`LabResultIndex`); their own content keeps the status the doctor wrote."""
        orders = [key for key, row in rows if row["resource_type"] == "ServiceRequest"]
        return self.lab_results.completed(self.ws.node.store, orders)

    def note_read(self, record: str, resource: Mapping[str, Any]) -> None:
        """Note what an audited read showed that order lists need (a result's order)."""
        self.lab_results.note(self.ws.node.store, record, resource)

    def member_org(self, actor: Actor) -> str | None:
        """The organisation of a member (None for a patient or an unknown member)."""
        if id_kind(actor.id) != "member":
            return None
        row = self.ws.node.store.get("member", actor.id)
        return str(row["org"]) if row else None

    def role(self, actor: Actor) -> str:
        """patient, or the member's role (doctor, nurse, pharmacist, lab_analyst, admin)."""
        kind = id_kind(actor.id)
        if kind == "patient":
            return "patient"
        if kind == "member":
            row = self.ws.node.store.get("member", actor.id)
            if row is not None and not row["revoked"]:
                return str(row["role"])
        return "none"

    def patients_for(self, actor: Actor) -> list[PatientLink]:
        """Patients a member may look up: of their organisation, or consented to them or it."""
        store = self.ws.node.store
        org = self.member_org(actor)
        if org is None:
            return []
        now = self.ws.node.clock()
        links: dict[str, PatientLink] = {}
        for key, _row in store.query("patient", {"home_org": org}):
            links[key] = PatientLink(key, org, "home")
        for grantee in (actor.id, org):
            for _, row in store.query("consent", {"grantee": grantee}):
                if row["revoked"] or not row["start"] <= now < row["end"]:
                    continue
                patient = store.get("patient", row["patient"])
                if patient is not None and row["patient"] not in links:
                    links[row["patient"]] = PatientLink(
                        row["patient"], patient["home_org"], "consent"
                    )
        for _, row in store.query("emergency", {"member": actor.id}):
            patient = store.get("patient", row["patient"])
            if row["expires"] > now and patient is not None and row["patient"] not in links:
                links[row["patient"]] = PatientLink(
                    row["patient"], patient["home_org"], "emergency"
                )
        return sorted(links.values(), key=lambda link: link.patient)

    def search_patients(self, actor: Actor, query: str) -> PatientSearch:
        """Patients the member has a basis for whose NIK, MR number or name match the query.

        Candidates come from the node's keyed patient index; only patients in
        :meth:`patients_for` whose Patient resource the member may read are kept (chain
        metadata, nothing read yet). Patients without such a basis are left out without a
        trace: not shown, not counted (a count would tell the member that someone with that
        NIK or name is registered here), and no read is attempted for them. Each shown hit
        is an audited read of the Patient resource through :meth:`RecordService.read`.
        """
        text = query.strip()
        if len(text) < MIN_PATIENT_QUERY:
            raise PatientQueryError("the search needs at least 3 characters")
        if len(text) > MAX_PATIENT_QUERY:
            raise PatientQueryError("the search is too long")
        links = {link.patient: link for link in self.patients_for(actor)}
        store = self.ws.node.store
        visible: list[tuple[PatientLink, str]] = []
        for patient in self.ws.patient_index.find(text):
            link = links.get(patient)
            if link is None:
                continue
            rows = store.query(
                "record", {"patient": patient, "resource_type": "Patient"}, order_by="created"
            )
            if not rows or rows[0][1]["erased"]:
                continue
            record_id, row = str(rows[0][0]), rows[0][1]
            purpose = "emergency" if link.via == "emergency" else "treatment"
            written = authorship(store, record_id, int(row["version"]))
            if self.ws.records.basis_for(actor.id, patient, written, "Patient", purpose):
                visible.append((link, record_id))
        hits = []
        org = self.member_org(actor)
        for link, record_id in visible[:MAX_PATIENT_HITS]:
            purpose = "emergency" if link.via == "emergency" else "treatment"
            try:
                read = self.ws.records.read(actor, record_id, None, purpose)
            except (AccessDenied, ContentUnavailable):
                continue  # the basis ended or the content is gone since the check above
            birth = read.resource.get("birthDate")
            hits.append(
                PatientHit(
                    link=link,
                    name=_display_name(read.resource),
                    birth_date=birth if isinstance(birth, str) else None,
                    mrns=_mrns(read.resource, org),
                )
            )
        return PatientSearch(hits, len(visible) > MAX_PATIENT_HITS)

    def prescriptions_for(self, actor: Actor) -> list[tuple[str, dict[str, Any]]]:
        """MedicationRequest heads a pharmacist's basis covers for dispensing (no content)."""
        store = self.ws.node.store
        out: list[tuple[str, dict[str, Any]]] = []
        seen: set[str] = set()
        org = self.member_org(actor)
        if org is None:
            return out
        now = self.ws.node.clock()
        for grantee in (actor.id, org):
            for _, consent in store.query("consent", {"grantee": grantee}):
                patient = consent["patient"]
                if consent["revoked"] or not consent["start"] <= now < consent["end"]:
                    continue
                if patient in seen:
                    continue
                seen.add(patient)
                for key, row in store.query("record", {"patient": patient}, order_by="created"):
                    if row["resource_type"] != "MedicationRequest" or row["erased"]:
                        continue
                    if self.ws.records.basis_for(
                        actor.id, patient, row, "MedicationRequest", "dispensing"
                    ):
                        out.append((key, row))
        return out

    def lab_orders_for(self, actor: Actor) -> list[tuple[str, dict[str, Any]]]:
        """ServiceRequest heads a lab analyst may read, of the patients they have a basis for."""
        out: list[tuple[str, dict[str, Any]]] = []
        for link in self.patients_for(actor):
            for key, row in self.ws.records.for_patient(link.patient):
                if row["resource_type"] != "ServiceRequest" or row["erased"]:
                    continue
                if self.ws.records.basis_for(
                    actor.id, link.patient, row, "ServiceRequest", "treatment"
                ):
                    out.append((key, row))
        return out

    def active_emergency(self, actor: Actor, patient: str) -> bool:
        """Whether this member holds an unexpired emergency access to the patient."""
        now = self.ws.node.clock()
        return any(
            row["patient"] == patient and row["expires"] > now
            for _, row in self.ws.node.store.query("emergency", {"member": actor.id})
        )

    def _checkpoint(self, height: int) -> Checkpoint:
        """The latest checkpoint if it covers ``height``, else a new one cosigned locally."""
        store = self.ws.node.store
        latest = store.latest_checkpoint()
        # Reuse an older checkpoint when it covers the block: every page view commits an
        # access event, and a checkpoint per view would only add noise.
        if latest is not None and int(latest.body["height"]) >= height:
            return latest
        signers = {o: i.signer for o, i in self.ws.org_identities.items()}
        return make_checkpoint(store, self.ws.node.network_id, signers)

    def receipt(self, record: str, version: int) -> dict[str, Any]:
        """The inclusion receipt of a record version's write transaction."""
        row = self.ws.node.store.get("record_version", f"{record}@{version}")
        if row is None:
            raise NotFoundError("unknown record version")
        stored = self.ws.node.store.get_tx(str(row["tx"]))
        if stored is None:
            raise NotFoundError("unknown record version")
        try:
            return build_receipt(
                self.ws.node.store, str(row["tx"]), self._checkpoint(stored.height)
            )
        except ReceiptError:
            raise NotFoundError("no checkpoint covers this record version") from None

    def proof(self, record: str, version: int) -> Proof:
        """Build the version's receipt and check it as an outsider would, with the genesis keys."""
        doc = self.receipt(record, version)
        try:
            verify_receipt(doc, self._genesis_doc())
            verified = True
        except ReceiptError:
            verified = False
        return Proof(
            tx_id=str(doc["tx_id"]),
            height=int(doc["block"]["header"]["height"]),
            checkpoint_height=int(doc["checkpoint"]["body"]["height"]),
            verified=verified,
        )

    def _genesis_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.ws.datadir.genesis_path.read_text("utf-8"))
        return doc


# Numeric observations a clinician can enter from the portal: LOINC code, display, UCUM unit.
OBSERVATION_KINDS: dict[str, tuple[str, str, str, str]] = {
    "weight": ("29463-7", "Body weight", "kg", "kg"),
    "glucose": ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "mg/dL"),
    "temperature": ("8310-5", "Body temperature", "°C", "Cel"),
}


# Laboratory tests a doctor can order from the portal (same shape as OBSERVATION_KINDS).
LAB_TESTS: dict[str, tuple[str, str, str, str]] = {
    "glucose": OBSERVATION_KINDS["glucose"],
    "hba1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "%"),
}


def _instant(ms: int) -> str:
    # Milliseconds kept: two results entered in the same second still order on a chart.
    when = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{when}.{ms % 1000:03d}Z"


def observation_resource(patient: str, kind: str, value: float, when_ms: int) -> dict[str, Any]:
    """A final FHIR Observation of one of :data:`OBSERVATION_KINDS`."""
    code, display, unit, ucum = OBSERVATION_KINDS[kind]
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": code, "display": display}],
            "text": display,
        },
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": _instant(when_ms),
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": ucum,
        },
    }


def note_resource(patient: str, author: str, text: str, when_ms: int) -> dict[str, Any]:
    """A progress note (LOINC 11506-3) as a FHIR DocumentReference with plain text."""
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {
            "coding": [
                {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
            ],
            "text": "Progress note",
        },
        "subject": {"reference": f"Patient/{patient}"},
        "date": _instant(when_ms),
        "author": [{"reference": f"Practitioner/{author}"}],
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                }
            }
        ],
    }


def dispense_resource(
    patient: str, prescription: str, request: Mapping[str, Any], pharmacist: str, when_ms: int
) -> dict[str, Any]:
    """A completed MedicationDispense copying the prescription's medication and dosage."""
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"actor": {"reference": f"Practitioner/{pharmacist}"}}],
        "authorizingPrescription": [{"reference": f"MedicationRequest/{prescription}"}],
        "whenHandedOver": _instant(when_ms),
    }
    resource["medicationCodeableConcept"] = copy.deepcopy(
        request.get("medicationCodeableConcept") or {"text": "medication"}
    )
    quantity = (request.get("dispenseRequest") or {}).get("quantity")
    if quantity:
        resource["quantity"] = copy.deepcopy(quantity)
    dosage = request.get("dosageInstruction")
    if dosage:
        resource["dosageInstruction"] = copy.deepcopy(dosage)
    return resource


def common_diagnoses() -> list[tuple[str, str, str]]:
    """The network's listed diagnoses (code, English, Indonesian) that ICD-10 2019 accepts."""
    out = []
    for code, display, text in synthetic.CONDITIONS:
        try:
            icd10.lookup(code)
        except icd10.Icd10Error:
            continue  # a code of an older edition (A90 dengue is A97.x in 2019)
        out.append((code, display, text))
    return out


def condition_resource(
    patient: str, author: str, code: icd10.Icd10Code, when_ms: int
) -> dict[str, Any]:
    """A confirmed encounter diagnosis coded in ICD-10 with WHO's English display."""
    # The Indonesian wording of a listed code is kept as the text clinicians read.
    text = next((c[2] for c in synthetic.CONDITIONS if c[0] == code.code), code.display)
    system = "http://terminology.hl7.org/CodeSystem/"
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": f"{system}condition-clinical", "code": "active"}]},
        "verificationStatus": {
            "coding": [{"system": f"{system}condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {"coding": [{"system": f"{system}condition-category", "code": "encounter-diagnosis"}]}
        ],
        "code": {
            "coding": [{"system": icd10.ICD10_SYSTEM, "code": code.code, "display": code.display}],
            "text": text,
        },
        "subject": {"reference": f"Patient/{patient}"},
        "recordedDate": _instant(when_ms),
        "recorder": {"reference": f"Practitioner/{author}"},
    }


def prescription_resource(
    patient: str, author: str, kfa: str, quantity: int, when_ms: int
) -> dict[str, Any]:
    """An active MedicationRequest for one of the network's listed medications."""
    code, display, unit, instruction = next(m for m in synthetic.MEDICATIONS if m[0] == kfa)
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": synthetic.KFA_SYSTEM, "code": code, "display": display}],
            "text": display,
        },
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": _instant(when_ms),
        "requester": {"reference": f"Practitioner/{author}"},
        "dosageInstruction": [{"sequence": 1, "text": instruction}],
        "dispenseRequest": {"quantity": {"value": quantity, "unit": unit}},
    }


def lab_order_resource(
    patient: str, author: str, test: str, lab: str, when_ms: int
) -> dict[str, Any]:
    """An active ServiceRequest (order) for one of :data:`LAB_TESTS`, for a lab organisation."""
    code, display, _, _ = LAB_TESTS[test]
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": code, "display": display}],
            "text": display,
        },
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": _instant(when_ms),
        "requester": {"reference": f"Practitioner/{author}"},
        "performer": [{"reference": f"Organization/{lab}"}],
    }


class PortalActions:
    """The portal's writes, each through the core services (consent checked, audited)."""

    def __init__(self, ws: Workspace, lab_results: LabResultIndex | None = None) -> None:
        self.ws = ws
        self.lab_results = lab_results or LabResultIndex(ws.datadir.root)

    def add_observation(self, actor: Actor, patient: str, kind: str, value: float) -> WriteResult:
        """Write a numeric observation for a patient."""
        if kind not in OBSERVATION_KINDS:
            raise InvalidContentError("unknown observation kind")
        resource = observation_resource(patient, kind, value, self.ws.node.clock())
        return self.ws.records.write(actor, resource, patient=patient)

    def add_note(self, actor: Actor, patient: str, text: str) -> WriteResult:
        """Write a progress note for a patient."""
        if not text.strip() or len(text) > 10_000:
            raise InvalidContentError("a note needs 1 to 10000 characters")
        resource = note_resource(patient, actor.id, text, self.ws.node.clock())
        return self.ws.records.write(actor, resource, patient=patient)

    def add_condition(self, actor: Actor, patient: str, code: str) -> WriteResult:
        """Write a diagnosis coded with an ICD-10 code valid for coding (checked here)."""
        try:
            found = icd10.lookup(code)
        except icd10.Icd10Error:
            raise InvalidContentError("unknown diagnosis code") from None
        resource = condition_resource(patient, actor.id, found, self.ws.node.clock())
        return self.ws.records.write(actor, resource, patient=patient)

    def add_prescription(self, actor: Actor, patient: str, kfa: str, quantity: int) -> WriteResult:
        """Write a prescription for a listed medication."""
        if kfa not in {m[0] for m in synthetic.MEDICATIONS} or not 1 <= quantity <= 1000:
            raise InvalidContentError("unknown medication or quantity out of range")
        resource = prescription_resource(patient, actor.id, kfa, quantity, self.ws.node.clock())
        return self.ws.records.write(actor, resource, patient=patient)

    def order_lab(self, actor: Actor, patient: str, test: str, lab: str) -> WriteResult:
        """Write a lab order (ServiceRequest) addressed to a lab organisation."""
        org = self.ws.node.store.get("org", lab)
        if test not in LAB_TESTS or org is None or org["kind"] != "lab":
            raise InvalidContentError("unknown test or laboratory")
        resource = lab_order_resource(patient, actor.id, test, lab, self.ws.node.clock())
        return self.ws.records.write(actor, resource, patient=patient)

    def attach_result(self, actor: Actor, order: str, value: float) -> WriteResult:
        """Read a lab order (audited) and write its result as an Observation based on it."""
        read = self.ws.records.read(actor, order, purpose="treatment")
        if read.resource_type != "ServiceRequest":
            raise InvalidContentError("not a lab order")
        coding = ((read.resource.get("code") or {}).get("coding") or [{}])[0]
        test = next((k for k, v in LAB_TESTS.items() if v[0] == coding.get("code")), None)
        if test is None:
            raise InvalidContentError("the order is not for a test the portal can record")
        row = self.ws.node.store.get("record", order)
        if row is None:
            raise NotFoundError("unknown record")
        code, display, unit, ucum = LAB_TESTS[test]
        resource = {
            "resourceType": "Observation",
            "status": "final",
            "basedOn": [{"reference": f"ServiceRequest/{order}"}],
            "category": [
                {
                    "coding": [
                        {
                            "system": (
                                "http://terminology.hl7.org/CodeSystem/observation-category"
                            ),
                            "code": "laboratory",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [{"system": "http://loinc.org", "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": f"Patient/{row['patient']}"},
            "effectiveDateTime": _instant(self.ws.node.clock()),
            "valueQuantity": {
                "value": value,
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": ucum,
            },
        }
        written = self.ws.records.write(actor, resource, patient=str(row["patient"]))
        self.lab_results.note(self.ws.node.store, written.record, resource)
        return written

    def dispense(self, actor: Actor, prescription: str) -> TxResult:
        """Read the shared prescription (audited) and record its dispense with a
        MedicationDispense copying its medication."""
        read = self.ws.records.read(actor, prescription, purpose="dispensing")
        if read.resource_type != "MedicationRequest":
            raise InvalidContentError("not a prescription")
        row = self.ws.node.store.get("record", prescription)
        if row is None:
            raise NotFoundError("unknown record")
        patient = str(row["patient"])
        resource = None
        # The MedicationDispense record needs a consent that covers writing that type; a
        # consent for the prescription alone still allows the dispense event itself.
        if self.ws.records.basis_for(actor.id, patient, None, "MedicationDispense", "dispensing"):
            resource = dispense_resource(
                patient, prescription, read.resource, actor.id, self.ws.node.clock()
            )
        result, _ = self.ws.records.dispense(actor, prescription, resource)
        return result


class OrgAdminQueries:
    """What an organisation's admin may see: its members and node status (the members'
    access events come from :meth:`AuditService.search`, shared with the auditor)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def members(self, org: str) -> list[tuple[str, dict[str, Any]]]:
        """The organisation's members, active first."""
        rows = self.ws.node.store.query("member", {"org": org})
        return sorted(rows, key=lambda item: (item[1]["revoked"], item[1]["role"], item[0]))

    def status(self) -> dict[str, Any]:
        """Network id, head height, latest checkpoint, active organisations, last verification."""
        store = self.ws.node.store
        latest = store.latest_checkpoint()
        return {
            "network": self.ws.node.network_id,
            "height": self.ws.node.head.height,
            "checkpoint": int(latest.body["height"]) if latest else None,
            "orgs": len(store.query("org", {"active": True})),
            "last_verify": self.ws.datadir.last_verification(),
        }


def export_bundle(ws: Workspace, patient: Actor) -> dict[str, Any]:
    """Everything of a patient's as a FHIR collection Bundle, each record read (and audited)
    as the patient's own read; erased records are left out."""
    entries = []
    for key, row in ws.records.for_patient(patient.id):
        if row["erased"]:
            continue
        result = ws.records.read(patient, key, None, "own")
        entries.append({"fullUrl": f"urn:rekam:{key}", "resource": result.resource})
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _instant(ws.node.clock()),
        "total": len(entries),
        "entry": entries,
    }
