"""Tests for rekam.records.fhir: FHIR R4 validation, faithful round trips, safe errors."""

from __future__ import annotations

import copy
import json
import traceback
from types import MappingProxyType
from typing import Any

import pytest

from rekam.records.fhir import (
    SUPPORTED_TYPES,
    FhirValidationError,
    ValidatedResource,
    content_bytes,
    patient_reference,
    references,
    validate_resource,
)

SECRET = "SENSITIVE-VALUE-123"
PATIENT_REF = {"reference": "Patient/p1"}
CODE = {"coding": [{"system": "http://loinc.org", "code": "8310-5"}], "text": "Suhu"}

VALID: dict[str, dict[str, Any]] = {
    "Patient": {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Contoh", "given": ["Sari"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
    },
    "Practitioner": {"resourceType": "Practitioner", "name": [{"text": "dr. Budi Fiktif"}]},
    "Organization": {"resourceType": "Organization", "name": "Klinik Pratama Contoh"},
    "Encounter": {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": PATIENT_REF,
    },
    "Condition": {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]},
        "subject": PATIENT_REF,
    },
    "Observation": {
        "resourceType": "Observation",
        "status": "final",
        "code": CODE,
        "subject": PATIENT_REF,
        "valueQuantity": {"value": 37.5, "unit": "°C", "system": "http://unitsofmeasure.org"},
    },
    "Procedure": {"resourceType": "Procedure", "status": "completed", "subject": PATIENT_REF},
    "AllergyIntolerance": {
        "resourceType": "AllergyIntolerance",
        "patient": PATIENT_REF,
        "code": {"text": "Amoksisilin"},
    },
    "MedicationRequest": {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Paracetamol 500 mg Tablet"},
        "subject": PATIENT_REF,
    },
    "MedicationDispense": {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {"text": "Paracetamol 500 mg Tablet"},
        "subject": PATIENT_REF,
    },
    "Immunization": {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"text": "BCG"},
        "patient": PATIENT_REF,
        "occurrenceDateTime": "2024-01-15",
    },
    "DiagnosticReport": {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"text": "Hematologi lengkap"},
        "subject": PATIENT_REF,
    },
    "DocumentReference": {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": PATIENT_REF,
        "content": [{"attachment": {"contentType": "application/pdf", "url": "urn:uuid:1"}}],
    },
    "Consent": {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": PATIENT_REF,
    },
    "AuditEvent": {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2024-05-01T09:00:00+07:00",
        "agent": [{"who": {"reference": "Practitioner/dr1"}, "requestor": True}],
        "source": {"observer": {"reference": "Organization/org1"}},
    },
    "Provenance": {
        "resourceType": "Provenance",
        "target": [{"reference": "Observation/o1"}],
        "recorded": "2024-05-01T09:00:00+07:00",
        "agent": [{"who": {"reference": "Practitioner/dr1"}}],
    },
    "ServiceRequest": {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": PATIENT_REF,
    },
    "Location": {"resourceType": "Location", "name": "Ruang Periksa 1"},
}


def test_examples_cover_every_supported_type() -> None:
    assert set(VALID) == SUPPORTED_TYPES
    assert len(SUPPORTED_TYPES) == 18


@pytest.mark.parametrize("resource_type", sorted(VALID))
def test_valid_examples_pass_in_every_input_form(resource_type: str) -> None:
    example = VALID[resource_type]
    text = json.dumps(example, ensure_ascii=False)
    for given in (example, text, text.encode("utf-8")):
        result = validate_resource(given, expected_type=resource_type)
        assert isinstance(result, ValidatedResource)
        assert result.resource_type == resource_type
        assert result.data == example


def test_mapping_input_is_copied_and_any_mapping_is_accepted() -> None:
    original = copy.deepcopy(VALID["Observation"])
    result = validate_resource(MappingProxyType(original))
    assert type(result.data) is dict
    original["status"] = "cancelled"
    original["code"]["text"] = "changed"
    assert result.data["status"] == "final"
    assert result.data["code"]["text"] == "Suhu"


def _refused(data: Any, expected_type: str | None = None) -> FhirValidationError:
    with pytest.raises(FhirValidationError) as info:
        validate_resource(data, expected_type)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.issues
    assert all(isinstance(issue, str) and issue for issue in err.issues)
    # Nothing chained: a pydantic error (which quotes input) must not ride along.
    assert err.__cause__ is None
    assert err.__context__ is None
    return err


def _assert_no_leak(err: FhirValidationError) -> None:
    rendered = [str(err), repr(err), *err.issues, "".join(traceback.format_exception(err))]
    for text in rendered:
        assert SECRET not in text
        assert "Budi" not in text


