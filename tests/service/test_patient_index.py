"""The node-local keyed patient index: identifiers, name tokens, keying, and its filling by
the record service (writes and audited reads of Patient resources)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from rekam.service.demo import run_demo
from rekam.service.patient_index import (
    NIK_SYSTEM,
    PatientIndex,
    mrn_org,
    mrn_system,
    name_tokens,
)
from rekam.service.workspace import Workspace

MRN = mrn_system("klinik-contoh")


def patient(given: list[str], family: str, nik: str, mrn: str | None = None) -> dict[str, Any]:
    """A minimal synthetic Patient resource."""
    idents = [{"system": NIK_SYSTEM, "value": nik}]
    if mrn is not None:
        idents.append({"system": MRN, "value": mrn})
    return {
        "resourceType": "Patient",
        "identifier": idents,
        "name": [{"given": given, "family": family, "text": " ".join([*given, family])}],
    }


def test_name_tokens_strip_accents_case_and_punctuation() -> None:
    assert name_tokens("  Ánà-María O'Contoh ") == ["ana", "maria", "o", "contoh"]
    assert name_tokens("SITI   Nurhalizah") == ["siti", "nurhalizah"]
    assert name_tokens("--") == []


def test_identifiers_with_and_without_system(tmp_path: Path) -> None:
    index = PatientIndex(tmp_path)
    index.update("p-1", patient(["Ana"], "Contoh", "9971010101010001", "RM-990001"))
    index.update("p-2", patient(["Budi"], "Fiktif", "9971010101010002"))
    assert index.find_identifier("9971010101010001") == ["p-1"]
    assert index.find_identifier(f"{NIK_SYSTEM}|9971010101010002") == ["p-2"]
    assert index.find_identifier(f"{MRN}|RM-990001") == ["p-1"]
    assert index.find_identifier(" RM-990001 ") == ["p-1"]
    # The system must match when given; values are exact (no prefix search on a NIK).
    assert index.find_identifier(f"{MRN}|9971010101010001") == []
    assert index.find_identifier("997101010101000") == []
    assert index.find_identifier("") == []
    index.close()


def test_names_match_tokens_and_prefixes_of_three_or_more(tmp_path: Path) -> None:
    index = PatientIndex(tmp_path)
    index.update("p-1", patient(["Anastasia"], "Contoh", "1"))
    index.update("p-2", patient(["Ana", "Lestari"], "Fiktif", "2"))
    index.update("p-3", patient(["Li"], "Contoh", "3"))
    assert index.find_name("ana") == ["p-1", "p-2"]  # whole token and prefix
    assert index.find_name("anast") == ["p-1"]
    assert index.find_name("ANASTASIA contoh") == ["p-1"]  # every token must match
    assert index.find_name("ana fikt") == ["p-2"]
    assert index.find_name("Ána Lëstari") == ["p-2"]  # accents and case ignored
    assert index.find_name("li") == ["p-3"]  # a short query token must be a whole token
    assert index.find_name("an") == []  # ... and is not a prefix match
    assert index.find_name("cont") == ["p-1", "p-3"]
    assert index.find_name("anastasiax") == []
    assert index.find_name("!!") == []
    # The portal's one field: identifier or name.
    assert index.find("2") == ["p-2"]
    assert index.find("contoh") == ["p-1", "p-3"]
    index.close()


def test_a_new_head_replaces_the_patients_entries(tmp_path: Path) -> None:
    index = PatientIndex(tmp_path)
    index.update("p-1", patient(["Ana"], "Contoh", "9971010101010001"))
    index.update("p-1", patient(["Ana"], "Fiktif", "9971010101010009"))
    assert index.find_name("contoh") == []
    assert index.find_name("fiktif") == ["p-1"]
    assert index.find_identifier("9971010101010001") == []
    assert index.find_identifier("9971010101010009") == ["p-1"]
    index.close()


def test_nothing_in_the_clear_and_tags_depend_on_the_node_key(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    resource = patient(["Anastasia"], "Contoh", "9971010101010001", "RM-990001")
    for root in (one, two):
        index = PatientIndex(root)
        index.update("p-1", resource)
        index.close()
    raw = (one / "index" / "patients.db").read_bytes()
    for clear in ("Anastasia", "anastasia", "anas", "Contoh", "contoh", "9971010101010001"):
        assert clear.encode() not in raw
        assert clear.encode("utf-16-le") not in raw
    assert b"RM-990001" not in raw
    assert b"fhir.kemkes" not in raw and b"rekam.example" not in raw
    key = one / "secrets" / "patient-index.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE((one / "index").stat().st_mode) & 0o077 == 0
    # The same content under two node keys gives unrelated tags.
    import sqlite3

    def tags(root: Path) -> set[str]:
        db = sqlite3.connect(root / "index" / "patients.db")
        try:
            return {row[0] for row in db.execute("SELECT tag FROM patient_tag")}
        finally:
            db.close()

    assert tags(one) and not tags(one) & tags(two)
    # A plain (unkeyed) hash of the NIK is not among the tags either.
    import hashlib

    plain = {hashlib.sha256(v.encode()).hexdigest() for v in ("9971010101010001", "id*\x00")}
    assert not tags(one) & plain


def test_index_is_created_only_when_used(tmp_path: Path) -> None:
    index = PatientIndex(tmp_path)
    index.close()
    assert not (tmp_path / "index").exists()
    assert not (tmp_path / "secrets" / "patient-index.key").exists()


def test_mrn_systems() -> None:
    assert mrn_system("klinik-melati") == "https://rekam.example/org/klinik-melati/mrn"
    assert mrn_org("https://rekam.example/org/klinik-melati/mrn") == "klinik-melati"
    assert mrn_org(NIK_SYSTEM) is None
    assert mrn_org("https://rekam.example/org//mrn") is None


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo network (two patients, fast KDF)."""
    folder = tmp_path_factory.mktemp("index-demo") / "demo"
    run_demo(folder, kdf="fast", patients=2)
    return folder


