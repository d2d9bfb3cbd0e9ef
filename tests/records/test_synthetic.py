"""Tests for rekam.records.synthetic: deterministic, obviously fake, valid FHIR R4 content."""

from __future__ import annotations

import json
import random
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from rekam.records import synthetic as syn
from rekam.records.fhir import patient_reference, references, validate_resource

WIB = timezone(timedelta(hours=7))
WITA = timezone(timedelta(hours=8))
WHEN = datetime(2024, 5, 1, 9, 30, tzinfo=WIB)
SEEDS = range(50)
# Real province codes (kode wilayah) run from 11 (Aceh) to 96 (Papua Barat Daya).
REAL_PROVINCE = re.compile(r"(1[1-9]|[2-8]\d|9[0-6])")


def _all_resources(seed: int) -> list[dict[str, Any]]:
    """One of everything the module generates, for one seed."""
    rng = random.Random(seed)
    when = WHEN + timedelta(days=seed, minutes=seed * 7)
    if seed % 2:
        when = when.astimezone(WITA)
    out = [
        syn.patient_resource(rng, f"pat-{seed}"),
        syn.practitioner_resource(rng, "dr-1"),
        syn.organization_resource(rng, "org-1"),
        syn.encounter(rng, f"pat-{seed}", "dr-1", "org-1", when),
        syn.condition(rng, f"pat-{seed}", "enc-1", "dr-1"),
        syn.condition(rng, f"pat-{seed}", None, "dr-1", recorded=when),
    ]
    out += [
        syn.observation(rng, f"pat-{seed}", kind, when, encounter_id="enc-1")
        for kind in syn.OBSERVATION_KINDS
    ]
    request = syn.medication_request(rng, f"pat-{seed}", "dr-1", when)
    out += [
        request,
        syn.medication_dispense(
            rng, f"pat-{seed}", f"MedicationRequest/{request['id']}", "apt-1", when, request=request
        ),
        syn.medication_dispense(rng, f"pat-{seed}", "MedicationRequest/mr-x", "apt-1", when),
    ]
    out += syn.patient_visit(
        rng,
        f"pat-{seed}",
        practitioner_id="dr-1",
        pharmacist_id="apt-1",
        org_id="org-1",
        when=when,
    )
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_every_generated_resource_validates(seed: int) -> None:
    for resource in _all_resources(seed):
        result = validate_resource(json.dumps(resource, ensure_ascii=False).encode())
        assert result.data == resource
        assert result.resource_type == resource["resourceType"]
        validate_resource(resource, expected_type=resource["resourceType"])
        # Every resource says it is test data.
        assert resource["meta"]["security"][0]["code"] == "HTEST"
        if resource["resourceType"] not in {"Practitioner", "Organization"}:
            assert patient_reference(result) == f"Patient/pat-{seed}"


def test_generation_is_deterministic() -> None:
    assert _all_resources(7) == _all_resources(7)
    assert _all_resources(7) != _all_resources(8)


def test_patient_is_obviously_fake() -> None:
    for seed in SEEDS:
        patient = syn.patient_resource(random.Random(seed), "p")
        name = patient["name"][0]
        assert name["family"] in syn.FAKE_FAMILY
        assert name["given"][0] in syn.FAKE_GIVEN
        assert name["text"] == f"{name['given'][0]} {name['family']}"
        assert re.fullmatch(r"\+62 800-0000-\d{4}", patient["telecom"][0]["value"])
        identifier = patient["identifier"][0]
        assert identifier["system"] == "https://fhir.kemkes.go.id/id/nik"
        nik = identifier["value"]
        assert re.fullmatch(r"99\d{14}", nik)
        # The NIK encodes the birth date as DDMMYY, day + 40 for women.
        birth = date.fromisoformat(patient["birthDate"])
        day = birth.day + (40 if patient["gender"] == "female" else 0)
        assert nik[6:12] == f"{day:02d}{birth.month:02d}{birth.year % 100:02d}"
        given_pool = syn.FAKE_GIVEN_FEMALE if patient["gender"] == "female" else syn.FAKE_GIVEN_MALE
        assert name["given"][0] in given_pool


def test_fake_names_say_they_are_fake() -> None:
    for family in syn.FAKE_FAMILY:
        assert family.startswith(("Contoh", "Fiktif"))
    assert set(syn.FAKE_GIVEN) == set(syn.FAKE_GIVEN_FEMALE) | set(syn.FAKE_GIVEN_MALE)


def test_nik_never_uses_a_real_province_code() -> None:
    rng = random.Random(2024)
    for _ in range(2000):
        nik = syn.fake_nik(rng, female=rng.random() < 0.5)
        assert len(nik) == 16
        assert nik.isdigit()
        assert nik.startswith("99")
        assert not REAL_PROVINCE.fullmatch(nik[:2])
    assert syn.fake_nik(random.Random(1), date(1985, 3, 9), female=True)[6:12] == "490385"
    assert syn.fake_nik(random.Random(1), date(1985, 3, 9))[6:12] == "090385"


def test_phone_format() -> None:
    rng = random.Random(3)
    for _ in range(200):
        assert re.fullmatch(r"\+62 800-0000-\d{4}", syn.fake_phone(rng))


def test_encounter_shape() -> None:
    enc = syn.encounter(random.Random(1), "p1", "dr1", "org1", WHEN, encounter_id="enc-9")
    assert enc["id"] == "enc-9"
    assert enc["status"] == "finished"
    assert enc["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "AMB",
        "display": "ambulatory",
    }
    assert enc["period"]["start"] == "2024-05-01T09:30:00+07:00"
    end = datetime.fromisoformat(enc["period"]["end"])
    assert timedelta(minutes=10) <= end - WHEN <= timedelta(minutes=30)
    assert references(validate_resource(enc)) == [
        "Patient/p1",
        "Practitioner/dr1",
        "Organization/org1",
    ]