def _obs(**changes: Any) -> dict[str, Any]:
    resource = copy.deepcopy(VALID["Observation"])
    resource.update(changes)
    return resource


INVALID: dict[str, dict[str, Any]] = {
    "status code": _obs(status=SECRET),
    "decimal": _obs(valueQuantity={"value": SECRET}),
    "unknown field": _obs(**{SECRET: SECRET, "note Budi": "Budi"}),
    "invalid id": _obs(id=f"{SECRET} Budi!"),
    "string for integer": _obs(valueQuantity=None, valueInteger=SECRET),
    "string for CodeableConcept": _obs(code=SECRET),
    "datetime": _obs(effectiveDateTime=SECRET),
    "choice conflict": _obs(valueString=SECRET, valueBoolean=True),
    "unknown contained type": _obs(contained=[{"resourceType": SECRET, "id": "c1"}]),
    "bad contained content": _obs(
        contained=[{"resourceType": "Patient", "id": "c1", "name": [{"text": SECRET, "x": 1}]}]
    ),
    "extension without url": _obs(extension=[{"valueString": SECRET}]),
    "reference not a string": _obs(subject={"reference": ["Patient", SECRET]}),
    "birthDate": {"resourceType": "Patient", "birthDate": SECRET},
    "gender": {"resourceType": "Patient", "gender": SECRET},
    "name not a list": {"resourceType": "Patient", "name": {"text": SECRET}},
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_resources_are_refused_without_echoing_input(case: str) -> None:
    data = {k: v for k, v in INVALID[case].items() if v is not None}
    for given in (data, json.dumps(data), json.dumps(data).encode()):
        err = _refused(given)
        _assert_no_leak(err)


def test_issues_are_path_and_problem() -> None:
    resource = _obs()
    del resource["status"]
    err = _refused(resource)
    assert err.issues == ["Observation.status: field required"]

    err = _refused(_obs(component=[{"code": CODE, "valueQuantity": {"value": SECRET}}]))
    assert err.issues == ["Observation.component[0].valueQuantity.value: invalid format"]

    err = _refused(_obs(valueString="x", valueBoolean=True))
    assert err.issues == ["Observation.value[x]: more than one type given for a choice element"]

    resource = copy.deepcopy(VALID["MedicationRequest"])
    del resource["medicationCodeableConcept"]
    err = _refused(resource)
    assert err.issues == ["MedicationRequest.medication[x]: field required"]

    err = _refused(_obs(**{f"{SECRET} key": 1}))
    assert err.issues == ["Observation.<key>: unknown field"]


@pytest.mark.parametrize(
    ("change", "issue"),
    [
        (
            {"valueQuantity": None, "valueInteger": "5"},
            "Observation.valueInteger: expected integer",
        ),
        (
            {"valueQuantity": None, "valueInteger": 5.0},
            "Observation.valueInteger: expected integer",
        ),
        (
            {"valueQuantity": None, "valueInteger": True},
            "Observation.valueInteger: expected integer",
        ),
        (
            {"valueQuantity": None, "valueBoolean": "true"},
            "Observation.valueBoolean: expected boolean",
        ),
        ({"valueQuantity": None, "valueBoolean": 1}, "Observation.valueBoolean: expected boolean"),
        ({"effectiveDateTime": 20240101}, "Observation.effectiveDateTime: expected string"),
        ({"valueQuantity": {"value": True}}, "Observation.valueQuantity.value: invalid format"),
        ({"issued": None}, "Observation.issued: null value"),
        ({"category": []}, "Observation.category: empty array"),
        ({"code": {}}, "Observation.code: empty object"),
        ({"category": [None]}, "Observation.category: null in array"),
        ({"fhir_comments": ["x"]}, "Observation.fhir_comments: unknown field"),
        ({"status": "selesai"}, "Observation.status: code not in the required value set"),
    ],
)
def test_json_rules_the_models_let_through(change: dict[str, Any], issue: str) -> None:
    resource = _obs()
    for key, value in change.items():
        if value is None and key == "valueQuantity":
            del resource[key]
        else:
            resource[key] = value
    err = _refused(resource)
    assert err.issues == [issue]


def test_json_type_rules_apply_inside_contained_and_components() -> None:
    contained = {"resourceType": "Patient", "id": "c1", "active": "true"}
    err = _refused(_obs(contained=[contained]))
    assert err.issues == ["Observation.contained[0].active: expected boolean"]
    err = _refused(_obs(component=[{"code": CODE, "valueInteger": "7"}]))
    assert err.issues == ["Observation.component[0].valueInteger: expected integer"]


def test_primitive_arrays_may_align_nulls_with_extensions() -> None:
    ext = {"extension": [{"url": "http://example.org/fhir/ext", "valueString": "asal"}]}
    patient = {
        "resourceType": "Patient",
        "name": [{"given": ["Sari", None], "_given": [None, ext]}],
    }
    assert validate_resource(patient).data == patient


def test_large_decimals_and_floats_are_fine() -> None:
    for value in (120, 120.0, 0.1, 1e-7, 1e20, -0.0):
        resource = _obs(valueQuantity={"value": value})
        assert validate_resource(resource).data["valueQuantity"]["value"] == value


def test_contained_resources_are_checked() -> None:
    medication = {"resourceType": "Medication", "id": "m1", "code": {"text": "Paracetamol"}}
    request = copy.deepcopy(VALID["MedicationRequest"])
    del request["medicationCodeableConcept"]
    request["medicationReference"] = {"reference": "#m1"}
    request["contained"] = [medication]
    assert validate_resource(request).data == request

    err = _refused({**request, "contained": [{"id": "m1"}]})
    assert err.issues == ["MedicationRequest.contained[0].resourceType: field required"]
    err = _refused({**request, "contained": [{"resourceType": "Bundle", "type": "collection"}]})
    assert err.issues == [
        "MedicationRequest.contained[0].resourceType: resource type not allowed here"
    ]
    nested = {**medication, "contained": [{"resourceType": "Substance", "code": {"text": "x"}}]}
    err = _refused({**request, "contained": [nested]})
    assert "MedicationRequest.contained[0].contained" in err.issues[0]


@pytest.mark.parametrize(
    "resource_type", ["Bundle", "Medication", "Basic", SECRET, "patient", "", "Patient "]
)
def test_unsupported_resource_types_are_refused(resource_type: str) -> None:
    err = _refused({"resourceType": resource_type, "id": "x"})
    assert err.issues == ["resourceType: unsupported resource type"]
    _assert_no_leak(err)


def test_missing_or_non_string_resource_type_is_refused() -> None:
    assert _refused({"id": "x"}).issues == ["resourceType: field required"]
    assert _refused({"resourceType": 5}).issues == ["resourceType: unsupported resource type"]
    assert _refused({"resourceType": ["Patient"]}).issues == [
        "resourceType: unsupported resource type"
    ]


def test_expected_type_mismatch_is_refused() -> None:
    err = _refused(VALID["Observation"], "Patient")
    assert err.issues == ["resourceType: expected Patient, got Observation"]
    err = _refused(VALID["Observation"], SECRET)
    _assert_no_leak(err)
    assert validate_resource(VALID["Observation"], "Observation").resource_type == "Observation"


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{",
        b'{"resourceType": "Patient",}',
        b"{'resourceType': 'Patient'}",
        b'{"resourceType": "Patient"} trailing',
        b'{"resourceType": "Patient", "id": "x"}\x00',
        '{"resourceType": "Observation", "valueQuantity": {"value": NaN}}',
        '{"resourceType": "Observation", "valueQuantity": {"value": Infinity}}',
        b'{"resourceType": "Patient", "name": [{"text": "\xff\xfe"}]}',
        "[" * 100_000,
    ],
)
def test_invalid_json_is_refused(text: bytes | str) -> None:
    err = _refused(text)
    assert err.issues[0].startswith("$: ")


