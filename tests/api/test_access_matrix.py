"""Access matrix through the API: role x resource x consent state.

Every allowed read returns content and leaves an allowed access event on the chain; every
forbidden one is refused with 403 and leaves a denied access event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import Api, open_api

ROLES = (
    "patient-3",
    "patient-1",
    "dokter-melati",
    "admin-melati",
    "dokter-kenanga",
    "apoteker-sentosa",
)
RESOURCES = ("Patient", "Observation", "Condition")
STATES = ("none", "granted", "revoked")


def expected(role: str, resource: str, state: str) -> bool:
    """Who may read patient 3's data: the policy written out independently of the code."""
    if role in ("patient-3", "dokter-melati"):
        return True  # the patient themself; a doctor of the home organisation
    if role == "admin-melati":
        return resource == "Patient"  # registration staff see the Patient resource only
    if role == "dokter-kenanga":
        return state == "granted" and resource == "Observation"  # consent scope
    return False


@pytest.fixture(scope="module")
def matrix_api(demo_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A node of its own, with an Observation and a Condition for demo patient 3."""
    yield from open_api(demo_template, tmp_path_factory.mktemp("matrix") / "node")


def _targets(api: Api) -> dict[str, str]:
    pid = api.patient_id(3)
    doctor = api.headers("dokter-melati")
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": 37.2, "unit": "Cel"},
    }
    cond = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J06.9"}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    ids = {"Patient": pid}
    for body in (obs, cond):
        r = api.client.post(f"/fhir/{body['resourceType']}", json=body, headers=doctor)
        assert r.status_code == 201, r.text
        ids[str(body["resourceType"])] = r.json()["id"]
    return ids


def test_access_matrix(matrix_api: Api) -> None:
    api = matrix_api
    pid = api.patient_id(3)
    ids = _targets(api)
    headers = {role: api.headers(role) for role in ROLES}
    patient = api.ws.actor(*api.principal("patient-3"))
    kenanga = api.principal("dokter-kenanga")[0]
    checked = 0
    for state in STATES:
        if state == "granted":
            grant = api.ws.consent.grant(
                patient, pid, kenanga, resource_types=["Observation"], days=1
            )
        elif state == "revoked":
            api.ws.consent.revoke(patient, grant.consent)
        for role in ROLES:
            principal = api.principal(role)[0]
            for resource in RESOURCES:
                before = len(api.events(pid))
                r = api.client.get(f"/fhir/{resource}/{ids[resource]}", headers=headers[role])
                allow = expected(role, resource, state)
                where = (role, resource, state, r.status_code)
                assert r.status_code == (200 if allow else 403), where
                if allow:
                    assert r.json()["id"] == ids[resource], where
                else:
                    assert r.json()["resourceType"] == "OperationOutcome", where
                new = [e for e in api.events(pid)[before:] if e.kind == "access.read"]
                assert len(new) == 1, where
                assert new[0].actor == principal and new[0].allowed is allow, where
                checked += 1
    assert checked == len(ROLES) * len(RESOURCES) * len(STATES)
