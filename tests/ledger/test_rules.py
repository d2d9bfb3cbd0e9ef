"""The deterministic rules, transaction type by transaction type, on an in-memory chain."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rekam.crypto import Ed25519Signer
from rekam.encoding import b64e, canonical
from rekam.ledger._errors import InvalidBlockError
from rekam.ledger.block import Block, cut_block
from rekam.ledger.tx import RESOURCE_TYPES, make_tx, new_id, sign_tx, unsigned_tx
from rekam.ledger.validate import apply_block, replay

from .sim import DAY, T0, LedgerSim


@pytest.fixture
def sim() -> LedgerSim:
    return LedgerSim()


def test_genesis_orgs_are_active(sim: LedgerSim) -> None:
    assert sim.state.get("org", "clinic-a")["active"] is True
    assert sim.state.get("org", "pharma")["kind"] == "pharmacy"


def test_member_enrol_by_org_and_not_by_other_org(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    assert sim.state.get("member", doctor)["role"] == "doctor"
    member = new_id("member")
    body = {
        "member": member,
        "org": "clinic-a",
        "role": "admin",
        "sign_key": sim.keys["clinic-b"].sign_key,
        "enc_key": sim.keys["clinic-b"].enc_key,
        "valid_from": T0,
        "valid_until": T0 + DAY,
    }
    result = sim.one(sim.tx("clinic-b", "member.enrol", body))
    assert (result.valid, result.code) == (False, "not_authorised")
    assert sim.state.get("member", member) is None


def test_record_write_needs_a_basis(sim: LedgerSim) -> None:
    doctor_a = sim.enrol("clinic-a", "doctor")
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    record, ok = sim.write(doctor_a, patient)
    assert ok.valid
    _, refused = sim.write(doctor_b, patient)
    assert (refused.valid, refused.code) == (False, "no_basis")
    head = sim.state.get("record", record)
    assert head["version"] == 1 and head["author_org"] == "clinic-a"


def test_new_version_supersedes_and_keeps_old(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor, patient)
    _, v2 = sim.write(doctor, patient, record=record, version=2, basis="author")
    assert v2.valid
    _, skipped = sim.write(doctor, patient, record=record, version=4, basis="author")
    assert skipped.code == "bad_version"
    assert sim.state.get("record_version", f"{record}@1") is not None
    assert sim.state.get("record", record)["version"] == 2


def test_role_limits_what_can_be_written(sim: LedgerSim) -> None:
    nurse = sim.enrol("clinic-a", "nurse")
    patient = sim.register("clinic-a")
    _, result = sim.write(nurse, patient, "MedicationRequest")
    assert result.code == "role_cannot_write"


def test_consent_allows_read_until_revoked(sim: LedgerSim) -> None:
    doctor_a = sim.enrol("clinic-a", "doctor")
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor_a, patient)
    denied = sim.read(doctor_b, patient, record, basis="organisation")
    assert denied.code == "no_basis"
    recorded = sim.read(doctor_b, patient, record, allowed=False, basis="none")
    assert recorded.valid
    consent, granted = sim.grant(patient, patient, doctor_b)
    assert granted.valid
    assert sim.read(doctor_b, patient, record, basis="consent", basis_ref=consent).valid
    revoke = sim.one(sim.tx(patient, "consent.revoke", {"consent": consent}))
    assert revoke.valid
    after = sim.read(doctor_b, patient, record, basis="consent", basis_ref=consent)
    assert after.code == "consent_inactive"


def test_expired_consent_and_wrong_scope(sim: LedgerSim) -> None:
    doctor_a = sim.enrol("clinic-a", "doctor")
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor_a, patient, "Condition")
    consent, _ = sim.grant(patient, patient, doctor_b, types=["Observation"])
    scope = sim.read(doctor_b, patient, record, basis="consent", basis_ref=consent)
    assert scope.code == "consent_scope"
    short, ok = sim.grant(patient, patient, doctor_b, end=sim.time + 1000)
    assert ok.valid
    sim.time += 2000
    expired = sim.read(doctor_b, patient, record, basis="consent", basis_ref=short)
    assert expired.code == "consent_inactive"


def test_consent_signed_by_stranger_is_refused(sim: LedgerSim) -> None:
    patient = sim.register("clinic-a")
    doctor_b = sim.enrol("clinic-b", "doctor")
    _, result = sim.grant("clinic-b", patient, doctor_b)
    assert result.code == "not_authorised"
    _, by_home = sim.grant("clinic-a", patient, doctor_b)
    assert by_home.valid


def test_revoked_member_cannot_act(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    assert sim.one(sim.tx("clinic-a", "member.revoke", {"member": doctor})).valid
    _, result = sim.write(doctor, patient)
    assert result.code == "member_inactive"


def test_unknown_patient(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    _, result = sim.write(doctor, new_id("patient"))
    assert result.code == "unknown_patient"


def test_wrong_signature_and_key_mismatch(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    body = {
        "record": new_id("record"),
        "version": 1,
        "patient": patient,
        "resource_type": "Condition",
        "content_hash": "ab" * 32,
        "content_size": 10,
        "basis": "organisation",
        "basis_ref": None,
    }
    impostor = Ed25519Signer(bytes([99]) * 32)
    forged = make_tx(sim.genesis.network_id, "record.write", doctor, impostor, body, sim.time)
    assert sim.one(forged).code == "key_mismatch"
    tx = unsigned_tx(sim.genesis.network_id, "record.write", doctor, body, sim.time)
    good = sign_tx(tx, [(doctor, sim.keys[doctor].signer)])
    envelope = {
        "tx": tx,
        "sigs": [{"by": doctor, "key": sim.keys[doctor].sign_key, "sig": b64e(bytes(64))}],
    }
    bad = canonical(envelope)
    assert sim.block([bad]).results[0].code == "bad_signature"
    assert sim.one(good).valid


def test_duplicate_is_not_applied_twice(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    tx = sim.tx(
        doctor,
        "record.write",
        {
            "record": new_id("record"),
            "version": 1,
            "patient": patient,
            "resource_type": "Condition",
            "content_hash": "cd" * 32,
            "content_size": 10,
            "basis": "organisation",
            "basis_ref": None,
        },
    )
    results = sim.block([tx, tx]).results
    assert [r.code for r in results] == ["ok", "duplicate"]
    assert sim.one(tx).code == "duplicate"


def test_malformed_and_stale_transactions(sim: LedgerSim) -> None:
    patient_register = sim.tx(
        "clinic-a",
        "patient.register",
        {
            "patient": new_id("patient"),
            "home_org": "clinic-a",
            "sign_key": sim.keys["clinic-a"].sign_key,
            "enc_key": sim.keys["clinic-a"].enc_key,
        },
        created=T0 - 10 * DAY,
    )
    results = sim.block([b'{"not":"a tx"}', patient_register]).results
    assert [r.code for r in results] == ["malformed", "too_old"]


def test_org_enrol_needs_majority(sim: LedgerSim) -> None:
    newcomer = sim._principal("lab-baru")
    body = {
        "org": "lab-baru",
        "kind": "lab",
        "sign_key": newcomer.sign_key,
        "enc_key": newcomer.enc_key,
    }
    alone = sim.one(sim.tx("clinic-a", "org.enrol", body))
    assert alone.code == "quorum"
    two = sim.one(sim.tx("clinic-a", "org.enrol", body, cosigners=["clinic-b"]))
    assert two.valid
    assert sim.state.get("org", "lab-baru")["active"]


def test_emergency_access_is_time_limited(sim: LedgerSim) -> None:
    doctor_a = sim.enrol("clinic-a", "doctor")
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor_a, patient)
    access = new_id("emergency")
    body = {
        "access": access,
        "patient": patient,
        "member": doctor_b,
        "reason": "unconscious",
        "expires": sim.time + 60_000,
    }
    assert sim.one(sim.tx(doctor_b, "emergency.open", body)).valid
    ok = sim.read(
        doctor_b, patient, record, basis="emergency", basis_ref=access, purpose="emergency"
    )
    assert ok.valid
    sim.time += 120_000
    late = sim.read(
        doctor_b, patient, record, basis="emergency", basis_ref=access, purpose="emergency"
    )
    assert late.code == "emergency_expired"
    too_long = dict(body, access=new_id("emergency"), expires=sim.time + 2 * DAY)
    assert sim.one(sim.tx(doctor_b, "emergency.open", too_long)).code == "bad_period"


def test_dispense_once_with_pharmacy_consent(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    pharmacist = sim.enrol("pharma", "pharmacist")
    patient = sim.register("clinic-a")
    rx, _ = sim.write(doctor, patient, "MedicationRequest")
    body = {
        "prescription": rx,
        "version": 1,
        "pharmacy": "pharma",
        "dispense_record": None,
        "basis": "consent",
        "basis_ref": None,
    }
    assert sim.one(sim.tx(pharmacist, "prescription.dispense", body)).code == "no_basis"
    consent, _ = sim.grant(
        patient, patient, "pharma", types=["MedicationRequest"], purpose="dispensing"
    )
    body["basis_ref"] = consent
    assert sim.one(sim.tx(pharmacist, "prescription.dispense", body)).valid
    again = dict(body)
    assert sim.one(sim.tx(pharmacist, "prescription.dispense", again)).code == "already_dispensed"


def test_erase_marks_record_and_blocks_reads(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor, patient)
    assert sim.one(
        sim.tx(doctor, "record.erase", {"record": record, "reason": "patient_request"})
    ).code == ("not_authorised")
    assert sim.one(
        sim.tx(patient, "record.erase", {"record": record, "reason": "patient_request"})
    ).valid
    assert sim.read(doctor, patient, record).code == "erased"


def test_patient_history_events(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor, patient)
    sim.read(doctor, patient, record)
    kinds = sorted(r["kind"] for r in sim.state.tables["event"].values() if r["patient"] == patient)
    assert kinds == ["access.read", "patient.register", "record.write"]


def test_block_level_failures(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    tx = sim.tx("clinic-a", "member.revoke", {"member": doctor})
    network = sim.genesis.network_id
    signer = sim.keys["clinic-a"].signer
    head = sim.head
    wrong_prev = cut_block(network, head.height + 1, "00" * 32, sim.time, [tx], "clinic-a", signer)
    wrong_height = cut_block(
        network, head.height + 2, head.hash, sim.time, [tx], "clinic-a", signer
    )
    not_orderer = cut_block(
        network, head.height + 1, head.hash, sim.time, [tx], "clinic-b", sim.keys["clinic-b"].signer
    )
    forged = cut_block(
        network, head.height + 1, head.hash, sim.time, [tx], "clinic-a", sim.keys["clinic-b"].signer
    )
    orgs = list(sim.state.tables["org"])
    for block, message in (
        (wrong_prev, "previous hash"),
        (wrong_height, "expected height"),
        (not_orderer, "not an orderer"),
        (forged, "signature"),
    ):
        with pytest.raises(InvalidBlockError, match=message):
            apply_block(sim.state, sim.genesis, head, block, orgs)


def test_own_root_skips_only_the_merkle_root(sim: LedgerSim) -> None:
    """A node passes own_root for blocks it cut itself; every other block check still runs,
    and without own_root a header whose root does not match the transactions is refused."""
    doctor = sim.enrol("clinic-a", "doctor")
    tx = sim.tx("clinic-a", "member.revoke", {"member": doctor})
    network = sim.genesis.network_id
    signer = sim.keys["clinic-a"].signer
    head = sim.head
    orgs = list(sim.state.tables["org"])
    good = cut_block(network, head.height + 1, head.hash, sim.time, [tx], "clinic-a", signer)
    # The same header (same root, same signature) over other transaction bytes.
    other = Block(good.header, good.signature, (tx.raw + b" ",))
    with pytest.raises(InvalidBlockError, match="Merkle root does not match"):
        apply_block(sim.state, sim.genesis, head, other, orgs)
    forged = cut_block(
        network, head.height + 1, head.hash, sim.time, [tx], "clinic-a", sim.keys["clinic-b"].signer
    )
    wrong_height = cut_block(
        network, head.height + 2, head.hash, sim.time, [tx], "clinic-a", signer
    )
    for block, message in ((forged, "signature"), (wrong_height, "expected height")):
        with pytest.raises(InvalidBlockError, match=message):
            apply_block(sim.state, sim.genesis, head, block, orgs, own_root=True)
    trusted = apply_block(sim.state, sim.genesis, head, good, orgs, own_root=True)
    checked = apply_block(sim.state, sim.genesis, head, good, orgs)
    assert trusted.results == checked.results
    assert list(trusted.delta.rows()) == list(checked.delta.rows())


def test_replay_reproduces_state(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    sim.write(doctor, patient)
    state, head, _ = replay(sim.genesis, sim.blocks[1:])
    assert head == sim.head
    assert state.tables == sim.state.tables


# -- the consent model as a property -----------------------------------------------------------

grants = st.lists(
    st.tuples(
        st.sampled_from(["doctor_b", "clinic-b", "pharma"]),
        st.lists(st.sampled_from(RESOURCE_TYPES), min_size=1, max_size=3, unique=True),
        st.sampled_from(["treatment", "dispensing"]),
        st.integers(-5, 5),
        st.integers(1, 10),
        st.booleans(),
    ),
    max_size=4,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    grants=grants,
    rtype=st.sampled_from(RESOURCE_TYPES),
    purpose=st.sampled_from(["treatment", "dispensing"]),
)
def test_consent_model_matches_a_plain_reading(grants: list, rtype: str, purpose: str) -> None:
    """A read on a consent basis is valid exactly when the plain-language rule says so."""
    sim = LedgerSim()
    doctor_a = sim.enrol("clinic-a", "doctor")
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    writable = "Condition" if rtype in ("MedicationDispense", "Patient") else rtype
    record, res = sim.write(doctor_a, patient, writable)
    assert res.valid, res.code
    names = {"doctor_b": doctor_b, "clinic-b": "clinic-b", "pharma": "pharma"}
    made = []
    for who, types, gpurpose, start_off, length, revoke in grants:
        start = sim.time + start_off * 1000
        consent, result = sim.grant(
            patient, patient, names[who], sorted(types), gpurpose, start, start + length * 1000
        )
        if not result.valid:
            continue
        if revoke:
            sim.one(sim.tx(patient, "consent.revoke", {"consent": consent}))
        made.append(
            (consent, names[who], sorted(types), gpurpose, start, start + length * 1000, revoke)
        )
    sim.time += 1
    for consent, grantee, types, gpurpose, start, end, revoked in made:
        expected = (
            grantee in (doctor_b, "clinic-b")
            and not revoked
            and start <= sim.time < end
            and writable in types
            and gpurpose == purpose
        )
        result = sim.read(
            doctor_b, patient, record, basis="consent", basis_ref=consent, purpose=purpose
        )
        assert result.valid == expected, (result.code, consent)
    # No consent at all means no consent basis: the empty policy denies.
    none = sim.read(
        doctor_b, patient, record, basis="consent", basis_ref=new_id("consent"), purpose=purpose
    )
    assert not none.valid


def test_tx_ids_are_hashes_of_unsigned_bytes(sim: LedgerSim) -> None:
    tx = sim.tx("clinic-a", "member.revoke", {"member": new_id("member")})
    assert tx.tx_id == hashlib.sha256(canonical(dict(tx.tx))).hexdigest()


def test_author_keeps_basis_for_their_version(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    colleague = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor, patient)
    _, v2 = sim.write(colleague, patient, record=record, version=2, basis="organisation")
    assert v2.valid
    assert sim.read(doctor, patient, record, version=1, basis="author").valid
    assert sim.read(doctor, patient, record, version=2, basis="author").code == "no_basis"


def test_care_bases_do_not_cover_other_purposes(sim: LedgerSim) -> None:
    doctor = sim.enrol("clinic-a", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor, patient)
    for purpose in ("research", "insurance", "own", "emergency"):
        assert (
            sim.read(doctor, patient, record, basis="organisation", purpose=purpose).code
            == "no_basis"
        )
    consent, _ = sim.grant(patient, patient, doctor, purpose="research")
    assert sim.read(
        doctor, patient, record, basis="consent", basis_ref=consent, purpose="research"
    ).valid


def test_consent_to_an_org_reaches_clinical_members_only(sim: LedgerSim) -> None:
    doctor_a = sim.enrol("clinic-a", "doctor")
    admin_b = sim.enrol("clinic-b", "admin")
    doctor_b = sim.enrol("clinic-b", "doctor")
    patient = sim.register("clinic-a")
    record, _ = sim.write(doctor_a, patient)
    consent, _ = sim.grant(patient, patient, "clinic-b")
    assert sim.read(doctor_b, patient, record, basis="consent", basis_ref=consent).valid
    assert sim.read(admin_b, patient, record, basis="consent", basis_ref=consent).code == "no_basis"


def test_consent_cannot_grant_own_or_emergency(sim: LedgerSim) -> None:
    from rekam.ledger._errors import MalformedError

    patient = sim.register("clinic-a")
    doctor = sim.enrol("clinic-b", "doctor")
    with pytest.raises(MalformedError):
        sim.grant(patient, patient, doctor, purpose="emergency")


def test_last_orderer_cannot_be_revoked(sim: LedgerSim) -> None:
    body = {"org": "clinic-a"}
    result = sim.one(sim.tx("clinic-b", "org.revoke", body, cosigners=["pharma"]))
    assert result.code == "last_orderer"


def test_quorum_refusal_leaves_the_id_free(sim: LedgerSim) -> None:
    newcomer = sim._principal("lab-dua")
    body = {
        "org": "lab-dua",
        "kind": "lab",
        "sign_key": newcomer.sign_key,
        "enc_key": newcomer.enc_key,
    }
    tx = unsigned_tx(sim.genesis.network_id, "org.enrol", "clinic-a", body, sim.time)
    alone = sign_tx(tx, [("clinic-a", sim.keys["clinic-a"].signer)])
    assert sim.one(alone).code == "quorum"
    both = sign_tx(
        tx, [("clinic-a", sim.keys["clinic-a"].signer), ("clinic-b", sim.keys["clinic-b"].signer)]
    )
    assert both.tx_id == alone.tx_id
    assert sim.one(both).valid


def test_patient_sees_key_rotation(sim: LedgerSim) -> None:
    patient = sim.register("clinic-a")
    fresh = Ed25519Signer(bytes([77]) * 32)
    body = {
        "subject": patient,
        "sign_key": b64e(fresh.public_key),
        "enc_key": sim.keys[patient].enc_key,
    }
    assert sim.one(sim.tx("clinic-a", "key.rotate", body)).valid
    kinds = [r["kind"] for r in sim.state.tables["event"].values() if r["patient"] == patient]
    assert "key.rotate" in kinds


def test_signing_keys_must_be_32_bytes(sim: LedgerSim) -> None:
    from rekam.ledger._errors import MalformedError

    patient = sim.register("clinic-a")
    with pytest.raises(MalformedError, match="32 bytes"):
        sim.tx(
            "clinic-a",
            "key.rotate",
            {"subject": patient, "sign_key": b64e(bytes(16)), "enc_key": sim.keys[patient].enc_key},
        )
