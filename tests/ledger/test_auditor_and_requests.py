"""Ledger rules for the auditor role, admin key resets and clinicians' access requests."""

from __future__ import annotations

import pytest

from rekam.crypto import Ed25519Signer
from rekam.encoding import b64e
from rekam.ledger._errors import MalformedError
from rekam.ledger.rules import CLINICAL_ROLES, EMERGENCY_ROLES, REGISTRAR_ROLES
from rekam.ledger.tx import ROLES, new_id
from rekam.ledger.validate import TxResult, replay

from .sim import LedgerSim


@pytest.fixture
def sim() -> LedgerSim:
    return LedgerSim()


# -- auditor ------------------------------------------------------------------------------


def test_auditor_is_a_role_outside_the_clinical_and_registrar_sets() -> None:
    assert "auditor" in ROLES
    assert "auditor" not in CLINICAL_ROLES | EMERGENCY_ROLES | REGISTRAR_ROLES


def test_auditor_is_enrolled_by_an_org_admin(sim: LedgerSim) -> None:
    admin = sim.enrol("clinic-a", "admin")
    auditor = new_id("member")
    key = sim.keys["clinic-b"]
    body = {
        "member": auditor,
        "org": "clinic-a",
        "role": "auditor",
        "sign_key": key.sign_key,
        "enc_key": key.enc_key,
        "valid_from": sim.time - 1000,
        "valid_until": sim.time + 10_000_000,
    }
    assert sim.one(sim.tx(admin, "member.enrol", body)).valid
    assert sim.state.get("member", auditor)["role"] == "auditor"


