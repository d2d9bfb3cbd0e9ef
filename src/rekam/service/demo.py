"""The demo network: two clinics, a lab and a pharmacy, synthetic patients and the full story.

Everything here is synthetic (family names "Contoh"/"Fiktif", NIKs starting with 99, medical
record numbers ``RM-99xxxx`` under ``https://rekam.example/org/<org>/mrn``). The
story: registration, records written in FHIR R4 with ICD-10, LOINC and KFA codes, a denied
read, consent to a doctor at the other clinic and their read, a lab result, a pharmacy
dispensing a prescription, and one emergency access; then each patient's history, a
checkpoint, a receipt and a full verification.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rekam.records import synthetic
from rekam.service.errors import AccessDenied
from rekam.service.patient_index import mrn_system
from rekam.service.proofs import build_receipt, make_checkpoint
from rekam.service.records import require
from rekam.service.verify import VerifyReport, verify_chain
from rekam.service.workspace import Actor, OrgSpec, Workspace

ORGS = (
    OrgSpec("klinik-melati", "clinic", "Klinik Melati (contoh)"),
    OrgSpec("klinik-kenanga", "clinic", "Klinik Kenanga (contoh)"),
    OrgSpec("lab-prima", "lab", "Laboratorium Prima (contoh)"),
    OrgSpec("apotek-sentosa", "pharmacy", "Apotek Sentosa (contoh)"),
)

# (key, org, role, display name): staff of the demo network, all fictitious.
STAFF = (
    ("admin-melati", "klinik-melati", "admin", "Rina Contoh (admin)"),
    ("dokter-melati", "klinik-melati", "doctor", "dr. Andi Contoh"),
    ("perawat-melati", "klinik-melati", "nurse", "Sari Fiktif (perawat)"),
    ("dokter-kenanga", "klinik-kenanga", "doctor", "dr. Budi Fiktif"),
    ("analis-prima", "lab-prima", "lab_analyst", "Dewi Contoh (analis)"),
    ("apoteker-sentosa", "apotek-sentosa", "pharmacist", "apt. Joko Fiktif"),
    ("auditor-melati", "klinik-melati", "auditor", "Tono Contoh (auditor)"),
)

Step = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo built and where."""

    data_dir: Path
    members: dict[str, dict[str, str]] = field(default_factory=dict)
    patients: list[dict[str, str]] = field(default_factory=list)
    records: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    receipt_path: Path | None = None
    report: VerifyReport | None = None


def _passphrase() -> str:
    return "demo-" + secrets.token_urlsafe(12)


def total_steps(patients: int) -> int:
    """How many progress steps ``run_demo`` reports."""
    return 6 + patients + 9


def run_demo(
    data_dir: Path,
    *,
    patients: int = 3,
    kdf: str = "standard",
    step: Step = lambda _msg: None,
    seed: int = 7,
) -> DemoResult:
    """Build the demo network in an empty folder and play the story; returns what it made."""
    rng = random.Random(seed)  # synthetic data only; nothing security-relevant
    result = DemoResult(data_dir)
    step("founding the network (genesis, organisation keys)")
    ws = Workspace.create(data_dir, "rekam-demo", ORGS, kdf=kdf)
    try:
        _play(ws, rng, patients, result, step)
    finally:
        ws.close()
    return result


