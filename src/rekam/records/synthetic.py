"""Deterministic synthetic FHIR R4 content for demos and tests. No real people.

Everything here is fake on purpose and recognisably so:

* family names are "Contoh" ("example") or "Fiktif" ("fictitious") variants;
* NIKs start with ``99``, which is not an Indonesian province code (real ones are 11-96);
* phone numbers are ``+62 800-0000-xxxx``;
* every resource carries the ``HTEST`` ("test health data") security label in ``meta``.

All randomness comes from the ``random.Random`` passed in, so the same seed always yields the
same resources. Every resource returned passes :func:`rekam.records.fhir.validate_resource`.
Times must be timezone-aware (clinics use WIB/WITA/WIT, e.g. ``+07:00``).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any, Final, Literal, get_args

__all__ = [
    "ACT_CODE_SYSTEM",
    "CONDITIONS",
    "FAKE_FAMILY",
    "FAKE_GIVEN",
    "FAKE_GIVEN_FEMALE",
    "FAKE_GIVEN_MALE",
    "ICD10_SYSTEM",
    "KFA_SYSTEM",
    "LOINC_SYSTEM",
    "MEDICATIONS",
    "NIK_SYSTEM",
    "OBSERVATION_KINDS",
    "UCUM_SYSTEM",
    "ObservationKind",
    "condition",
    "encounter",
    "fake_nik",
    "fake_phone",
    "medication_dispense",
    "medication_request",
    "observation",
    "organization_resource",
    "patient_resource",
    "patient_visit",
    "practitioner_resource",
]

FAKE_GIVEN_FEMALE: Final[tuple[str, ...]] = ("Sari", "Dewi", "Rina", "Ayu", "Lestari", "Putri")
FAKE_GIVEN_MALE: Final[tuple[str, ...]] = ("Budi", "Agus", "Joko", "Rudi", "Wahyu", "Bayu")
FAKE_GIVEN: Final[tuple[str, ...]] = FAKE_GIVEN_FEMALE + FAKE_GIVEN_MALE
"""Common Indonesian given names; only ever paired with an obviously fake family name."""

FAKE_FAMILY: Final[tuple[str, ...]] = (
    "Contoh",
    "Fiktif",
    "Contohwati",
    "Fiktifsari",
    "Contohputra",
    "Fiktifanto",
)
"""Family names that say they are fake: "contoh" means example, "fiktif" fictitious."""

NIK_SYSTEM: Final = "https://fhir.kemkes.go.id/id/nik"
ICD10_SYSTEM: Final = "http://hl7.org/fhir/sid/icd-10"
LOINC_SYSTEM: Final = "http://loinc.org"
UCUM_SYSTEM: Final = "http://unitsofmeasure.org"
KFA_SYSTEM: Final = "http://sys-ids.kemkes.go.id/kfa"
ACT_CODE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_OBS_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
_TEST_DATA_TAG: Final[dict[str, str]] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health records",
}

CONDITIONS: Final[tuple[tuple[str, str, str], ...]] = (
    (
        "J06.9",
        "Acute upper respiratory infection, unspecified",
        "ISPA (infeksi saluran napas atas)",
    ),
    ("I10", "Essential (primary) hypertension", "Hipertensi esensial"),
    (
        "E11.9",
        "Non-insulin-dependent diabetes mellitus without complications",
        "Diabetes melitus tipe 2",
    ),
    (
        "A09",
        "Other gastroenteritis and colitis of infectious and unspecified origin",
        "Diare dan gastroenteritis",
    ),
    ("K30", "Dyspepsia", "Dispepsia"),
    ("J45.9", "Asthma, unspecified", "Asma"),
    ("A90", "Dengue fever [classical dengue]", "Demam dengue"),
    ("R50.9", "Fever, unspecified", "Demam"),
)
"""Common outpatient diagnoses at Indonesian clinics: (ICD-10 code, display, Indonesian text)."""

# ILLUSTRATIVE codes only: shaped like KFA (Kamus Farmasi dan Alat Kesehatan) product codes
# but NOT checked against the real KFA; do not use them for anything but demos.
# (code, display, dose form unit, instruction)
MEDICATIONS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("93001019", "Paracetamol 500 mg Tablet", "Tablet", "3 x sehari 1 tablet bila demam"),
    ("93001127", "Amoksisilin 500 mg Kapsul", "Kapsul", "3 x sehari 1 kapsul sampai habis"),
    ("93001245", "Amlodipin 10 mg Tablet", "Tablet", "1 x sehari 1 tablet pagi hari"),
    ("93001386", "Metformin 500 mg Tablet", "Tablet", "2 x sehari 1 tablet sesudah makan"),
    ("93001432", "Omeprazol 20 mg Kapsul", "Kapsul", "1 x sehari 1 kapsul sebelum makan"),
    ("93001578", "Salbutamol 2 mg Tablet", "Tablet", "3 x sehari 1 tablet bila sesak"),
    ("93001691", "Klorfeniramin Maleat 4 mg Tablet", "Tablet", "3 x sehari 1 tablet"),
)
"""Illustrative (not real) KFA medications: (code, display, unit, dosage instruction)."""

ObservationKind = Literal["blood-pressure", "glucose", "weight", "temperature"]
OBSERVATION_KINDS: Final[tuple[ObservationKind, ...]] = get_args(ObservationKind)


def _new_id(rng: random.Random, prefix: str) -> str:
    """A deterministic, FHIR-valid resource id such as ``enc-3f9a0c1b2d4e``."""
    return f"{prefix}-{rng.getrandbits(48):012x}"


def _meta() -> dict[str, Any]:
    """``meta`` marking a resource as synthetic test data."""
    return {"security": [dict(_TEST_DATA_TAG)]}


def _instant(when: datetime) -> str:
    """A FHIR dateTime with seconds and offset; refuses naive datetimes."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("when must be timezone-aware")
    return when.isoformat(timespec="seconds")