def test_auditor_cannot_read_write_or_break_glass(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    auditor = sim.enrol("clinic-a", "auditor")
    patient = sim.register("clinic-a")
    record, written = sim.write(doctor, patient)
    assert written.valid
    # Same organisation as the patient's home and the record's author: still no basis.
    assert sim.read(auditor, patient, record, basis="organisation").code == "no_basis"
    # Not even with a consent made out to the auditor by name.
    consent, granted = sim.grant(patient, patient, auditor)
    assert granted.valid
    direct = sim.read(auditor, patient, record, basis="consent", basis_ref=consent)
    assert direct.code == "no_basis"
    # Nor the Patient resource that registration staff may see.
    demographics, ok = sim.write(doctor, patient, "Patient")
    assert ok.valid
    assert sim.read(auditor, patient, demographics, basis="organisation").code == "no_basis"
    for rtype in ("Condition", "Patient", "Observation"):
        _, refused = sim.write(auditor, patient, rtype)
        assert refused.code == "role_cannot_write"
    body = {
        "access": new_id("emergency"),
        "patient": patient,
        "member": auditor,
        "reason": "unconscious",
        "expires": sim.time + 60_000,
    }
    assert sim.one(sim.tx(auditor, "emergency.open", body)).code == "role_cannot_break_glass"
    # A denied attempt is still recorded, like anyone's.
    assert sim.read(auditor, patient, record, allowed=False, basis="none").valid


# -- key.rotate of a member by an admin -------------------------------------------------------


def _rotate_body(subject: str, seed: int, enc_key: str) -> dict[str, str]:
    return {
        "subject": subject,
        "sign_key": b64e(Ed25519Signer(bytes([seed]) * 32).public_key),
        "enc_key": enc_key,
    }


def test_admin_of_the_members_org_rotates_their_keys(sim: LedgerSim) -> None:
    admin = sim.enrol("clinic-a", "admin")
    doctor = sim.enrol("clinic-a", "doctor")
    body = _rotate_body(doctor, 91, sim.keys[doctor].enc_key)
    assert sim.one(sim.tx(admin, "key.rotate", body)).valid
    assert sim.state.get("member", doctor)["sign_key"] == body["sign_key"]


def test_rotation_by_another_orgs_admin_or_a_non_admin_is_refused(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    before = sim.state.get("member", doctor)["sign_key"]
    other_admin = sim.enrol("clinic-b", "admin")
    colleague = sim.enrol("clinic-a", "nurse")
    auditor = sim.enrol("clinic-a", "auditor")
    for signer in (other_admin, colleague, auditor, "clinic-b"):
        result = sim.one(sim.tx(signer, "key.rotate", _rotate_body(doctor, 92, "x" * 44)))
        assert (result.valid, result.code) == (False, "not_authorised")
    assert sim.state.get("member", doctor)["sign_key"] == before


def test_revoked_admin_cannot_rotate(sim: LedgerSim) -> None:
    admin = sim.enrol("clinic-a", "admin")
    doctor = sim.enrol("clinic-a", "doctor")
    assert sim.one(sim.tx("clinic-a", "member.revoke", {"member": admin})).valid
    result = sim.one(sim.tx(admin, "key.rotate", _rotate_body(doctor, 93, "x" * 44)))
    assert not result.valid


def test_a_patients_keys_are_not_rotated_by_another_orgs_admin(sim: LedgerSim) -> None:
    patient = sim.register("clinic-a")
    other_admin = sim.enrol("clinic-b", "admin")
    body = _rotate_body(patient, 94, sim.keys[patient].enc_key)
    result = sim.one(sim.tx(other_admin, "key.rotate", body))
    assert (result.valid, result.code) == (False, "not_authorised")


# -- consent.request and consent.decline -------------------------------------------------------


def _request(
    sim: LedgerSim,
    signer: str,
    patient: str,
    *,
    types: list[str] | None = None,
    purpose: str = "treatment",
    days: int = 30,
) -> TxResult:
    body = {
        "patient": patient,
        "resource_types": types or ["*"],
        "purpose": purpose,
        "days": days,
    }
    return sim.one(sim.tx(signer, "consent.request", body))


def test_a_clinician_requests_access_and_the_patient_sees_it(sim: LedgerSim) -> None:
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    result = _request(sim, doctor_b, patient, types=["Condition", "Observation"])
    assert result.valid, result.code
    event = sim.state.get("event", result.tx_id)
    assert event["kind"] == "consent.request" and event["patient"] == patient
    assert (event["actor"], event["actor_org"]) == (doctor_b, "clinic-b")
    assert event["purpose"] == "treatment" and event["allowed"] is None
    # A request grants nothing: no consent row, and a read is still refused.
    assert not sim.state.tables["consent"]


def test_who_may_request_and_with_what(sim: LedgerSim) -> None:
    patient = sim.register("clinic-a")
    other = sim.register("clinic-b")
    for role in ("admin", "registrar", "auditor"):
        member = sim.enrol("clinic-b", role)
        assert _request(sim, member, patient).code == "not_authorised"
    assert _request(sim, "clinic-b", patient).code == "not_authorised"
    assert _request(sim, other, patient).code == "not_authorised"
    nurse = sim.enrol("clinic-b", "nurse")
    assert _request(sim, nurse, new_id("patient")).code == "unknown_patient"
    assert _request(sim, nurse, patient, days=10_000).code == "bad_period"
    assert sim.one(sim.tx("clinic-b", "member.revoke", {"member": nurse})).valid
    assert _request(sim, nurse, patient).code == "member_inactive"
    pharmacist = sim.enrol("pharma", "pharmacist")
    assert _request(sim, pharmacist, patient, purpose="dispensing").valid


def test_request_bodies_hold_only_codes(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    bad_bodies = [
        {"patient": patient, "resource_types": ["*"], "purpose": "own", "days": 3},
        {"patient": patient, "resource_types": ["*"], "purpose": "emergency", "days": 3},
        {"patient": patient, "resource_types": ["Nonsense"], "purpose": "treatment", "days": 3},
        {"patient": patient, "resource_types": ["*"], "purpose": "treatment", "days": 0},
        {
            "patient": patient,
            "resource_types": ["*"],
            "purpose": "treatment",
            "days": 3,
            "note": "please, I am your doctor",
        },
    ]
    for body in bad_bodies:
        with pytest.raises(MalformedError):
            sim.tx(doctor, "consent.request", body)


def test_the_patient_declines_once(sim: LedgerSim) -> None:
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    request = _request(sim, doctor_b, patient)
    # Neither the requester nor another organisation may close it.
    for signer in (doctor_b, "clinic-b"):
        refused = sim.one(sim.tx(signer, "consent.decline", {"request": request.tx_id}))
        assert refused.code == "not_authorised"
    declined = sim.one(sim.tx(patient, "consent.decline", {"request": request.tx_id}))
    assert declined.valid, declined.code
    assert sim.state.get("event", request.tx_id)["allowed"] is False
    event = sim.state.get("event", declined.tx_id)
    assert (event["kind"], event["actor"], event["patient"]) == (
        "consent.decline",
        patient,
        patient,
    )
    again = sim.one(sim.tx(patient, "consent.decline", {"request": request.tx_id}))
    assert again.code == "request_closed"
    # Only a request can be declined; the home organisation may act for the patient.
    _, granted = sim.grant(patient, patient, doctor_b)
    assert granted.valid
    wrong = sim.one(sim.tx(patient, "consent.decline", {"request": granted.tx_id}))
    assert wrong.code == "unknown_request"
    missing = sim.one(sim.tx(patient, "consent.decline", {"request": "0" * 64}))
    assert missing.code == "unknown_request"
    second = _request(sim, doctor_b, patient, purpose="referral")
    by_home = sim.one(sim.tx("clinic-a", "consent.decline", {"request": second.tx_id}))
    assert by_home.valid


def test_requests_replay_to_the_same_state(sim: LedgerSim) -> None:
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    request = _request(sim, doctor_b, patient)
    sim.one(sim.tx(patient, "consent.decline", {"request": request.tx_id}))
    state, _, _ = replay(sim.genesis, sim.blocks[1:])
    assert state.tables == sim.state.tables