@pytest.mark.parametrize(
    "text",
    [
        '{"resourceType": "Patient", "resourceType": "Patient"}',
        '{"resourceType": "Patient", "gender": "male", "gender": "female"}',
        '{"resourceType": "Patient", "name": [{"family": "A", "family": "B"}]}',
    ],
)
def test_duplicate_keys_are_refused(text: str) -> None:
    for given in (text, text.encode()):
        assert _refused(given).issues == ["$: duplicate key in JSON object"]


@pytest.mark.parametrize("text", ["[]", '["Patient"]', '"Patient"', "42", "null", "true"])
def test_non_object_top_level_is_refused(text: str) -> None:
    assert _refused(text).issues == ["$: top level is not a JSON object"]


@pytest.mark.parametrize("value", [[VALID["Patient"]], "not json", 42, None])
def test_non_mapping_python_input_is_refused(value: Any) -> None:
    _refused(value)


def test_non_json_python_values_are_refused() -> None:
    for bad in ({1, 2}, (1, 2), b"bytes", float("nan"), object()):
        err = _refused(_obs(valueQuantity={"value": 1, "unit": bad}))
        assert err.issues[0].startswith("Observation.valueQuantity.unit: ")
    err = _refused({"resourceType": "Patient", 1: "x"})
    assert err.issues == ["Patient: object key is not a string"]