def _play(
    ws: Workspace, rng: random.Random, n_patients: int, result: DemoResult, step: Step
) -> None:
    actors: dict[str, Actor] = {}
    for key, org, role, name in STAFF:
        step(f"enrolling {name}")
        passphrase = _passphrase()
        member = ws.admin.enrol_member(ws.actor(org), role, passphrase, label=name)
        actors[key] = ws.actor(member.id, passphrase)
        result.members[key] = {
            "id": member.id,
            "name": name,
            "org": org,
            "role": role,
            "passphrase": passphrase,
        }
    admin, doctor_a = actors["admin-melati"], actors["dokter-melati"]
    nurse, doctor_b = actors["perawat-melati"], actors["dokter-kenanga"]
    analyst, pharmacist = actors["analis-prima"], actors["apoteker-sentosa"]

    patient_actors: list[Actor] = []
    for index in range(n_patients):
        step(f"registering synthetic patient {index + 1}")
        passphrase = _passphrase()
        demographics = synthetic.patient_resource(rng, "placeholder")
        # The home clinic's medical record number beside the NIK (the portal searches both).
        mrn = f"RM-99{index + 1:04d}"
        demographics["identifier"].append(
            {"use": "usual", "system": mrn_system("klinik-melati"), "value": mrn}
        )
        registered, _ = ws.admin.register_patient(
            ws.actor("klinik-melati"), passphrase, demographics=demographics, writer=admin
        )
        name = " ".join(
            [*demographics["name"][0].get("given", []), demographics["name"][0].get("family", "")]
        ).strip()
        patient_actors.append(ws.actor(registered.id, passphrase))
        result.patients.append(
            {
                "id": registered.id,
                "name": name,
                "home_org": "klinik-melati",
                "mrn": mrn,
                "passphrase": passphrase,
            }
        )

    ana = patient_actors[0]
    pid = ana.id
    when = datetime.now(UTC) - timedelta(days=3)
    step("writing FHIR records at Klinik Melati (Encounter, Condition, Observations, prescription)")
    org_a = "klinik-melati"
    enc = ws.records.write(
        doctor_a, synthetic.encounter(rng, pid, doctor_a.id, org_a, when), patient=pid
    )
    cond = ws.records.write(
        doctor_a, synthetic.condition(rng, pid, enc.record, doctor_a.id), patient=pid
    )
    ws.records.write(nurse, synthetic.observation(rng, pid, "blood-pressure", when), patient=pid)
    ws.records.write(nurse, synthetic.observation(rng, pid, "temperature", when), patient=pid)
    rx = ws.records.write(
        doctor_a, synthetic.medication_request(rng, pid, doctor_a.id, when), patient=pid
    )
    result.records.update(
        {"encounter": enc.record, "condition": cond.record, "prescription": rx.record}
    )

    step("a doctor at Klinik Kenanga tries to read without consent (denied, recorded)")
    with contextlib.suppress(AccessDenied):
        ws.records.read(doctor_b, cond.record)

    step("the patient grants the Klinik Kenanga doctor access; the doctor reads the diagnosis")
    ws.consent.grant(ana, pid, doctor_b.id, resource_types=["*"], purpose="treatment", days=30)
    ws.records.read(doctor_b, cond.record)

    step("the patient shares with the lab; the lab attaches a blood glucose result")
    ws.consent.grant(
        ana,
        pid,
        "lab-prima",
        resource_types=["DiagnosticReport", "Observation"],
        purpose="treatment",
    )
    glucose = ws.records.write(
        analyst, synthetic.observation(rng, pid, "glucose", when), patient=pid
    )
    result.records["lab_result"] = glucose.record

    step("the patient shares the prescription with the pharmacy; the pharmacist dispenses it")
    ws.consent.grant(
        ana,
        pid,
        "apotek-sentosa",
        resource_types=["MedicationDispense", "MedicationRequest"],
        purpose="dispensing",
        days=7,
    )
    ws.records.read(pharmacist, rx.record, purpose="dispensing")
    dispense = synthetic.medication_dispense(
        rng, pid, f"MedicationRequest/{rx.record}", pharmacist.id, when
    )
    ws.records.dispense(pharmacist, rx.record, dispense)

    step("a correction: the doctor writes a new version of the diagnosis (the old one is kept)")
    corrected = synthetic.condition(rng, pid, enc.record, doctor_a.id)
    ws.records.write(doctor_a, corrected, patient=pid, record=cond.record)

    emergency_patient = patient_actors[1] if len(patient_actors) > 1 else ana
    step("emergency: an unconscious patient arrives at Klinik Kenanga (break-glass, audited)")
    epid = emergency_patient.id
    econd = ws.records.write(
        doctor_a, synthetic.condition(rng, epid, None, doctor_a.id), patient=epid
    )
    ws.consent.emergency(doctor_b, epid, "unconscious", minutes=60)
    ws.records.read(doctor_b, econd.record, purpose="emergency")

    step("the patient reads their own record")
    ws.records.read(ana, cond.record, purpose="own")

    step("cosigning a checkpoint and exporting a receipt")
    checkpoint = make_checkpoint(
        ws.node.store, ws.node.network_id, {o: i.signer for o, i in ws.org_identities.items()}
    )
    stored = require(ws.node.store, "record_version", f"{cond.record}@1")
    receipt = build_receipt(ws.node.store, stored["tx"], checkpoint)
    receipts = ws.datadir.root / "receipts"
    receipts.mkdir(exist_ok=True)
    result.receipt_path = receipts / f"{cond.record}-v1.json"
    result.receipt_path.write_text(json.dumps(receipt, indent=2) + "\n", "utf-8")

    for patient in patient_actors[:2]:
        result.history[patient.id] = [
            e.to_json() | {"label": e.label} for e in ws.audit.history(patient.id)
        ]

    step("verifying the whole chain")
    result.report = verify_chain(ws.node.store, ws.genesis, ws.node.blobs)
    credentials = {
        "note": "Synthetic demo identities. These passphrases protect demo keystores only.",
        "network": ws.node.network_id,
        "organisations": {o.org: {"name": o.label, "kind": o.kind} for o in ORGS},
        "members": result.members,
        "patients": result.patients,
        "records": result.records,
    }
    path = ws.datadir.root / "demo-credentials.json"
    path.write_text(json.dumps(credentials, indent=2) + "\n", "utf-8")
    path.chmod(0o600)
