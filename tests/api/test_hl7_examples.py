"""Official HL7 FHIR R4 example resources, imported through the API and read back unchanged.

The files in fixtures/hl7 are the HL7 examples as published. An importer maps references to
what this network holds (the examples' patients, practitioners and organisations are not
ours), so each example's references are first mapped onto the demo network; what a client
then writes is exactly what it must read back, apart from ``id`` and ``meta``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api

HL7 = Path(__file__).parent / "fixtures" / "hl7"
EXAMPLES = sorted(p.name for p in HL7.glob("*.json"))


def _map_references(node: Any, targets: dict[str, str]) -> Any:
    """Every ``reference`` of a known type points at the demo network's own; others go."""
    if isinstance(node, list):
        mapped = [_map_references(item, targets) for item in node]
        kept = [item for item in mapped if item is not None]
        return kept or None  # FHIR has no empty arrays
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "reference" and isinstance(value, str) and not value.startswith("#"):
            rtype = value.split("/", 1)[0]
            if rtype not in targets:
                return None  # a reference to something no demo node holds: leave it out
            out[key] = targets[rtype]
            continue
        mapped = _map_references(value, targets)
        if mapped is not None:
            out[key] = mapped
    return out or None  # nor empty objects


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    out.pop("id", None)
    out.pop("meta", None)
    return out


def test_every_example_is_a_supported_type() -> None:
    assert len(EXAMPLES) >= 10
    kinds = {name.split("-", 1)[0] for name in EXAMPLES}
    assert kinds >= {"Observation", "Condition", "Encounter", "Procedure", "Immunization"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_official_example_reads_back_unchanged(api: Api, name: str) -> None:
    original = json.loads((HL7 / name).read_text("utf-8"))
    member = api.principal("dokter-melati")[0]
    org = api.ws.node.store.get("member", member)
    assert org is not None
    targets = {
        "Patient": f"Patient/{api.patient_id(1)}",
        "Practitioner": f"Practitioner/{member}",
        "Organization": f"Organization/{org['org']}",
    }
    resource = _map_references(original, targets)
    resource.pop("id", None)
    headers = api.headers("dokter-melati", "user/*.*")
    created = api.client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert created.status_code == 201, created.text
    location = created.headers["Location"].split("/_history")[0]
    read = api.client.get("/fhir" + location.split("/fhir", 1)[1], headers=headers)
    assert read.status_code == 200
    assert _strip(read.json()) == _strip(resource)
    # Nothing of the example was lost in mapping apart from references: the codes stay.
    assert json.dumps(original.get("code", {}), sort_keys=True) == json.dumps(
        resource.get("code", {}), sort_keys=True
    )
