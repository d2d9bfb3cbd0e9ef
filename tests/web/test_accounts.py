"""Portal: the auditor's network-wide event search, admin password resets, changing one's
password, and clinicians requesting access from patients."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from rekam.service.audit import EventFilter
from rekam.service.errors import AccessDenied, InvalidContentError
from rekam.service.verify import verify_chain

from .conftest import Portal, csrf_of, login


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


# -- admin password reset and changing one's password ----------------------------------------


def _reset(portal: Portal, admin_name: str, member: str) -> tuple[int, str]:
    admin = portal.login(admin_name)
    page = admin.get("/admin")
    response = admin.post(f"/admin/members/{member}/reset", data={"csrf": csrf_of(page.text)})
    match = re.search(r'<code id="one-time-password">([^<]+)</code>', response.text)
    return response.status_code, match.group(1) if match else ""


def _change(client: TestClient, old: str, new: str, confirm: str | None = None) -> Response:
    page = client.get("/account/password")
    return client.post(
        "/account/password",
        data={
            "csrf": csrf_of(page.text),
            "old": old,
            "new": new,
            "confirm": new if confirm is None else confirm,
        },
    )


def test_admin_resets_a_members_password(portal: Portal) -> None:
    doctor_id = portal.id_of("dokter-melati")
    old_password = portal.password("dokter-melati")
    old_keys = dict(portal.ws.node.store.get("member", doctor_id) or {})
    open_session = portal.login("dokter-melati")
    assert open_session.get("/patients").status_code == 200
    # Someone locked the member's user name by guessing (from another address).
    guesser = TestClient(portal.app, follow_redirects=False, client=("192.0.2.7", 50000))
    for _ in range(5):
        login(guesser, "dokter-melati", "not the password")
    assert login(portal.client(), "dokter-melati", old_password).status_code == 429

    status, otp = _reset(portal, "admin-melati", doctor_id)
    assert status == 200 and len(otp) >= 12
    # On the chain: a key.rotate signed by the admin, replacing the member's keys.
    new_keys = portal.ws.node.store.get("member", doctor_id) or {}
    assert new_keys["sign_key"] != old_keys["sign_key"]
    assert new_keys["enc_key"] != old_keys["enc_key"]
    (reset,) = portal.ws.admin.resets_for_org("klinik-melati")
    assert reset.member == doctor_id and reset.by == portal.id_of("admin-melati")
    stored = portal.ws.node.store.get_tx(reset.tx_id)
    assert stored is not None and stored.valid
    # The old keystore is kept, retired; the one-time password is stored nowhere in clear.
    keys_dir = portal.ws.datadir.keystore_path(doctor_id).parent
    assert list(keys_dir.glob(f"{doctor_id}.retired-*.json"))
    for path in portal.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert otp.encode() not in path.read_bytes(), path.name
    # The admin's page lists the reset.
    admin_page = portal.login("admin-melati").get("/admin").text
    assert 'id="resets"' in admin_page and "one-time-password" not in admin_page

    # The member's open session ended; the lockout was lifted; the old password is gone.
    assert open_session.get("/patients").status_code == 303
    assert login(portal.client(), "dokter-melati", old_password).status_code == 401
    # The one-time password works once, for choosing a new one only.
    member = portal.client()
    response = login(member, "dokter-melati", otp)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/account/password")
    blocked = member.get("/patients")
    assert blocked.status_code == 303 and blocked.headers["location"].startswith(
        "/account/password"
    )
    assert _change(member, otp, "short").status_code == 400
    assert _change(member, otp, "a brand new pass phrase", "different").status_code == 400
    assert _change(member, "wrong one-time pw", "a brand new pass phrase").status_code == 400
    changed = _change(member, otp, "a brand new pass phrase")
    assert changed.status_code == 303
    assert member.get("/patients").status_code == 200
    assert login(portal.client(), "dokter-melati", otp).status_code == 401
    again = portal.login("dokter-melati", "a brand new pass phrase")
    # Reads of the organisation's records still work: organisation wraps cover them.
    pid = portal.id_of("patient-1")
    record = next(
        key
        for key, row in portal.ws.records.for_patient(pid)
        if row["author_org"] == "klinik-melati" and not row["erased"]
    )
    assert again.get(f"/records/{record}").status_code == 200
    # And the chain still verifies with an admin-signed rotation in it.
    auditor = portal.login("auditor-melati")
    report = auditor.post("/audit/verify", data={"csrf": csrf_of(auditor.get("/audit").text)})
    assert "Verifikasi berhasil" in report.text


def test_reset_is_refused_across_orgs_for_patients_and_oneself(portal: Portal) -> None:
    admin = portal.login("admin-melati")
    token = csrf_of(admin.get("/admin").text)
    for target in (
        portal.id_of("dokter-kenanga"),
        portal.id_of("patient-1"),
        portal.id_of("admin-melati"),
    ):
        response = admin.post(f"/admin/members/{target}/reset", data={"csrf": token})
        assert response.status_code == 403
    doctor = portal.login("dokter-melati")
    target = portal.id_of("perawat-melati")
    assert doctor.post(f"/admin/members/{target}/reset", data={"csrf": "x"}).status_code == 403
    assert admin.post(f"/admin/members/{target}/reset", data={"csrf": "x"}).status_code == 403
    assert portal.ws.admin.resets_for_org("klinik-melati") == []


def test_reset_counts_keys_only_the_old_personal_key_held(portal: Portal) -> None:
    ws = portal.ws
    nurse = portal.id_of("perawat-melati")
    admin = ws.actor(portal.id_of("admin-melati"), portal.password("admin-melati"))
    held = ws.node.store.wrapped_keys_for(nurse)
    if not held:
        pid = portal.id_of("patient-1")
        actor = ws.actor(nurse, portal.password("perawat-melati"))
        ws.records.write(
            actor,
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{pid}"},
            },
            patient=pid,
        )
        held = ws.node.store.wrapped_keys_for(nurse)
    record = held[0][0]
    head = ws.node.store.get("record", record) or {}
    home = (ws.node.store.get("patient", head["patient"]) or {})["home_org"]
    # Only the nurse's own wrap is left for this version: nothing else opens it.
    for org in {"klinik-melati", home, head["author_org"]}:
        ws.node.store.delete_wrapped_keys(record=record, recipient=org)
    reset = ws.admin.reset_member_password(admin, nurse)
    assert reset.lost >= 1 and reset.rewrapped == len(held) - reset.lost
    with pytest.raises(AccessDenied):
        other = ws.actor(portal.id_of("dokter-kenanga"), portal.password("dokter-kenanga"))
        ws.admin.reset_member_password(other, nurse)
    ws.admin.revoke_member(admin, nurse)
    with pytest.raises(InvalidContentError):
        ws.admin.reset_member_password(admin, nurse)
    with pytest.raises(InvalidContentError):
        ws.admin.reset_member_password(admin, portal.id_of("patient-1"))


def test_every_user_changes_their_own_password(portal: Portal) -> None:
    patient = portal.login("patient-2")
    account = patient.get("/account").text
    assert portal.id_of("patient-2") in account and "/account/password" in account
    old = portal.password("patient-2")
    assert _change(patient, "not my password!", "my new long password").status_code == 400
    assert _change(patient, old, old).status_code == 400
    done = _change(patient, old, "my new long password")
    assert done.status_code == 303 and "password_changed" in done.headers["location"]
    assert login(portal.client(), "patient-2", old).status_code == 401
    again = portal.login("patient-2", "my new long password")
    assert again.get("/me").status_code == 200


def test_guessing_the_current_password_locks_out(portal: Portal) -> None:
    nurse = portal.login("perawat-melati")
    statuses = [_change(nurse, f"guess no. {i}", "whatever new pw").status_code for i in range(5)]
    assert statuses[:4] == [400] * 4 and statuses[4] == 429
    assert nurse.get("/patients").status_code == 303  # the session ended with the lock
    # Locked under the name they log in with, from any address.
    elsewhere = TestClient(portal.app, follow_redirects=False, client=("192.0.2.8", 50000))
    assert login(elsewhere, "perawat-melati", portal.password("perawat-melati")).status_code == 429


# -- clinicians request access; patients grant or decline -------------------------------------


def _ask(client: TestClient, target: str, /, **fields: object) -> Response:
    page = client.get("/requests", params={"patient": target})
    data: dict[str, object] = {
        "csrf": csrf_of(page.text),
        "patient": target,
        "purpose": "treatment",
        "days": "14",
        **fields,
    }
    return client.post("/requests", data=data)


def test_request_grant_and_read(portal: Portal) -> None:
    pid = portal.id_of("patient-3")
    doctor = portal.login("dokter-kenanga")
    patient = portal.login("patient-3")
    # The patient finds their id on the account page to give to the clinic.
    assert pid in patient.get("/account").text
    form = doctor.get("/requests", params={"patient": pid})
    assert form.status_code == 200 and f'value="{pid}"' in form.text
    sent = _ask(doctor, pid, resource_type=["Condition", "Observation"])
    assert sent.status_code == 303 and "request_sent" in sent.headers["location"]
    mine = doctor.get("/requests").text.split('id="my-requests"', 1)[1]
    assert pid in mine and "menunggu jawaban" in mine
    # The patient sees the request in their history and answers it on the consents page.
    history = patient.get("/me/access").text
    assert "meminta akses" in history and "dr. Budi Fiktif" in history
    page = patient.get("/me/consents")
    (request_id,) = re.findall(r"/me/requests/([0-9a-f]{64})/grant", page.text)
    granted = patient.post(f"/me/requests/{request_id}/grant", data={"csrf": csrf_of(page.text)})
    assert granted.status_code == 303
    consents = portal.ws.consent.active_for_patient(pid)
    doctor_id = portal.id_of("dokter-kenanga")
    (row,) = [
        row
        for _, row in consents
        if row["grantee"] == doctor_id
        and row["start"] > 0
        and row["resource_types"] == ["Condition", "Observation"]
    ]
    assert row["purpose"] == "treatment"
    assert row["end"] - row["start"] == 14 * 24 * 3600 * 1000
    # Answered: no longer open for the patient; shown as granted to the doctor.
    assert "/me/requests/" not in patient.get("/me/consents").text
    assert "diberikan" in doctor.get("/requests").text.split('id="my-requests"', 1)[1]
    again = patient.post(f"/me/requests/{request_id}/grant", data={"csrf": csrf_of(page.text)})
    assert again.status_code == 403


def test_request_declined_is_closed_on_the_chain(portal: Portal) -> None:
    pid = portal.id_of("patient-4")
    nurse = portal.login("perawat-melati")
    assert _ask(nurse, pid, purpose="referral").status_code == 303
    patient = portal.login("patient-4")
    page = patient.get("/me/consents")
    (request_id,) = re.findall(r"/me/requests/([0-9a-f]{64})/decline", page.text)
    # Another patient cannot answer it.
    other = portal.login("patient-1")
    token = csrf_of(other.get("/me/consents").text)
    assert other.post(f"/me/requests/{request_id}/decline", data={"csrf": token}).status_code == 404
    declined = patient.post(f"/me/requests/{request_id}/decline", data={"csrf": csrf_of(page.text)})
    assert declined.status_code == 303 and "request_declined" in declined.headers["location"]
    assert (portal.ws.node.store.get("event", request_id) or {})["allowed"] is False
    kinds = [e.kind for e in portal.ws.audit.history(pid)]
    assert kinds[-2:] == ["consent.request", "consent.decline"]
    assert "/me/requests/" not in patient.get("/me/consents").text
    assert "ditolak" in nurse.get("/requests").text.split('id="my-requests"', 1)[1]
    # No consent came of it.
    nurse_id = portal.id_of("perawat-melati")
    assert all(row["grantee"] != nurse_id for _, row in portal.ws.consent.active_for_patient(pid))
    # rekam verify re-derives the request and the rewritten request row from the blocks.
    ws = portal.ws
    report = verify_chain(ws.node.store, ws.genesis, ws.node.blobs)
    assert report.ok, report.summary()


def test_request_form_refuses_bad_input_and_keeps_it(portal: Portal) -> None:
    doctor = portal.login("dokter-kenanga")
    before = len(portal.ws.node.store.query("event", {"kind": "consent.request"}))
    pid = portal.id_of("patient-2")
    for fields, status in (
        ({"purpose": "own"}, 400),
        ({"days": "0"}, 400),
        ({"days": "many"}, 400),
        ({"resource_type": ["Secret"]}, 400),
        ({"patient": "Budi Fiktif"}, 400),
        ({"patient": "p-" + "0" * 32}, 404),
    ):
        response = _ask(doctor, pid, **fields)
        assert response.status_code == status, fields
        assert 'role="alert"' in response.text
    kept = _ask(doctor, pid, days="0")
    assert f'value="{pid}"' in kept.text
    assert len(portal.ws.node.store.query("event", {"kind": "consent.request"})) == before
    # Only clinical staff ask; patients, admins and auditors cannot.
    for user in ("patient-1", "admin-melati", "auditor-melati"):
        assert portal.login(user).get("/requests").status_code == 403


def test_expired_requests_are_not_open(portal: Portal) -> None:
    from rekam.service.consent import REQUEST_OPEN_DAYS

    pid = portal.id_of("patient-2")
    doctor = portal.login("dokter-kenanga")
    assert _ask(doctor, pid).status_code == 303
    (found,) = portal.ws.consent.requests_for_patient(pid)
    assert found.open
    clock = portal.ws.node.clock
    portal.ws.node.clock = lambda: clock() + REQUEST_OPEN_DAYS * 24 * 3600 * 1000 + 1
    try:
        (later,) = portal.ws.consent.requests_for_patient(pid)
        assert later.status == "expired"
    finally:
        portal.ws.node.clock = clock


def test_the_patient_list_leads_to_a_request_for_an_unlisted_patient(portal: Portal) -> None:
    """/patients offers "Patient not listed?": a GET form to /requests carrying only the
    pseudonymous id the patient gave, which fills in the request form (both languages)."""
    pid = portal.id_of("patient-3")
    for user in ("dokter-melati", "analis-prima"):
        client = portal.login(user)
        page = client.get("/patients").text
        section = page.split('id="ask-title"', 1)[1].split("</section>", 1)[0]
        assert "Pasien tidak ada di daftar?" in section
        assert '<form method="get" action="/requests"' in section
        assert 'name="patient"' in section and "csrf" not in section  # a GET: nothing written
        form = client.get("/requests", params={"patient": pid})
        assert form.status_code == 200 and f'value="{pid}"' in form.text
    client.get("/lang/en", params={"next": "/patients"})
    english = client.get("/patients").text
    assert "Patient not listed?" in english and "Request access" in english
    # Whatever else is typed is not carried into the form.
    assert 'value="Budi"' not in client.get("/requests", params={"patient": "Budi"}).text