def _ref(resource_type: str, resource_id: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{resource_id}"}


def fake_nik(rng: random.Random, birth_date: date | None = None, female: bool = False) -> str:
    """A fake 16-digit NIK that starts with ``99`` (not a province code).

    Shaped like a real NIK: 2-digit "province" (always 99), 4 region digits, the birth date
    as DDMMYY (day + 40 for women) and a 4-digit serial.
    """
    if birth_date is None:
        birth_date = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 70))
    day = birth_date.day + (40 if female else 0)
    region = rng.randrange(10_000)
    serial = rng.randrange(1, 10_000)
    return f"99{region:04d}{day:02d}{birth_date.month:02d}{birth_date.year % 100:02d}{serial:04d}"


def fake_phone(rng: random.Random) -> str:
    """A fake Indonesian phone number, ``+62 800-0000-xxxx``."""
    return f"+62 800-0000-{rng.randrange(10_000):04d}"


def patient_resource(rng: random.Random, patient_id: str) -> dict[str, Any]:
    """A synthetic Patient with a fake NIK, name, gender, birth date and phone."""
    female = rng.random() < 0.5
    given = rng.choice(FAKE_GIVEN_FEMALE if female else FAKE_GIVEN_MALE)
    family = rng.choice(FAKE_FAMILY)
    birth = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 80))
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": _meta(),
        "identifier": [
            {"use": "official", "system": NIK_SYSTEM, "value": fake_nik(rng, birth, female)}
        ],
        "active": True,
        "name": [
            {"use": "official", "text": f"{given} {family}", "family": family, "given": [given]}
        ],
        "telecom": [{"system": "phone", "value": fake_phone(rng), "use": "mobile"}],
        "gender": "female" if female else "male",
        "birthDate": birth.isoformat(),
    }


def practitioner_resource(rng: random.Random, practitioner_id: str) -> dict[str, Any]:
    """A synthetic Practitioner (a "dr." with a fake name)."""
    given = rng.choice(FAKE_GIVEN)
    family = rng.choice(FAKE_FAMILY)
    return {
        "resourceType": "Practitioner",
        "id": practitioner_id,
        "meta": _meta(),
        "active": True,
        "name": [{"text": f"dr. {given} {family}", "family": family, "given": [given]}],
        "telecom": [{"system": "phone", "value": fake_phone(rng), "use": "work"}],
    }


def organization_resource(rng: random.Random, org_id: str) -> dict[str, Any]:
    """A synthetic clinic (Organization) with a fake name."""
    kind = rng.choice(("Klinik Pratama", "Puskesmas", "Klinik Utama"))
    return {
        "resourceType": "Organization",
        "id": org_id,
        "meta": _meta(),
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": f"{kind} {rng.choice(FAKE_FAMILY)} {rng.randrange(1, 100)}",
        "telecom": [{"system": "phone", "value": fake_phone(rng), "use": "work"}],
    }