def test_round_trip_keeps_original_object_order_and_extensions() -> None:
    # Unusual field order, modifier and primitive extensions, non-ASCII text, a float.
    text = (
        '{"status":"final","code":{"text":"Suhu tubuh","coding":[{"code":"8310-5",'
        '"system":"http://loinc.org"}]},"resourceType":"Observation",'
        '"extension":[{"url":"http://example.org/fhir/StructureDefinition/catatan",'
        '"valueString":"Pasien tampak lemas — diukur di ketiak"}],'
        '"_status":{"extension":[{"url":"http://example.org/fhir/sumber","valueCode":"perawat"}]},'
        '"subject":{"reference":"Patient/p1","display":"Sari Contoh"},'
        '"valueQuantity":{"value":38.25,"unit":"°C","system":"http://unitsofmeasure.org",'
        '"code":"Cel"},"id":"obs-1"}'
    )
    result = validate_resource(text.encode("utf-8"))
    assert content_bytes(result) == text.encode("utf-8")
    assert list(result.data) == list(json.loads(text))
    assert list(result.data["code"]) == ["text", "coding"]
    assert "°C".encode() in content_bytes(result)
    # And again from the mapping form.
    again = validate_resource(json.loads(content_bytes(result)))
    assert content_bytes(again) == text.encode("utf-8")


def test_round_trip_is_not_the_model_serialization() -> None:
    resource = _obs(valueQuantity={"value": 120.0, "unit": "mg/dL"})
    resource["effectiveDateTime"] = "2024-05-01T09:00:00.000+07:00"
    result = validate_resource(resource)
    data = json.loads(content_bytes(result))
    assert data == resource
    assert data["effectiveDateTime"] == "2024-05-01T09:00:00.000+07:00"
    assert isinstance(data["valueQuantity"]["value"], float)


def test_references_walks_the_whole_resource() -> None:
    resource = _obs(
        extension=[
            {
                "url": "http://example.org/fhir/dirujuk-oleh",
                "valueReference": {"reference": "Organization/org2"},
            }
        ],
        encounter={"reference": "Encounter/e1"},
        performer=[{"reference": "Practitioner/dr1"}, {"reference": "Organization/org2"}],
        hasMember=[{"reference": "#c1"}],
        contained=[
            {
                "resourceType": "Observation",
                "id": "c1",
                "status": "final",
                "code": CODE,
                "subject": {"reference": "Patient/p1"},
                "specimen": {"reference": "Specimen/s1"},
            }
        ],
        derivedFrom=[{"identifier": {"value": "no-reference-here"}}],
    )
    result = validate_resource(resource)
    assert references(result) == [
        "Patient/p1",
        "Organization/org2",
        "Encounter/e1",
        "Practitioner/dr1",
        "#c1",
        "Specimen/s1",
    ]
    # Document order, each reference once.
    assert references(result) == list(dict.fromkeys(_document_order_refs(resource)))
    assert references(validate_resource(VALID["Location"])) == []


def _document_order_refs(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            out.append(node["reference"])
        for value in node.values():
            out.extend(_document_order_refs(value))
    elif isinstance(node, list):
        for value in node:
            out.extend(_document_order_refs(value))
    return out


def test_references_in_document_order() -> None:
    resource = VALID["Encounter"] | {
        "participant": [{"individual": {"reference": "Practitioner/dr1"}}],
        "serviceProvider": {"reference": "Organization/org1"},
    }
    result = validate_resource(resource)
    assert references(result) == ["Patient/p1", "Practitioner/dr1", "Organization/org1"]


def test_patient_reference() -> None:
    for resource_type, example in VALID.items():
        result = validate_resource(example)
        expected = {
            "Patient": "Patient/p1",
            "Practitioner": None,
            "Organization": None,
            "AuditEvent": None,
            "Provenance": None,
            "Location": None,
        }.get(resource_type, "Patient/p1")
        assert patient_reference(result) == expected, resource_type

    versioned = _obs(subject={"reference": "Patient/p9/_history/3"})
    assert patient_reference(validate_resource(versioned)) == "Patient/p9"
    group = _obs(subject={"reference": "Group/g1"})
    assert patient_reference(validate_resource(group)) is None
    absolute = _obs(subject={"reference": "https://fhir.example.org/Patient/p1"})
    assert patient_reference(validate_resource(absolute)) is None
    logical = _obs(subject={"identifier": {"system": "https://fhir.kemkes.go.id/id/nik"}})
    assert patient_reference(validate_resource(logical)) is None
    no_id = {"resourceType": "Patient", "gender": "male"}
    assert patient_reference(validate_resource(no_id)) is None