def test_condition_uses_icd10_table() -> None:
    codes = {code: (display, text) for code, display, text in syn.CONDITIONS}
    assert {"J06.9", "I10", "E11.9", "A09", "K30", "J45.9", "A90"} <= set(codes)
    seen = set()
    for seed in SEEDS:
        cond = syn.condition(random.Random(seed), "p1", "enc-1", "dr1")
        coding = cond["code"]["coding"][0]
        assert coding["system"] == "http://hl7.org/fhir/sid/icd-10"
        assert (coding["display"], cond["code"]["text"]) == codes[coding["code"]]
        assert cond["encounter"] == {"reference": "Encounter/enc-1"}
        seen.add(coding["code"])
    assert len(seen) > 3
    assert "encounter" not in syn.condition(random.Random(1), "p1", None, "dr1")


@pytest.mark.parametrize(
    ("kind", "code", "unit"),
    [
        ("glucose", "2339-0", "mg/dL"),
        ("weight", "29463-7", "kg"),
        ("temperature", "8310-5", "Cel"),
    ],
)
def test_single_value_observations(kind: syn.ObservationKind, code: str, unit: str) -> None:
    for seed in range(20):
        obs = syn.observation(random.Random(seed), "p1", kind, WHEN)
        assert obs["code"]["coding"][0] == {
            "system": "http://loinc.org",
            "code": code,
            "display": obs["code"]["text"],
        }
        quantity = obs["valueQuantity"]
        assert quantity["system"] == "http://unitsofmeasure.org"
        assert quantity["code"] == unit
        assert isinstance(quantity["value"], (int, float))
        assert obs["effectiveDateTime"] == "2024-05-01T09:30:00+07:00"


def test_blood_pressure_panel() -> None:
    for seed in range(20):
        obs = syn.observation(random.Random(seed), "p1", "blood-pressure", WHEN)
        assert obs["code"]["coding"][0]["code"] == "85354-9"
        assert "valueQuantity" not in obs
        systolic, diastolic = obs["component"]
        assert systolic["code"]["coding"][0]["code"] == "8480-6"
        assert diastolic["code"]["coding"][0]["code"] == "8462-4"
        for component in (systolic, diastolic):
            assert component["valueQuantity"]["code"] == "mm[Hg]"
            assert component["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert systolic["valueQuantity"]["value"] > diastolic["valueQuantity"]["value"]


def test_unknown_observation_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown observation kind"):
        syn.observation(random.Random(1), "p1", "height", WHEN)  # type: ignore[arg-type]


def test_medication_request_and_dispense() -> None:
    table = {code: display for code, display, _unit, _text in syn.MEDICATIONS}
    assert table["93001019"] == "Paracetamol 500 mg Tablet"
    for seed in SEEDS:
        rng = random.Random(seed)
        request = syn.medication_request(rng, "p1", "dr1", WHEN)
        coding = request["medicationCodeableConcept"]["coding"][0]
        assert coding["system"] == "http://sys-ids.kemkes.go.id/kfa"
        assert table[coding["code"]] == coding["display"]
        assert request["status"] == "active"
        assert request["intent"] == "order"
        assert request["dosageInstruction"][0]["text"]
        assert request["dispenseRequest"]["quantity"]["value"] > 0

        ref = f"MedicationRequest/{request['id']}"
        dispense = syn.medication_dispense(rng, "p1", ref, "apt1", WHEN, request=request)
        assert dispense["authorizingPrescription"] == [{"reference": ref}]
        assert dispense["medicationCodeableConcept"] == request["medicationCodeableConcept"]
        assert dispense["medicationCodeableConcept"] is not request["medicationCodeableConcept"]
        assert dispense["quantity"] == request["dispenseRequest"]["quantity"]
        assert dispense["performer"] == [{"actor": {"reference": "Practitioner/apt1"}}]


def test_dispense_refuses_a_mismatched_request() -> None:
    request = syn.medication_request(random.Random(1), "p1", "dr1", WHEN, request_id="mr-1")
    with pytest.raises(ValueError, match="request_ref"):
        syn.medication_dispense(
            random.Random(1), "p1", "MedicationRequest/mr-2", "apt1", WHEN, request=request
        )


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2024, 5, 1, 9, 30)
    rng = random.Random(1)
    with pytest.raises(ValueError, match="timezone-aware"):
        syn.encounter(rng, "p1", "dr1", "org1", naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        syn.observation(rng, "p1", "weight", naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        syn.medication_request(rng, "p1", "dr1", naive)


def test_patient_visit_is_consistent() -> None:
    visit = syn.patient_visit(
        random.Random(5),
        "pat-5",
        practitioner_id="dr-1",
        pharmacist_id="apt-1",
        org_id="org-1",
        when=WHEN,
    )
    types = [r["resourceType"] for r in visit]
    assert types == [
        "Encounter",
        "Observation",
        "Observation",
        "Observation",
        "Condition",
        "MedicationRequest",
        "MedicationDispense",
    ]
    ids = [f"{r['resourceType']}/{r['id']}" for r in visit]
    assert len(set(ids)) == len(ids)
    known = {*ids, "Patient/pat-5", "Practitioner/dr-1", "Practitioner/apt-1", "Organization/org-1"}
    for resource in visit:
        for ref in references(validate_resource(resource)):
            assert ref in known