def encounter(
    rng: random.Random,
    patient_id: str,
    practitioner_id: str,
    org_id: str,
    when: datetime,
    *,
    encounter_id: str | None = None,
) -> dict[str, Any]:
    """A finished ambulatory (outpatient) Encounter starting at ``when``, 10-30 minutes long.

    ``encounter_id`` defaults to an id drawn from ``rng``.
    """
    start = _instant(when)
    end = _instant(when + timedelta(minutes=rng.randrange(10, 31)))
    return {
        "resourceType": "Encounter",
        "id": encounter_id or _new_id(rng, "enc"),
        "meta": _meta(),
        "status": "finished",
        "class": {"system": ACT_CODE_SYSTEM, "code": "AMB", "display": "ambulatory"},
        "subject": _ref("Patient", patient_id),
        "participant": [
            {
                "type": [
                    {
                        "coding": [
                            {
                                "system": (
                                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
                                ),
                                "code": "ATND",
                                "display": "attender",
                            }
                        ]
                    }
                ],
                "individual": _ref("Practitioner", practitioner_id),
            }
        ],
        "period": {"start": start, "end": end},
        "serviceProvider": _ref("Organization", org_id),
    }


def condition(
    rng: random.Random,
    patient_id: str,
    encounter_id: str | None,
    practitioner_id: str,
    *,
    recorded: datetime | None = None,
    condition_id: str | None = None,
) -> dict[str, Any]:
    """A confirmed, active encounter diagnosis with an ICD-10 code from :data:`CONDITIONS`.

    ``recorded`` (timezone-aware) sets ``recordedDate``; ``condition_id`` defaults to an id
    drawn from ``rng``.
    """
    code, display, text = rng.choice(CONDITIONS)
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": condition_id or _new_id(rng, "cond"),
        "meta": _meta(),
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                    "display": "Active",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "confirmed",
                    "display": "Confirmed",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": ICD10_SYSTEM, "code": code, "display": display}],
            "text": text,
        },
        "subject": _ref("Patient", patient_id),
    }
    if encounter_id is not None:
        resource["encounter"] = _ref("Encounter", encounter_id)
    if recorded is not None:
        resource["recordedDate"] = _instant(recorded)
    resource["recorder"] = _ref("Practitioner", practitioner_id)
    return resource


def _quantity(value: float | int, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM_SYSTEM, "code": code}


def _loinc(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC_SYSTEM, "code": code, "display": display}], "text": display}


def observation(
    rng: random.Random,
    patient_id: str,
    kind: ObservationKind,
    when: datetime,
    *,
    encounter_id: str | None = None,
    observation_id: str | None = None,
) -> dict[str, Any]:
    """A final Observation of one :data:`OBSERVATION_KINDS` kind, with LOINC code and UCUM units.

    * ``blood-pressure``: panel 85354-9 with systolic 8480-6 / diastolic 8462-4 in mm[Hg];
    * ``glucose``: 2339-0 in mg/dL;
    * ``weight``: 29463-7 in kg;
    * ``temperature``: 8310-5 in Cel.
    """
    category = "laboratory" if kind == "glucose" else "vital-signs"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id or _new_id(rng, "obs"),
        "meta": _meta(),
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": _OBS_CATEGORY_SYSTEM,
                        "code": category,
                        "display": "Laboratory" if category == "laboratory" else "Vital Signs",
                    }
                ]
            }
        ],
    }
    if kind == "blood-pressure":
        systolic = rng.randrange(100, 171)
        diastolic = rng.randrange(60, min(106, systolic - 20))
        resource["code"] = _loinc("85354-9", "Blood pressure panel with all children optional")
        value: dict[str, Any] = {
            "component": [
                {
                    "code": _loinc("8480-6", "Systolic blood pressure"),
                    "valueQuantity": _quantity(systolic, "mmHg", "mm[Hg]"),
                },
                {
                    "code": _loinc("8462-4", "Diastolic blood pressure"),
                    "valueQuantity": _quantity(diastolic, "mmHg", "mm[Hg]"),
                },
            ]
        }
    elif kind == "glucose":
        resource["code"] = _loinc("2339-0", "Glucose [Mass/volume] in Blood")
        value = {"valueQuantity": _quantity(rng.randrange(70, 251), "mg/dL", "mg/dL")}
    elif kind == "weight":
        resource["code"] = _loinc("29463-7", "Body weight")
        value = {"valueQuantity": _quantity(round(rng.uniform(40.0, 95.0), 1), "kg", "kg")}
    elif kind == "temperature":
        resource["code"] = _loinc("8310-5", "Body temperature")
        value = {"valueQuantity": _quantity(round(rng.uniform(36.0, 39.5), 1), "°C", "Cel")}
    else:
        raise ValueError(f"unknown observation kind {kind!r}")
    resource["subject"] = _ref("Patient", patient_id)
    if encounter_id is not None:
        resource["encounter"] = _ref("Encounter", encounter_id)
    resource["effectiveDateTime"] = _instant(when)
    # FHIR puts valueQuantity before component in element order; either order is valid JSON.
    resource.update(value)
    return resource


