"""The use cases end to end on a real node, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rekam.crypto import DecryptionError
from rekam.encoding import b64e
from rekam.records import synthetic
from rekam.service.datadir import DataDirError
from rekam.service.errors import (
    AccessDenied,
    ContentUnavailable,
    InvalidContentError,
    NotFoundError,
    RejectedError,
)
from rekam.service.ports import SchemaVersionError
from rekam.service.proofs import ReceiptError, build_receipt, make_checkpoint, verify_receipt
from rekam.service.verify import verify_chain
from rekam.service.workspace import Actor, OrgSpec, Workspace
from tests.blob_rows import write_first_format

ORGS = (
    OrgSpec("klinik-a", "clinic", "Klinik A"),
    OrgSpec("klinik-b", "clinic", "Klinik B"),
    OrgSpec("apotek-c", "pharmacy", "Apotek C"),
)
WHEN = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)


@dataclass
class Net:
    ws: Workspace
    doctor_a: Actor
    doctor_b: Actor
    pharmacist: Actor
    patient: Actor
    demographics: dict
    rng: random.Random


def _populate(ws: Workspace) -> Net:
    """Members of each organisation and a registered patient on a new workspace."""
    admin_id = ws.admin.enrol_member(ws.actor("klinik-a"), "admin", "pw-admin").id
    admin = ws.actor(admin_id, "pw-admin")

    def member(org: str, role: str) -> Actor:
        mid = ws.admin.enrol_member(ws.actor(org), role, f"pw-{role}-{org}").id
        return ws.actor(mid, f"pw-{role}-{org}")

    rng = random.Random(5)
    demographics = synthetic.patient_resource(rng, "x")
    registered, _ = ws.admin.register_patient(
        ws.actor("klinik-a"), "pw-patient", demographics=demographics, writer=admin
    )
    return Net(
        ws,
        member("klinik-a", "doctor"),
        member("klinik-b", "doctor"),
        member("apotek-c", "pharmacist"),
        ws.actor(registered.id, "pw-patient"),
        demographics,
        rng,
    )


@pytest.fixture
def net(store_url: str, tmp_path: Path) -> Iterator[Net]:
    ws = Workspace.create(tmp_path / "node", "test-net", ORGS, kdf="fast", store_url=store_url)
    try:
        yield _populate(ws)
    finally:
        ws.close()


def _condition(net: Net) -> dict:
    return synthetic.condition(net.rng, net.patient.id, None, net.doctor_a.id)


def _events(net: Net) -> list:
    return net.ws.audit.history(net.patient.id)


def test_write_then_read_is_faithful_and_audited(net: Net) -> None:
    resource = _condition(net)
    written = net.ws.records.write(net.doctor_a, resource, patient=net.patient.id)
    read = net.ws.records.read(net.doctor_a, written.record)
    assert read.resource == resource
    assert read.basis.kind == "author"
    last = _events(net)[-1]
    assert (last.kind, last.actor, last.allowed, last.record) == (
        "access.read",
        net.doctor_a.id,
        True,
        written.record,
    )


def test_denied_read_is_recorded(net: Net) -> None:
    written = net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    with pytest.raises(AccessDenied) as denied:
        net.ws.records.read(net.doctor_b, written.record)
    assert denied.value.tx_id is not None
    last = _events(net)[-1]
    assert (last.actor, last.allowed, last.label) == (net.doctor_b.id, False, "DENIED read")


def test_consent_then_revoke(net: Net) -> None:
    store = net.ws.node.store
    written = net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    grant = net.ws.consent.grant(
        net.patient, net.patient.id, net.doctor_b.id, resource_types=["Condition"]
    )
    assert store.get_wrapped_key(written.record, 1, net.doctor_b.id) is not None
    read = net.ws.records.read(net.doctor_b, written.record)
    assert (read.basis.kind, read.basis.ref) == ("consent", grant.consent)
    later = net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    assert store.get_wrapped_key(later.record, 1, net.doctor_b.id) is not None  # new records too
    net.ws.consent.revoke(net.patient, grant.consent)
    assert store.get_wrapped_key(written.record, 1, net.doctor_b.id) is None
    with pytest.raises(AccessDenied):
        net.ws.records.read(net.doctor_b, written.record)


def test_key_rotation_rewraps_content_keys(net: Net) -> None:
    store = net.ws.node.store
    written = net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    old = net.patient.identity
    result = net.ws.admin.rotate_keys(net.patient, "pw-patient-2")
    assert result.valid
    rotated = net.ws.actor(net.patient.id, "pw-patient-2")
    assert rotated.identity.enc_public != old.enc_public
    assert store.get("patient", net.patient.id)["enc_key"] == b64e(rotated.identity.enc_public)
    # The patient's own wrapped key now opens with the new key only: no custodian needed.
    assert net.ws.records.unwrap_as(rotated, written.record, 1, net.patient.id) is not None
    assert net.ws.records.unwrap_as(net.patient, written.record, 1, net.patient.id) is None
    assert net.ws.records.read(rotated, written.record).basis.kind == "own"
    # The old keystore is kept, and the old passphrase no longer opens the current one.
    retired = list(net.ws.datadir.keystore_path(net.patient.id).parent.glob("*.retired-*.json"))
    assert len(retired) == 1
    with pytest.raises(DecryptionError):
        net.ws.actor(net.patient.id, "pw-patient")
    assert verify_chain(store, net.ws.genesis, net.ws.node.blobs).ok


def test_invalid_fhir_writes_nothing(net: Net) -> None:
    head = net.ws.node.head
    blobs = set(net.ws.node.blobs.iter_digests())
    bad = {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{net.patient.id}"},
        "onsetDateTime": "not-a-date",
    }
    with pytest.raises(InvalidContentError) as err:
        net.ws.records.write(net.doctor_a, bad, patient=net.patient.id)
    assert err.value.issues and "not-a-date" not in str(err.value.issues)
    with pytest.raises(InvalidContentError):
        net.ws.records.write(net.doctor_a, b"{not json", patient=net.patient.id)
    assert net.ws.node.head == head
    assert set(net.ws.node.blobs.iter_digests()) == blobs


def test_unknown_patient_and_record(net: Net) -> None:
    head = net.ws.node.head
    with pytest.raises(NotFoundError):
        net.ws.records.write(net.doctor_a, _condition(net), patient="p-" + "0" * 32)
    with pytest.raises(NotFoundError):
        net.ws.records.read(net.doctor_a, "r-" + "0" * 32)
    assert net.ws.node.head == head


def test_new_version_keeps_the_old_one(net: Net) -> None:
    first = _condition(net)
    written = net.ws.records.write(net.doctor_a, first, patient=net.patient.id)
    second = _condition(net)
    v2 = net.ws.records.write(net.doctor_a, second, patient=net.patient.id, record=written.record)
    assert v2.version == 2
    assert net.ws.records.read(net.doctor_a, written.record).resource == second
    assert net.ws.records.read(net.doctor_a, written.record, version=1).resource == first


def test_erase_shreds_content_and_still_verifies(net: Net) -> None:
    written = net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    assert net.ws.node.blobs.get(written.content_hash) is not None
    net.ws.records.erase(net.patient, written.record)
    assert net.ws.node.blobs.get(written.content_hash) is None
    assert net.ws.node.store.get_wrapped_key(written.record, 1, net.patient.id) is None
    with pytest.raises(ContentUnavailable):
        net.ws.records.read(net.patient, written.record, purpose="own")
    report = verify_chain(net.ws.node.store, net.ws.genesis, net.ws.node.blobs)
    assert report.ok, report.problem
    assert report.erased == 1


def test_emergency_access_is_flagged(net: Net) -> None:
    written = net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    net.ws.consent.emergency(net.doctor_b, net.patient.id, "unconscious", minutes=30)
    read = net.ws.records.read(net.doctor_b, written.record, purpose="emergency")
    assert read.basis.kind == "emergency"
    flagged = [e for e in _events(net) if e.emergency]
    assert [e.kind for e in flagged] == ["emergency.open", "access.read"]


def test_dispense_once_and_prescriber_sees_it(net: Net) -> None:
    rx = net.ws.records.write(
        net.doctor_a,
        synthetic.medication_request(net.rng, net.patient.id, net.doctor_a.id, WHEN),
        patient=net.patient.id,
    )
    with pytest.raises(AccessDenied):
        net.ws.records.dispense(net.pharmacist, rx.record)
    net.ws.consent.grant(
        net.patient,
        net.patient.id,
        "apotek-c",
        resource_types=["MedicationDispense", "MedicationRequest"],
        purpose="dispensing",
    )
    dispense = synthetic.medication_dispense(
        net.rng, net.patient.id, f"MedicationRequest/{rx.record}", net.pharmacist.id, WHEN
    )
    net.ws.records.dispense(net.pharmacist, rx.record, dispense)
    with pytest.raises(RejectedError) as again:
        net.ws.records.dispense(net.pharmacist, rx.record)
    assert again.value.code == "already_dispensed"
    assert net.ws.node.store.get("record", rx.record)["dispensed"] is True
    assert any(e.kind == "prescription.dispense" and e.record == rx.record for e in _events(net))


def test_revoked_member_is_refused(net: Net) -> None:
    net.ws.admin.revoke_member(net.ws.actor("klinik-a"), net.doctor_a.id)
    with pytest.raises(AccessDenied):
        net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)


def test_resubmission_is_idempotent(net: Net) -> None:
    from rekam.ledger.tx import make_tx

    body = {"member": net.doctor_b.id}
    tx = make_tx(
        net.ws.node.network_id,
        "member.revoke",
        "klinik-b",
        net.ws.actor("klinik-b").identity.signer,
        body,
        net.ws.node.clock(),
    )
    first = net.ws.node.submit_wait(tx)
    height = net.ws.node.head.height
    again = net.ws.node.submit_wait(tx)
    assert first == again and first.valid
    assert net.ws.node.head.height == height  # not ordered a second time


def test_receipt_verifies_offline_and_tampering_fails(net: Net) -> None:
    written = net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    store = net.ws.node.store
    checkpoint = make_checkpoint(
        store, net.ws.node.network_id, {o: i.signer for o, i in net.ws.org_identities.items()}
    )
    receipt = build_receipt(store, written.tx_id, checkpoint)
    keys = json.loads(net.ws.datadir.genesis_path.read_bytes())
    check = verify_receipt(json.loads(json.dumps(receipt)), keys, min_cosigners=3)
    assert check.valid and check.tx_type == "record.write" and len(check.cosigners) == 3
    for field, value in (
        ("code", "bad_signature"),
        ("index", receipt["index"] + 1),
        ("tx_proof", [*receipt["tx_proof"], "11" * 32]),
        ("results_root", "00" * 32),
    ):
        with pytest.raises(ReceiptError):
            verify_receipt({**receipt, field: value}, keys)
    forged_cp = json.loads(json.dumps(receipt))
    forged_cp["checkpoint"]["body"]["height"] += 1
    with pytest.raises(ReceiptError):
        verify_receipt(forged_cp, keys)
    other = {**keys, "name": "another-net"}
    with pytest.raises(ReceiptError):
        verify_receipt(receipt, other)


def test_nothing_identifying_on_chain_or_in_logs(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    written = net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    net.ws.records.read(net.doctor_a, written.record)
    nik = net.demographics["identifier"][0]["value"]
    family = net.demographics["name"][0]["family"]
    secrets = [nik.encode(), family.encode(), net.demographics["telecom"][0]["value"].encode()]
    chain = b"".join(b.to_bytes() for b in net.ws.node.store.iter_blocks())
    for table in ("record", "patient", "event", "consent"):
        chain += repr(list(net.ws.node.store.state_rows(table))).encode()
    for secret in secrets:
        assert secret not in chain
        assert secret.decode() not in caplog.text
    for digest in net.ws.node.blobs.iter_digests():
        blob = net.ws.node.blobs.get(digest)
        assert blob is not None and all(secret not in blob for secret in secrets)


def test_whole_chain_verifies(net: Net) -> None:
    net.ws.records.write(net.doctor_a, _condition(net), patient=net.patient.id)
    report = verify_chain(net.ws.node.store, net.ws.genesis, net.ws.node.blobs)
    assert report.ok, report.problem
    assert report.counts["member"] == 4


@pytest.mark.parametrize(
    ("file", "statement", "error", "match"),
    [
        (
            "chain.db",
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            SchemaVersionError,
            "99",
        ),
        ("content.db", "PRAGMA user_version = 99", DataDirError, "format 99"),
    ],
)
def test_newer_format_is_refused(
    tmp_path: Path, file: str, statement: str, error: type[Exception], match: str
) -> None:
    """A chain store or content file written by a newer Rekam is refused, not touched."""
    folder = tmp_path / "node"
    Workspace.create(folder, "test-net", ORGS[:1], kdf="fast").close()
    with closing(sqlite3.connect(folder / file)) as db, db:
        db.execute(statement)
    before = (folder / file).read_bytes()
    with pytest.raises(error, match=match):
        Workspace.open(folder)
    assert (folder / file).read_bytes() == before


def test_content_of_a_first_format_folder_is_moved_in(tmp_path: Path) -> None:
    """A folder whose content is a file per blob under blobs/ (the first format) opens with
    its content moved into content.db: records read as before and the chain verifies."""
    folder = tmp_path / "node"
    ws = Workspace.create(folder, "test-net", ORGS, kdf="fast")
    try:
        net = _populate(ws)
        condition = _condition(net)
        written = ws.records.write(net.doctor_a, condition, patient=net.patient.id)
        digests = list(ws.node.blobs.iter_digests())
        legacy = {d: ws.node.blobs.get(d) for d in digests}
    finally:
        ws.close()
    for name in ("content.db", "content.db-wal", "content.db-shm"):
        (folder / name).unlink(missing_ok=True)
    write_first_format(folder, {digest: data or b"" for digest, data in legacy.items()})
    with Workspace.open(folder) as ws:
        assert not (folder / "blobs").exists()
        assert sorted(ws.node.blobs.iter_digests()) == sorted(digests)
        doctor = ws.actor(net.doctor_a.id, "pw-doctor-klinik-a")
        assert ws.records.read(doctor, written.record, purpose="treatment").resource == condition
        report = verify_chain(ws.node.store, ws.genesis, ws.node.blobs)
        assert report.ok, report.problem
        assert report.blobs == len(digests)
