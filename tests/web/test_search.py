"""Patient search (name, NIK, MR number) and ICD-10 search in the portal, in process."""

from __future__ import annotations

import re
from typing import Any

from rekam.service.icd10 import ICD10_SYSTEM
from tests.web.conftest import Portal, csrf_of


def own_patient(portal: Portal, n: int) -> dict[str, Any]:
    """Patient n's Patient resource, read as the patient themself."""
    pid = portal.id_of(f"patient-{n}")
    actor = portal.ws.actor(pid, portal.password(f"patient-{n}"))
    record = portal.ws.node.store.query("record", {"patient": pid, "resource_type": "Patient"})
    return portal.ws.records.read(actor, record[0][0], None, "own").resource


def search(client: Any, query: str) -> Any:
    """Post the /patients search form with the page's CSRF token."""
    token = csrf_of(client.get("/patients").text)
    return client.post("/patients", data={"csrf": token, "q": query})


def result_ids(html: str) -> list[str]:
    """Patient ids linked from the search results table (not the list below it)."""
    if "<caption>" not in html:
        return []
    table = html.split("<caption>", 1)[1].split("</table>", 1)[0]
    return re.findall(r'href="/patients/(p-[0-9a-f]{32})"', table)


def reads_by(portal: Portal, pid: str, member: str) -> list[Any]:
    """Access events on the patient's chain history made by a member."""
    return [
        e for e in portal.ws.audit.history(pid) if e.kind == "access.read" and e.actor == member
    ]


def test_search_by_name_nik_and_mrn_shows_name_birth_date_and_mrn(portal: Portal) -> None:
    resource = own_patient(portal, 1)
    pid = portal.id_of("patient-1")
    nik = next(i["value"] for i in resource["identifier"] if i["system"].endswith("/nik"))
    name = portal.creds["patients"][0]["name"]
    doctor = portal.login("dokter-melati")
    for query in (name, name.lower(), nik, "RM-990001", f"  {name.split()[0][:3]}  "):
        response = search(doctor, query)
        assert response.status_code == 200, query
        assert pid in result_ids(response.text), query
    response = search(doctor, "RM-990001")
    assert result_ids(response.text) == [pid]
    html = response.text
    assert name in html and "RM-990001" in html
    year, month, day = (int(part) for part in resource["birthDate"].split("-"))
    months = ("Jan", "Feb", "Mar", "Apr", "Mei", "Jun", "Jul", "Agu", "Sep", "Okt", "Nov", "Des")
    assert f">{day} {months[month - 1]} {year}<" in html  # the local style, "25 Mei 1998"
    assert resource["birthDate"] not in html
    assert f'href="/patients/{pid}"' in html
    # The English page labels the same field in English.
    doctor.get("/lang/en", headers={"referer": "/patients"})
    english = search(doctor, "RM-990001").text
    assert "Name, NIK or medical record number" in english and "MR number" in english


def test_the_query_never_goes_in_a_url(portal: Portal) -> None:
    nik = next(i["value"] for i in own_patient(portal, 2)["identifier"])
    doctor = portal.login("dokter-melati")
    page = doctor.get("/patients").text
    form = re.search(r'<form method="post" action="/patients" role="search">', page)
    assert form, "the search form posts to /patients"
    response = search(doctor, nik)
    assert response.status_code == 200 and not response.is_redirect
    assert "location" not in response.headers
    assert str(response.url).endswith("/patients")  # the request URL held no query
    assert response.headers["cache-control"] == "no-store"
    for url in re.findall(r'(?:href|action)="([^"]*)"', response.text):
        assert nik not in url
    # A GET with the query in the URL finds nothing: it is not a search endpoint.
    leaked = doctor.get(f"/patients?q={nik}")
    assert leaked.status_code == 200 and "<caption>" not in leaked.text


