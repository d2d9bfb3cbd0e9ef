"""The FHIR R4 API in process: round trips, versions, search, import, errors, views, ledger."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import httpx
import pytest

from rekam.records.fhir import validate_resource
from rekam.service.fhir_store import FHIR_TYPES
from tests.api.conftest import Api, load_fixture

FIXTURES = [
    "observation-example-f001-glucose.json",
    "condition-example-f201-fever.json",
    "allergyintolerance-example-extension.json",
]


def _for_patient(name: str, patient: str) -> dict[str, Any]:
    text = json.dumps(load_fixture(name)).replace("Patient/PATIENT", f"Patient/{patient}")
    data: dict[str, Any] = json.loads(text)
    return data


def _without_server_fields(resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    out.pop("id", None)
    out.pop("meta", None)
    return out


def _height(api: Api) -> int:
    return int(api.ws.node.head.height)


def test_metadata_lists_exactly_the_served_types(api: Api) -> None:
    r = api.client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["fhirVersion"] == "4.0.1"
    types = {res["type"] for res in body["rest"][0]["resource"]}
    assert types == set(FHIR_TYPES)
    consent = next(res for res in body["rest"][0]["resource"] if res["type"] == "Consent")
    assert {i["code"] for i in consent["interaction"]} == {"read", "search-type"}


@pytest.mark.parametrize("name", FIXTURES)
def test_hl7_examples_read_back_unchanged(api: Api, name: str) -> None:
    headers = api.headers("dokter-melati")
    resource = _for_patient(name, api.patient_id(1))
    created = api.client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert location.endswith("/_history/1")
    read = api.client.get(
        f"/fhir/{resource['resourceType']}/{created.json()['id']}", headers=headers
    )
    assert read.status_code == 200
    body = read.json()
    assert body["meta"]["versionId"] == "1"
    assert _without_server_fields(body) == _without_server_fields(resource)


def test_update_makes_a_new_version_and_keeps_the_old(api: Api) -> None:
    headers = api.headers("dokter-melati")
    first = _for_patient("condition-example-f201-fever.json", api.patient_id(1))
    created = api.client.post("/fhir/Condition", json=first, headers=headers).json()
    second = copy.deepcopy(first)
    second["id"] = created["id"]
    second["clinicalStatus"]["coding"][0]["code"] = "active"
    updated = api.client.put(f"/fhir/Condition/{created['id']}", json=second, headers=headers)
    assert updated.status_code == 200, updated.text
    assert updated.json()["meta"]["versionId"] == "2"
    v1 = api.client.get(f"/fhir/Condition/{created['id']}/_history/1", headers=headers).json()
    assert v1["clinicalStatus"]["coding"][0]["code"] == "resolved"
    history = api.client.get(f"/fhir/Condition/{created['id']}/_history", headers=headers).json()
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    missing = api.client.get(f"/fhir/Condition/{created['id']}/_history/3", headers=headers)
    assert missing.status_code == 404


def test_search_by_patient_code_date_and_paging(api: Api) -> None:
    headers = api.headers("dokter-melati")
    pid = api.patient_id(1)
    for value, day in ((5.1, "2021-01-05"), (7.9, "2021-06-05"), (6.0, "2022-01-05")):
        obs = _for_patient("observation-example-f001-glucose.json", pid)
        obs["valueQuantity"]["value"] = value
        obs["effectivePeriod"] = {"start": f"{day}T08:00:00+07:00"}
        assert api.client.post("/fhir/Observation", json=obs, headers=headers).status_code == 201
    r = api.client.get(
        f"/fhir/Observation?subject=Patient/{pid}&code=http://loinc.org|15074-8&date=ge2021-01-01&date=lt2022-01-01",
        headers=headers,
    )
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "searchset"
    values = sorted(e["resource"]["valueQuantity"]["value"] for e in bundle["entry"])
    assert values == [5.1, 7.9]
    page = api.client.get(f"/fhir/Observation?patient={pid}&_count=2", headers=headers).json()
    assert len(page["entry"]) == 2
    assert page["total"] > 2
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    page2 = api.client.get(next_url, headers=headers).json()
    ids1 = {e["resource"]["id"] for e in page["entry"]}
    ids2 = {e["resource"]["id"] for e in page2["entry"]}
    assert ids1.isdisjoint(ids2)
    none = api.client.get(
        f"/fhir/Observation?patient={pid}&code=http://loinc.org|0000-0", headers=headers
    ).json()
    assert none["total"] == 0


def test_search_hits_are_audited(api: Api) -> None:
    headers = api.headers("dokter-melati")
    pid = api.patient_id(1)
    before = len(api.events(pid))
    bundle = api.client.get(f"/fhir/Condition?patient={pid}", headers=headers).json()
    after = api.events(pid)[before:]
    reads = [e for e in after if e.kind == "access.read" and e.allowed]
    assert {e.record for e in reads} >= {e["resource"]["id"] for e in bundle["entry"]}


def test_transaction_bundle_imports_history_and_everything_exports_it(api: Api) -> None:
    headers = api.headers("dokter-melati")
    bundle = load_fixture("bundle-legacy-import.json")
    r = api.client.post("/fhir", json=bundle, headers=headers)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created"] * 4
    patient_id = entries[0]["response"]["location"].split("/")[1]
    encounter_id = entries[1]["response"]["location"].split("/")[1]
    condition = api.client.get(f"/fhir/{entries[2]['response']['location']}", headers=headers)
    assert condition.json()["subject"]["reference"] == f"Patient/{patient_id}"
    assert condition.json()["encounter"]["reference"] == f"Encounter/{encounter_id}"
    assert condition.json()["code"]["coding"][0]["display"].startswith("Type 2 diabetes")
    everything = api.client.get(f"/fhir/Patient/{patient_id}/$everything", headers=headers)
    types = sorted(e["resource"]["resourceType"] for e in everything.json()["entry"])
    assert types == ["Condition", "Encounter", "MedicationRequest", "Patient"]
    # The NIK is found through the node's keyed index, and only with a reader's rights.
    found = api.client.get(
        "/fhir/Patient?identifier=https://fhir.kemkes.go.id/id/nik|9971010101010001",
        headers=headers,
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [patient_id]
    stranger = api.client.get(
        "/fhir/Patient?identifier=9971010101010001", headers=api.headers("dokter-kenanga")
    ).json()
    assert stranger["total"] == 0


def test_failed_bundle_entry_writes_nothing(api: Api) -> None:
    headers = api.headers("dokter-melati")
    bundle = load_fixture("bundle-legacy-import.json")
    bundle["entry"][3]["resource"]["status"] = "not-a-status"
    height = _height(api)
    r = api.client.post("/fhir", json=bundle, headers=headers)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "entry[3]" in r.json()["issue"][0]["diagnostics"]
    assert _height(api) == height


BAD_BODIES = [
    ("invalid json", "Observation", b"{not json", 400),
    ("wrong type in url", "Condition", None, 400),
    ("invalid resource", "Observation", b'{"resourceType":"Observation","status":"final"}', 400),
    ("unsupported type", "Basic", b'{"resourceType":"Basic"}', 404),
    ("read-only view", "AuditEvent", b'{"resourceType":"AuditEvent"}', 405),
]


@pytest.mark.parametrize(("case", "rtype", "body", "status"), BAD_BODIES)
def test_bad_input_gets_operation_outcome_and_writes_nothing(
    api: Api, case: str, rtype: str, body: bytes | None, status: int
) -> None:
    headers = {**api.headers("dokter-melati"), "Content-Type": "application/fhir+json"}
    if body is None:
        body = json.dumps(_for_patient(FIXTURES[0], api.patient_id(1))).encode()
    height = _height(api)
    r = api.client.post(f"/fhir/{rtype}", content=body, headers=headers)
    assert r.status_code == status, (case, r.text)
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "Traceback" not in r.text
    assert _height(api) == height


def test_unknown_reference_is_422_and_no_plaintext_leaks(api: Api) -> None:
    headers = api.headers("dokter-melati")
    obs = _for_patient(FIXTURES[0], api.patient_id(1))
    obs["performer"] = [{"reference": "Practitioner/m-" + "0" * 32}]
    height = _height(api)
    r = api.client.post("/fhir/Observation", json=obs, headers=headers)
    assert r.status_code == 422
    assert "van de Heuvel" not in r.text and "6323" not in r.text
    ghost = _for_patient(FIXTURES[0], "p-" + "1" * 32)
    assert api.client.post("/fhir/Observation", json=ghost, headers=headers).status_code == 422
    assert _height(api) == height


def test_oversized_body_is_refused(api: Api) -> None:
    headers = api.headers("dokter-melati")
    obs = _for_patient(FIXTURES[0], api.patient_id(1))
    obs["note"] = [{"text": "x" * (300 * 1024)}]
    height = _height(api)
    r = api.client.post("/fhir/Observation", json=obs, headers=headers)
    assert r.status_code == 413
    assert _height(api) == height


def test_tokens_scopes_expiry_and_revocation(api: Api) -> None:
    pid = api.patient_id(1)
    url = f"/fhir/Condition?patient={pid}"
    assert api.client.get(url).status_code == 401
    assert api.client.get(url, headers={"Authorization": "Bearer t-x.y"}).status_code == 401
    read_only = api.headers("dokter-melati", "user/*.read")
    assert api.client.get(url, headers=read_only).status_code == 200
    obs = _for_patient(FIXTURES[0], pid)
    assert api.client.post("/fhir/Observation", json=obs, headers=read_only).status_code == 403
    obs_only = api.headers("dokter-melati", "user/Observation.write user/Observation.read")
    assert api.client.post("/fhir/Observation", json=obs, headers=obs_only).status_code == 201
    assert api.client.get(url, headers=obs_only).status_code == 403
    token = api.token("dokter-melati")
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.client.get(url, headers=bearer).status_code == 200
    assert api.tokens.revoke(token.split(".")[0])
    assert api.client.get(url, headers=bearer).status_code == 401
    wrong_secret = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (
        api.client.get(url, headers={"Authorization": f"Bearer {wrong_secret}"}).status_code == 401
    )
    expired = api.tokens.issue(
        *api.principal("dokter-melati"),
        "user/*.*",
        now=api.ws.node.clock() - 10_000,
        expires_in_ms=1000,
    )
    assert api.client.get(url, headers={"Authorization": f"Bearer {expired}"}).status_code == 401


def test_token_store_keeps_no_passphrase_in_the_clear(api: Api) -> None:
    _, passphrase = api.principal("dokter-melati")
    assert passphrase
    api.token("dokter-melati")
    raw = (api.root / "api" / "tokens.db").read_bytes()
    assert passphrase.encode() not in raw


def test_consent_audit_event_and_provenance_views(api: Api) -> None:
    patient = api.patient_id(1)
    own = api.headers("patient-1")
    consents = api.client.get(f"/fhir/Consent?patient={patient}", headers=own).json()
    assert consents["total"] >= 3
    for entry in consents["entry"]:
        validate_resource(entry["resource"], "Consent")
    events = api.client.get(f"/fhir/AuditEvent?patient={patient}", headers=own).json()
    denied = [e["resource"] for e in events["entry"] if e["resource"]["outcome"] == "4"]
    assert denied, "the demo's denied read is an AuditEvent with a failure outcome"
    for entry in events["entry"]:
        validate_resource(entry["resource"], "AuditEvent")
    # The second demo patient had an emergency access.
    other = api.patient_id(2)
    emergency = api.client.get(
        f"/fhir/AuditEvent?patient={other}", headers=api.headers("patient-2")
    ).json()
    codes = {e["resource"]["type"]["code"] for e in emergency["entry"]}
    assert "110127" in codes
    condition = api.creds["records"]["condition"]
    prov = api.client.get(
        f"/fhir/Provenance?target=Condition/{condition}", headers=api.headers("dokter-melati")
    ).json()
    assert len(prov["entry"]) == 2
    for entry in prov["entry"]:
        validate_resource(entry["resource"], "Provenance")
    tx_id = prov["entry"][0]["resource"]["id"]
    receipt = api.client.get(f"/api/receipts/{tx_id}", headers=api.headers("dokter-melati"))
    assert receipt.status_code == 200
    assert receipt.json()["tx_id"] == tx_id
    outsider = api.client.get(
        f"/fhir/AuditEvent?patient={patient}", headers=api.headers("apoteker-sentosa")
    )
    assert outsider.status_code == 200  # the pharmacy holds a consent for this patient
    stranger = api.client.get(f"/fhir/Consent?patient={other}", headers=api.headers("analis-prima"))
    assert stranger.status_code == 403


def test_ledger_api(api: Api) -> None:
    status = api.client.get("/api/status").json()
    assert status["height"] == _height(api)
    headers = api.headers("dokter-melati")
    block = api.client.get("/api/blocks/1", headers=headers).json()
    tx_id = block["txs"][0]["tx"]
    tx = api.client.get(f"/api/transactions/{tx_id}", headers=headers).json()
    assert tx["height"] == 1
    assert api.client.get("/api/blocks/999999", headers=headers).status_code == 404
    history = api.client.get(
        f"/api/patients/{api.patient_id(1)}/access-history", headers=api.headers("patient-1")
    ).json()
    assert any(h["event"] == "access.read" and h["allowed"] is False for h in history)
    assert api.client.post("/api/checkpoints", headers=headers).status_code == 201
    assert api.client.get("/api/checkpoints/latest", headers=headers).status_code == 200
    assert api.client.get("/openapi.json").status_code == 200


def test_identifier_search_finds_a_patient_read_through_the_api(api: Api) -> None:
    pid = api.patient_id(1)
    doctor = api.headers("dokter-melati")
    patient = api.client.get(f"/fhir/Patient/{pid}", headers=doctor).json()
    nik = patient["identifier"][0]["value"]
    found = api.client.get(f"/fhir/Patient?identifier={nik}", headers=doctor).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [pid]
    # The pharmacy's consent covers prescriptions, not the Patient resource.
    before = len(api.events(pid))
    pharmacy = api.client.get(
        f"/fhir/Patient?identifier={nik}", headers=api.headers("apoteker-sentosa")
    ).json()
    assert pharmacy["total"] == 0
    denied = [e for e in api.events(pid)[before:] if e.kind == "access.read"]
    assert [e.allowed for e in denied] == [False]


def test_satusehat_export_shape(api: Api) -> None:
    pid = api.patient_id(1)
    doctor_id = api.principal("dokter-melati")[0]
    headers = api.headers("dokter-melati")
    url = f"/fhir/Patient/{pid}/$everything?shape=satusehat"
    assert api.client.get(url, headers=headers).status_code == 400  # no mapping yet
    mapping = {
        "organizations": {"klinik-melati": "10000004"},
        "practitioners": {doctor_id: "10009880728"},
        "patients": {pid: "P02478375538"},
        "locations": {"klinik-melati": {"id": "b017aa54-f1df-4ec2-9d84-8823815d7228"}},
    }
    (api.root / "satusehat.json").write_text(json.dumps(mapping))
    bundle = api.client.get(url, headers=headers).json()
    resources = [e["resource"] for e in bundle["entry"]]
    encounter = next(r for r in resources if r["resourceType"] == "Encounter")
    assert encounter["subject"]["reference"] == "Patient/P02478375538"
    assert encounter["participant"][0]["individual"]["reference"] == "Practitioner/10009880728"
    assert encounter["serviceProvider"]["reference"] == "Organization/10000004"
    assert encounter["location"][0]["location"]["reference"].startswith("Location/b017aa54")
    assert any(
        i["system"] == "http://sys-ids.kemkes.go.id/encounter/10000004"
        for i in encounter["identifier"]
    )
    assert encounter["statusHistory"][0]["status"] == encounter["status"]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    assert patient["id"] == "P02478375538"
    for resource in resources:
        validate_resource(resource, resource["resourceType"])
    plain = api.client.get(f"/fhir/Patient/{pid}/$everything", headers=headers).json()
    plain_enc = next(
        e["resource"] for e in plain["entry"] if e["resource"]["resourceType"] == "Encounter"
    )
    assert plain_enc["subject"]["reference"] == f"Patient/{pid}"


def test_concurrent_requests_share_blocks_and_all_commit(api: Api) -> None:
    pid = api.patient_id(1)
    headers = api.headers("dokter-melati")
    body = _for_patient(FIXTURES[0], pid)
    n = 24

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            responses = await asyncio.gather(
                *(client.post("/fhir/Observation", json=body, headers=headers) for _ in range(n))
            )
        return [r.status_code for r in responses]

    height = _height(api)
    assert asyncio.run(run()) == [201] * n
    # Concurrent writes are batched: fewer blocks than requests (each request is one tx).
    assert 0 < _height(api) - height < n


def test_bundle_with_unknown_reference_for_a_new_patient_writes_nothing(api: Api) -> None:
    bundle = load_fixture("bundle-legacy-import.json")
    bundle["entry"][2]["resource"]["asserter"] = {"reference": "Practitioner/m-" + "0" * 31 + "1"}
    height = _height(api)
    r = api.client.post("/fhir", json=bundle, headers=api.headers("dokter-melati"))
    assert r.status_code == 422, r.text
    assert "entry[2]" in r.json()["issue"][0]["diagnostics"]
    assert _height(api) == height
    # Registration staff may register the patient but not write clinical records for them.
    admin = api.client.post(
        "/fhir", json=load_fixture("bundle-legacy-import.json"), headers=api.headers("admin-melati")
    )
    assert admin.status_code == 403
    assert _height(api) == height


def test_patient_scopes_confine_a_member_to_the_patient_in_context(api: Api) -> None:
    p1, p3 = api.patient_id(1), api.patient_id(3)
    member, passphrase = api.principal("dokter-melati")
    token = api.tokens.issue(
        member,
        passphrase,
        "patient/*.read",
        now=api.ws.node.clock(),
        expires_in_ms=60_000,
        patient=p1,
    )
    headers = {"Authorization": f"Bearer {token}"}
    own = api.client.get("/fhir/Condition", headers=headers)
    assert own.status_code == 200 and own.json()["total"] >= 1
    assert api.client.get(f"/fhir/Patient/{p1}", headers=headers).status_code == 200
    before = len(api.events(p3))
    # The doctor's organisation could read patient 3, but this token is confined to p1.
    other = api.client.get(f"/fhir/Patient/{p3}", headers=headers)
    assert other.status_code == 403
    refused = [e for e in api.events(p3)[before:] if e.kind == "access.read"]
    assert [(e.actor, e.allowed) for e in refused] == [(member, False)]
    assert api.client.get(f"/fhir/Condition?patient={p3}", headers=headers).status_code == 403
    obs = _for_patient(FIXTURES[0], p1)
    assert api.client.post("/fhir/Observation", json=obs, headers=headers).status_code == 403
    no_context = api.headers("dokter-melati", "patient/*.read")
    assert api.client.get(f"/fhir/Patient/{p1}", headers=no_context).status_code == 403


def test_a_read_refused_by_scope_is_recorded_for_the_patient(api: Api) -> None:
    pid = api.patient_id(1)
    member = api.principal("dokter-melati")[0]
    full = api.headers("dokter-melati", "user/*.read")
    found = api.client.get(f"/fhir/Condition?patient={pid}", headers=full).json()
    condition = found["entry"][0]["resource"]["id"]
    narrow = api.headers("dokter-melati", "user/Observation.read")
    before = len(api.events(pid))
    assert api.client.get(f"/fhir/Condition/{condition}", headers=narrow).status_code == 403
    refused = [e for e in api.events(pid)[before:] if e.kind == "access.read"]
    assert [(e.actor, e.allowed, e.record) for e in refused] == [(member, False, condition)]
    # An unknown id names nobody's data: refused, nothing recorded.
    height = _height(api)
    unknown = "r-" + "0" * 32
    assert api.client.get(f"/fhir/Condition/{unknown}", headers=narrow).status_code == 403
    assert _height(api) == height