def test_demo_registrations_fill_the_index(demo: Path) -> None:
    creds = json.loads((demo / "demo-credentials.json").read_text("utf-8"))
    ws = Workspace.open(demo)
    try:
        first = creds["patients"][0]
        assert first["mrn"] == "RM-990001"
        assert ws.patient_index.find_identifier("RM-990001") == [first["id"]]
        assert ws.patient_index.find_identifier(f"{mrn_system('klinik-melati')}|RM-990002") == [
            creds["patients"][1]["id"]
        ]
        assert first["id"] in ws.patient_index.find_name(first["name"])
    finally:
        ws.close()


def test_an_audited_read_fills_an_empty_index_and_a_new_version_replaces(
    demo: Path, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "node"
    shutil.copytree(demo, root)
    (root / "rekam.lock").unlink(missing_ok=True)
    # As on a node that never wrote these patients: the index starts empty.
    shutil.rmtree(root / "index")
    creds = json.loads((root / "demo-credentials.json").read_text("utf-8"))
    ws = Workspace.open(root)
    try:
        pid = creds["patients"][0]["id"]
        assert ws.patient_index.find_identifier("RM-990001") == []
        doctor = creds["members"]["dokter-melati"]
        actor = ws.actor(doctor["id"], doctor["passphrase"])
        record = ws.node.store.query("record", {"patient": pid, "resource_type": "Patient"})[0][0]
        before = len(ws.audit.history(pid))
        read = ws.records.read(actor, record)
        assert len(ws.audit.history(pid)) == before + 1  # the read that filled it is audited
        assert ws.patient_index.find_identifier("RM-990001") == [pid]
        # A corrected name (a new head written by the registrar) replaces the old tokens.
        admin = creds["members"]["admin-melati"]
        registrar = ws.actor(admin["id"], admin["passphrase"])
        corrected = dict(read.resource)
        corrected["name"] = [{"given": ["Zulaikha"], "family": "Contoh"}]
        ws.records.write(registrar, corrected, patient=pid, record=record)
        assert ws.patient_index.find_name("zulaikha") == [pid]
        old_given = creds["patients"][0]["name"].split()[0]
        assert pid not in ws.patient_index.find_name(old_given)
        # Reading the old version (not the head) does not bring the old name back.
        ws.records.read(actor, record, 1)
        assert pid not in ws.patient_index.find_name(old_given)
    finally:
        ws.close()


def test_erasing_the_patient_resource_drops_its_entries(demo: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "node"
    shutil.copytree(demo, root)
    (root / "rekam.lock").unlink(missing_ok=True)
    creds = json.loads((root / "demo-credentials.json").read_text("utf-8"))
    ws = Workspace.open(root)
    try:
        pid, other = creds["patients"][0]["id"], creds["patients"][1]["id"]
        assert ws.patient_index.find_identifier("RM-990001") == [pid]
        record = ws.node.store.query("record", {"patient": pid, "resource_type": "Patient"})[0][0]
        ws.records.erase(ws.actor("klinik-melati"), record, reason="entered_in_error")
        assert ws.patient_index.find_identifier("RM-990001") == []
        assert pid not in ws.patient_index.find_name(creds["patients"][0]["name"])
        assert ws.patient_index.find_identifier("RM-990002") == [other]
    finally:
        ws.close()