def test_each_shown_hit_is_an_audited_read(portal: Portal) -> None:
    doctor_id = portal.id_of("dokter-melati")
    doctor = portal.login("dokter-melati")
    # The demo's four patients all carry the family names Contoh/Fiktif: search one name.
    pids = [portal.id_of(f"patient-{n}") for n in range(1, 5)]
    before = {pid: len(reads_by(portal, pid, doctor_id)) for pid in pids}
    family = portal.creds["patients"][0]["name"].split()[-1]
    shown = result_ids(search(doctor, family).text)
    assert portal.id_of("patient-1") in shown
    for pid in pids:
        new = reads_by(portal, pid, doctor_id)[before[pid] :]
        if pid in shown:
            assert len(new) == 1 and new[0].allowed, pid
            patient_record = portal.ws.node.store.get("record", new[0].record)
            assert patient_record["resource_type"] == "Patient"
        else:
            assert new == [], pid


def test_a_patient_without_basis_is_not_shown_nor_counted_nor_read(portal: Portal) -> None:
    """Klinik Kenanga's doctor has consent from patient 1 only (and maybe an emergency on 2)."""
    kenanga_id = portal.id_of("dokter-kenanga")
    p3, p4 = portal.id_of("patient-3"), portal.id_of("patient-4")
    name3 = portal.creds["patients"][2]["name"]
    doctor = portal.login("dokter-kenanga")
    before = len(portal.ws.audit.history(p3)), len(portal.ws.audit.history(p4))
    for query in ("RM-990003", name3, "RM-990004"):
        response = search(doctor, query)
        assert response.status_code == 200
        assert p3 not in result_ids(response.text) and p4 not in result_ids(response.text)
        assert p3 not in response.text and p4 not in response.text
        assert "Tidak ada pasien yang cocok" in response.text
    # Nothing was attempted: the patients' histories are unchanged (no denial either).
    assert (len(portal.ws.audit.history(p3)), len(portal.ws.audit.history(p4))) == before
    assert reads_by(portal, p3, kenanga_id) == []
    # The patient who consented to this doctor is found.
    assert result_ids(search(doctor, "RM-990001").text) == [portal.id_of("patient-1")]


def test_a_consent_that_does_not_cover_the_patient_resource_finds_nothing(portal: Portal) -> None:
    """The lab's consent from patient 1 covers results only, not the demographics."""
    pid, analyst_id = portal.id_of("patient-1"), portal.id_of("analis-prima")
    analyst = portal.login("analis-prima")
    before = len(reads_by(portal, pid, analyst_id))
    response = search(analyst, "RM-990001")
    assert response.status_code == 200 and result_ids(response.text) == []
    # Left out on the chain metadata, before any read: not even a denial is recorded.
    assert len(reads_by(portal, pid, analyst_id)) == before


def test_no_hits_short_queries_and_refusals(portal: Portal) -> None:
    doctor = portal.login("dokter-melati")
    none = search(doctor, "Zzyzxqwv")
    assert none.status_code == 200 and "Tidak ada pasien yang cocok" in none.text
    for short in ("", "  ", "ab", "x" * 101):
        response = search(doctor, short)
        assert response.status_code == 400, short
        assert "minimal 3 karakter" in response.text
    no_csrf = doctor.post("/patients", data={"q": "RM-990001"})
    assert no_csrf.status_code == 403
    patient = portal.login("patient-1")
    token = csrf_of(patient.get("/me/consents").text)
    assert patient.post("/patients", data={"csrf": token, "q": "RM-990001"}).status_code == 403
    anonymous = portal.client()
    assert anonymous.post("/patients", data={"q": "RM-990001"}).headers["location"] == "/login"


def diagnosis_search(client: Any, pid: str, query: str) -> Any:
    """Post the ICD-10 search form of a patient page."""
    token = csrf_of(client.get(f"/patients/{pid}").text)
    return client.post(f"/patients/{pid}/diagnosis-search", data={"csrf": token, "icd_q": query})


