"""Portal: the auditor's network-wide event search, admin password resets, changing one's
password, and clinicians requesting access from patients."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from rekam.service.audit import EventFilter

from .conftest import Portal, csrf_of


def _events_section(html: str) -> str:
    return html.split('id="events"', 1)[1]


def _rows(html: str) -> list[str]:
    body = _events_section(html).split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr.*?</tr>", body, re.S)


# -- auditor --------------------------------------------------------------------------------


def test_auditor_lands_on_the_audit_page_and_searches_every_org(portal: Portal) -> None:
    client = portal.client()
    page = client.get("/login")
    response = client.post(
        "/login",
        data={
            "csrf": csrf_of(page.text),
            "username": "auditor-melati",
            "password": portal.password("auditor-melati"),
        },
    )
    assert response.status_code == 303 and response.headers["location"] == "/audit"
    writes = _events_section(client.get("/audit", params={"kind": "record.write"}).text)
    everything = client.get("/audit", params={"kind": "access.read"})
    assert everything.status_code == 200
    reads = _events_section(everything.text)
    # Both clinics' doctors: the search is network-wide, unlike the admin's.
    assert "dr. Andi Contoh" in writes and "dr. Budi Fiktif" in reads
    kenanga = _events_section(client.get("/audit", params={"org": "klinik-kenanga"}).text)
    assert "dr. Budi Fiktif" in kenanga and "dr. Andi Contoh" not in kenanga
    # Names and record content never appear: the patients' names are in the demo credentials.
    # (A fictitious patient shares a name with the demo's doctor: his label is left out.)
    shown = everything.text.replace("dr. Budi Fiktif", "")
    for patient in portal.creds["patients"]:
        assert patient["name"] not in shown


def test_auditor_filters_by_patient_kind_and_period(portal: Portal) -> None:
    auditor = portal.login("auditor-melati")
    pid = portal.id_of("patient-2")
    other = portal.id_of("patient-3")
    page = auditor.get("/audit", params={"patient": pid, "kind": "access.read"})
    rows = _rows(page.text)
    assert rows and all(pid in row for row in rows)
    assert other not in _events_section(page.text)
    today = datetime.now(UTC) + timedelta(hours=7)
    tomorrow = (today + timedelta(days=1)).date().isoformat()
    later = (today + timedelta(days=5)).date().isoformat()
    future = auditor.get("/audit", params={"from": tomorrow, "to": later})
    assert "Tidak ada kejadian." in future.text
    same_day = auditor.get("/audit", params={"from": today.date().isoformat()})
    assert len(_rows(same_day.text)) > 1


def test_auditor_bad_filter_is_a_clear_error(portal: Portal) -> None:
    auditor = portal.login("auditor-melati")
    for params in (
        {"patient": "Budi Santoso"},
        {"org": "Klinik Melati"},
        {"kind": "record.read"},
        {"from": "31-12-2026"},
        {"from": "2026-12-31", "to": "2026-01-01"},
    ):
        page = auditor.get("/audit", params=params)
        assert page.status_code == 400
        assert "Saringan tidak valid" in page.text
        assert "Budi Santoso" not in page.text or params.get("patient") == "Budi Santoso"


def test_auditor_pages_through_events(portal: Portal) -> None:
    auditor = portal.login("auditor-melati")
    total = len(portal.ws.node.store.query("event", {}))
    first = auditor.get("/audit").text
    assert len(_rows(first)) == min(total, 50)
    if total > 50:
        assert "page=2" in first
        second = auditor.get("/audit", params={"page": "2"}).text
        assert _rows(second) and _rows(second)[0] not in _rows(first)
    search = portal.ws.audit.search(EventFilter(), page=1, page_size=7)
    assert search.total == total and len(search.entries) == min(7, total)
    times = [e.time for e in search.entries]
    assert times == sorted(times, reverse=True)


def test_auditor_runs_the_verification(portal: Portal) -> None:
    auditor = portal.login("auditor-melati")
    page = auditor.get("/audit")
    report = auditor.post("/audit/verify", data={"csrf": csrf_of(page.text)})
    assert report.status_code == 200 and "Verifikasi berhasil" in report.text
    refused = auditor.post("/audit/verify", data={"csrf": "wrong"})
    assert refused.status_code == 403


def test_auditor_cannot_see_records_or_clinical_pages(portal: Portal) -> None:
    auditor = portal.login("auditor-melati")
    for path in ("/patients", "/admin", "/me", "/pharmacy"):
        assert auditor.get(path).status_code == 403
    pid = portal.id_of("patient-1")
    record = next(key for key, _ in portal.ws.records.for_patient(pid))
    before = len(portal.ws.audit.history(pid))
    assert auditor.get(f"/records/{record}").status_code == 403
    denied = portal.ws.audit.history(pid)[before:]
    # The refused attempt is on the chain like anyone's.
    assert [(e.kind, e.allowed) for e in denied] == [("access.read", False)]
    # And the others' pages refuse the auditor's own path.
    doctor = portal.login("dokter-melati")
    assert doctor.get("/audit").status_code == 403


def test_admin_enrols_an_auditor(portal: Portal) -> None:
    admin = portal.login("admin-melati")
    page = admin.get("/admin")
    assert '<option value="auditor">' in page.text
    enrolled = admin.post(
        "/admin/members",
        data={
            "csrf": csrf_of(page.text),
            "label": "Auditor Dua",
            "role": "auditor",
            "password": "a long initial pass",
        },
    )
    assert enrolled.status_code == 303
    members = portal.ws.node.store.query("member", {"role": "auditor"})
    assert len(members) == 2