def _kfa_concept(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": KFA_SYSTEM, "code": code, "display": display}], "text": display}


def medication_request(
    rng: random.Random,
    patient_id: str,
    practitioner_id: str,
    when: datetime,
    *,
    encounter_id: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An active MedicationRequest (order) for a medication from :data:`MEDICATIONS`."""
    code, display, unit, instruction = rng.choice(MEDICATIONS)
    quantity = rng.choice((6, 10, 15, 20, 30))
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": request_id or _new_id(rng, "medreq"),
        "meta": _meta(),
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": _kfa_concept(code, display),
        "subject": _ref("Patient", patient_id),
    }
    if encounter_id is not None:
        resource["encounter"] = _ref("Encounter", encounter_id)
    resource["authoredOn"] = _instant(when)
    resource["requester"] = _ref("Practitioner", practitioner_id)
    resource["dosageInstruction"] = [{"sequence": 1, "text": instruction}]
    resource["dispenseRequest"] = {"quantity": {"value": quantity, "unit": unit}}
    return resource


def medication_dispense(
    rng: random.Random,
    patient_id: str,
    request_ref: str,
    pharmacist_id: str,
    when: datetime,
    *,
    request: Mapping[str, Any] | None = None,
    dispense_id: str | None = None,
) -> dict[str, Any]:
    """A completed MedicationDispense handed over at ``when`` for ``request_ref``.

    ``request_ref`` is the prescription reference (``"MedicationRequest/<id>"``). Pass the
    MedicationRequest itself as ``request`` to copy its medication, quantity and
    instruction; otherwise a medication is drawn from ``rng``.
    """
    if request is not None:
        if request_ref != f"MedicationRequest/{request.get('id')}":
            raise ValueError("request_ref does not name the given request")
        medication = copy.deepcopy(request["medicationCodeableConcept"])
        quantity = copy.deepcopy(request["dispenseRequest"]["quantity"])
        instruction = str(request["dosageInstruction"][0]["text"])
    else:
        code, display, unit, instruction = rng.choice(MEDICATIONS)
        medication = _kfa_concept(code, display)
        quantity = {"value": rng.choice((6, 10, 15, 20, 30)), "unit": unit}
    return {
        "resourceType": "MedicationDispense",
        "id": dispense_id or _new_id(rng, "meddisp"),
        "meta": _meta(),
        "status": "completed",
        "medicationCodeableConcept": medication,
        "subject": _ref("Patient", patient_id),
        "performer": [{"actor": _ref("Practitioner", pharmacist_id)}],
        "authorizingPrescription": [{"reference": request_ref}],
        "quantity": quantity,
        "whenHandedOver": _instant(when),
        "dosageInstruction": [{"sequence": 1, "text": instruction}],
    }


def patient_visit(
    rng: random.Random,
    patient_id: str,
    *,
    practitioner_id: str,
    pharmacist_id: str,
    org_id: str,
    when: datetime,
) -> list[dict[str, Any]]:
    """One consistent outpatient visit: encounter, vitals, diagnosis, prescription, dispense.

    The resources reference each other (and the given patient, practitioners and clinic)
    and are returned in the order a clinic would record them.
    """
    enc = encounter(rng, patient_id, practitioner_id, org_id, when)
    enc_id = enc["id"]
    vitals = [
        observation(rng, patient_id, kind, when + timedelta(minutes=2), encounter_id=enc_id)
        for kind in ("blood-pressure", "temperature", "weight")
    ]
    diagnosis = condition(
        rng, patient_id, enc_id, practitioner_id, recorded=when + timedelta(minutes=8)
    )
    order = medication_request(
        rng, patient_id, practitioner_id, when + timedelta(minutes=9), encounter_id=enc_id
    )
    dispense = medication_dispense(
        rng,
        patient_id,
        f"MedicationRequest/{order['id']}",
        pharmacist_id,
        when + timedelta(minutes=40),
        request=order,
    )
    return [enc, *vitals, diagnosis, order, dispense]