def codes_offered(html: str) -> list[str]:
    """The ICD-10 codes offered as choices after a search."""
    return re.findall(r'name="icd10" value="([^"]+)"', html)


def test_icd10_search_by_code_prefix_and_words(portal: Portal) -> None:
    pid = portal.id_of("patient-2")
    doctor = portal.login("dokter-melati")
    by_code = diagnosis_search(doctor, pid, "E11")
    assert by_code.status_code == 200 and not by_code.is_redirect
    offered = codes_offered(by_code.text)
    assert "E11.9" in offered and "E11" not in offered  # only codes valid for coding
    assert all(code.startswith("E11.") for code in offered)
    assert "Type 2 diabetes mellitus without complications" in by_code.text
    by_words = codes_offered(diagnosis_search(doctor, pid, "diabetes").text)
    assert len(by_words) == 20 and "dari" in diagnosis_search(doctor, pid, "diabetes").text
    assert codes_offered(diagnosis_search(doctor, pid, "dengue warning").text) == [
        "A97.0",
        "A97.1",
    ]
    assert codes_offered(diagnosis_search(doctor, pid, "e119").text) == ["E11.9"]
    nothing = diagnosis_search(doctor, pid, "qqqqzz")
    assert codes_offered(nothing.text) == [] and "Tidak ada kode" in nothing.text
    short = diagnosis_search(doctor, pid, "E")
    assert short.status_code == 400 and "2 sampai 100" in short.text
    nurse = portal.login("perawat-melati")
    token = csrf_of(nurse.get(f"/patients/{pid}").text)
    assert (
        nurse.post(
            f"/patients/{pid}/diagnosis-search", data={"csrf": token, "icd_q": "E11"}
        ).status_code
        == 403
    )
    assert (
        doctor.post(f"/patients/{pid}/diagnosis-search", data={"icd_q": "E11"}).status_code == 403
    )


def test_a_searched_code_is_saved_as_an_icd10_condition(portal: Portal) -> None:
    pid = portal.id_of("patient-2")
    doctor_creds = portal.creds["members"]["dokter-melati"]
    actor = portal.ws.actor(doctor_creds["id"], doctor_creds["passphrase"])
    doctor = portal.login("dokter-melati")
    page = diagnosis_search(doctor, pid, "dengue warning")
    token = csrf_of(page.text)
    saved = doctor.post(f"/patients/{pid}/conditions", data={"csrf": token, "icd10": "A97.1"})
    assert saved.status_code == 303
    record, row = portal.ws.records.for_patient(pid)[-1]
    assert row["resource_type"] == "Condition"
    condition = portal.ws.records.read(actor, record).resource
    assert condition["code"]["coding"] == [
        {"system": ICD10_SYSTEM, "code": "A97.1", "display": "Dengue with warning signs"}
    ]
    assert condition["subject"]["reference"] == f"Patient/{pid}"


def test_an_invalid_code_is_refused_and_nothing_is_written(portal: Portal) -> None:
    pid = portal.id_of("patient-2")
    doctor = portal.login("dokter-melati")
    token = csrf_of(doctor.get(f"/patients/{pid}").text)
    count = len(portal.ws.records.for_patient(pid))
    for bad in ("E11", "Z99.99", "A90", "XYZ", "", "E11.9; DROP", "<b>I10</b>"):
        response = doctor.post(f"/patients/{pid}/conditions", data={"csrf": token, "icd10": bad})
        assert response.status_code == 400, bad
        assert "Kode ICD-10 tidak dikenal" in response.text
    assert len(portal.ws.records.for_patient(pid)) == count
    # A listed code still works, and a code typed without its dot is stored dotted.
    ok = doctor.post(f"/patients/{pid}/conditions", data={"csrf": token, "icd10": "j069"})
    assert ok.status_code == 303
    assert len(portal.ws.records.for_patient(pid)) == count + 1
