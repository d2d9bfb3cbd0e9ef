"""FHIR Patient search by name through the node's keyed patient index."""

from __future__ import annotations

from urllib.parse import quote

from tests.api.conftest import Api


def ids(bundle: dict[str, object]) -> list[str]:
    """The resource ids of a search Bundle's entries."""
    entries = bundle.get("entry") or []
    assert isinstance(entries, list)
    return [e["resource"]["id"] for e in entries]


def test_name_search_finds_demo_patients_with_a_reader_basis(api: Api) -> None:
    pid = api.patient_id(1)
    name = api.creds["patients"][0]["name"]
    given, family = name.split()[0], name.split()[-1]
    doctor = api.headers("dokter-melati")
    before = len([e for e in api.events(pid) if e.kind == "access.read"])
    for query in (name, given.upper(), given[:3].lower(), f"{family} {given}"):
        found = api.client.get(f"/fhir/Patient?name={quote(query)}", headers=doctor)
        assert found.status_code == 200, query
        body = found.json()
        assert pid in ids(body), query
        assert all(e["resource"]["resourceType"] == "Patient" for e in body["entry"])
        assert body["total"] == len(body["entry"])
    # Every hit was an audited read of the Patient resource.
    reads = [e for e in api.events(pid) if e.kind == "access.read"][before:]
    assert len(reads) == 4 and all(e.allowed for e in reads)
    # name and identifier together must both match.
    both = api.client.get(
        f"/fhir/Patient?name={quote(given)}&identifier=RM-990001", headers=doctor
    ).json()
    assert ids(both) == [pid]
    other = api.client.get(
        f"/fhir/Patient?name={quote(given)}&identifier=RM-990002", headers=doctor
    ).json()
    assert pid not in ids(other)
    nobody = api.client.get("/fhir/Patient?name=Zzyzxqwv", headers=doctor).json()
    assert nobody["total"] == 0


def test_name_search_without_basis_returns_nothing_and_records_the_denial(api: Api) -> None:
    pid = api.patient_id(3)  # no consent to Klinik Kenanga
    name = api.creds["patients"][2]["name"]
    before = len(api.events(pid))
    found = api.client.get(
        f"/fhir/Patient?name={quote(name)}", headers=api.headers("dokter-kenanga")
    ).json()
    assert pid not in ids(found)
    denied = [e for e in api.events(pid)[before:] if e.kind == "access.read"]
    assert denied and not any(e.allowed for e in denied)


def test_name_search_refusals_and_capability(api: Api) -> None:
    doctor = api.headers("dokter-melati")
    pid = api.patient_id(1)
    wrong_type = api.client.get(f"/fhir/Observation?patient={pid}&name=ana", headers=doctor)
    assert wrong_type.status_code == 400
    empty = api.client.get("/fhir/Patient?name=--", headers=doctor)
    assert empty.status_code == 400
    assert empty.json()["resourceType"] == "OperationOutcome"
    modifier = api.client.get("/fhir/Patient?name:exact=ana", headers=doctor)
    assert modifier.status_code == 400
    metadata = api.client.get("/fhir/metadata").json()
    patient = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "name", "type": "string"} in patient["searchParam"]
    assert {"name": "identifier", "type": "token"} in patient["searchParam"]
