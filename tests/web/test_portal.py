"""In-process portal tests: login, sessions, CSRF, lockout, expiry, roles, i18n, and the
main paths of each role through the real services (consent checked, reads audited)."""

from __future__ import annotations

import json
import re

from rekam.web import i18n
from tests.web.conftest import Portal, csrf_of, login


def test_catalogs_hold_the_same_keys() -> None:
    assert set(i18n.CATALOG["id"]) == set(i18n.CATALOG["en"])


def test_local_formats() -> None:
    ms = 1_795_474_445_096  # 2026-11-23 22:54 UTC, 05:54 the next day in Jakarta
    assert i18n.format_time("id", ms) == "24 Nov 2026 05.54 WIB"
    assert i18n.format_time("en", ms) == "24 Nov 2026, 05:54 WIB"
    assert i18n.format_number("id", 1234.5) == "1.234,5"
    assert i18n.format_number("en", 1234.5) == "1,234.5"
    assert i18n.format_time("id", 1_780_000_000_000).split()[1] == "Mei"


def test_indonesian_by_default_and_english_one_click_away(portal: Portal) -> None:
    client = portal.client()
    page = client.get("/login")
    assert '<html lang="id">' in page.text and "Masuk" in page.text
    switched = client.get("/lang/en", params={"next": "/login"})
    assert switched.status_code == 303 and switched.headers["location"] == "/login"
    page = client.get("/login")
    assert '<html lang="en">' in page.text and "Log in" in page.text
    # The switch only ever redirects within the site.
    assert client.get("/lang/id", params={"next": "//evil.example/"}).headers["location"] == "/"


def test_security_headers_and_no_scripts(portal: Portal) -> None:
    client = portal.login("patient-1")
    for path in ("/login", "/me", "/me/access", "/me/consents"):
        page = client.get(path)
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert "script-src" not in csp  # falls back to default-src 'none': no scripts at all
        assert "<script" not in page.text.lower()
        assert page.headers["cache-control"] == "no-store"


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_the_session(
    portal: Portal,
) -> None:
    client = portal.client()
    response = login(client, "patient-1", portal.password("patient-1"))
    assert response.status_code == 303 and response.headers["location"] == "/me"
    cookie = next(c for c in response.headers.get_list("set-cookie") if "rekam_sid=" in c)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    # No key material or passphrase reaches the browser: the cookie is a random session id.
    assert portal.password("patient-1") not in response.text + cookie
    me = client.get("/me")
    assert me.status_code == 200 and "Riwayat medis saya" in me.text
    # Logging out needs the session's CSRF token.
    assert client.post("/logout", data={"csrf": "wrong"}).status_code == 403
    out = client.post("/logout", data={"csrf": csrf_of(me.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login?msg=logged_out"
    client.cookies.clear()
    assert client.get("/me").headers["location"] == "/login"


def test_wrong_password_then_lockout_then_release(portal: Portal) -> None:
    client = portal.client()
    for _ in range(4):
        assert login(client, "dokter-melati", "not-the-passphrase").status_code == 401
    locked = login(client, "dokter-melati", "not-the-passphrase")
    assert locked.status_code == 429
    # While locked even the right password is refused.
    assert login(client, "dokter-melati", portal.password("dokter-melati")).status_code == 429
    portal.clock.now += 16 * 60
    ok = login(client, "dokter-melati", portal.password("dokter-melati"))
    assert ok.status_code == 303 and ok.headers["location"] == "/patients"


def test_unknown_users_and_organisations_cannot_log_in(portal: Portal) -> None:
    client = portal.client()
    assert login(client, "nobody", "x").status_code == 401
    assert login(client, "klinik-melati", "x").status_code == 401


def test_csrf_refused(portal: Portal) -> None:
    client = portal.client()
    client.get("/login")
    response = client.post(
        "/login",
        data={"csrf": "forged", "username": "patient-1", "password": portal.password("patient-1")},
    )
    assert response.status_code == 403
    patient = portal.login("patient-3")
    before = portal.ws.consent.active_for_patient(portal.id_of("patient-3"))
    refused = patient.post(
        "/me/consents",
        data={"grantee": portal.id_of("dokter-kenanga"), "resource_type": "*", "days": "30"},
    )
    assert refused.status_code == 403
    assert portal.ws.consent.active_for_patient(portal.id_of("patient-3")) == before


def test_session_expires_after_inactivity(portal: Portal) -> None:
    client = portal.login("patient-1")
    portal.clock.now += 599
    assert client.get("/me").status_code == 200  # activity keeps it alive
    portal.clock.now += 601
    expired = client.get("/me")
    assert expired.status_code == 303 and expired.headers["location"] == "/login?msg=expired"
    page = client.get("/login?msg=expired")
    assert "berakhir karena tidak aktif" in page.text


def test_forbidden_pages(portal: Portal) -> None:
    anonymous = portal.client()
    assert anonymous.get("/me").headers["location"] == "/login"
    assert anonymous.get("/patients").headers["location"] == "/login"
    patient = portal.login("patient-1")
    assert patient.get("/patients").status_code == 403
    assert patient.get("/pharmacy").status_code == 403
    pharmacist = portal.login("apoteker-sentosa")
    assert pharmacist.get("/me").status_code == 403
    doctor = portal.login("dokter-kenanga")
    # Patient 3 has not granted this doctor anything.
    assert doctor.get(f"/patients/{portal.id_of('patient-3')}").status_code == 403
    # Another patient's record: the service denies it, and the denial is on the chain.
    other = portal.ws.records.for_patient(portal.id_of("patient-3"))[0][0]
    denied = patient.get(f"/records/{other}")
    assert denied.status_code == 403
    events = portal.ws.audit.history(portal.id_of("patient-3"))
    assert events[-1].kind == "access.read" and events[-1].allowed is False


def test_patient_grants_doctor_reads_patient_sees_it(portal: Portal) -> None:
    patient = portal.login("patient-3")
    page = patient.get("/me/consents")
    doctor_id = portal.id_of("dokter-kenanga")
    granted = patient.post(
        "/me/consents",
        data={
            "csrf": csrf_of(page.text),
            "grantee": doctor_id,
            "resource_type": "*",
            "purpose": "treatment",
            "days": "30",
        },
    )
    assert granted.status_code == 303
    assert any(
        r["grantee"] == doctor_id
        for _, r in portal.ws.consent.active_for_patient(portal.id_of("patient-3"))
    )
    doctor = portal.login("dokter-kenanga")
    listing = doctor.get("/patients")
    assert portal.id_of("patient-3") in listing.text
    record = portal.ws.records.for_patient(portal.id_of("patient-3"))[0][0]
    shown = doctor.get(f"/records/{record}")
    assert shown.status_code == 200
    assert "Terverifikasi di rantai" in shown.text and f"/records/{record}/receipt" in shown.text
    receipt = doctor.get(f"/records/{record}/receipt")
    assert receipt.status_code == 200 and receipt.json()["format"]
    history = patient.get("/me/access").text
    assert "dr. Budi Fiktif" in history and "membaca" in history


def test_clinician_adds_an_observation_and_a_note(portal: Portal) -> None:
    doctor = portal.login("dokter-melati")
    pid = portal.id_of("patient-2")
    page = doctor.get(f"/patients/{pid}")
    assert page.status_code == 200
    title = page.text.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "<" not in title  # the page title is text, not a copy of the page's forms
    assert page.text.count('action="/patients/' + pid + '/conditions"') == 1
    before = len(portal.ws.records.for_patient(pid))
    token = csrf_of(page.text)
    added = doctor.post(
        f"/patients/{pid}/records", data={"csrf": token, "kind": "glucose", "value": "112,5"}
    )
    assert added.status_code == 303
    note = doctor.post(
        f"/patients/{pid}/records", data={"csrf": token, "kind": "note", "note": "Kontrol 1 minggu"}
    )
    assert note.status_code == 303
    rows = portal.ws.records.for_patient(pid)
    assert len(rows) == before + 2
    assert {r["resource_type"] for _, r in rows[-2:]} == {"Observation", "DocumentReference"}
    obs = doctor.get(f"/records/{rows[-2][0]}")
    assert "112,5 mg/dL" in obs.text
    bad = doctor.post(f"/patients/{pid}/records", data={"csrf": token, "kind": "glucose"})
    assert bad.status_code == 400


def test_emergency_needs_reason_and_confirmation_and_is_shown_to_the_patient(
    portal: Portal,
) -> None:
    doctor = portal.login("dokter-kenanga")
    token = csrf_of(doctor.get("/patients").text)
    pid = portal.id_of("patient-4")
    unconfirmed = doctor.post(
        "/patients/emergency", data={"csrf": token, "patient": pid, "reason": "unconscious"}
    )
    assert unconfirmed.status_code == 400
    no_reason = doctor.post(
        "/patients/emergency", data={"csrf": token, "patient": pid, "confirm": "yes"}
    )
    assert no_reason.status_code == 400
    assert not [e for e in portal.ws.audit.history(pid) if e.emergency]
    opened = doctor.post(
        "/patients/emergency",
        data={"csrf": token, "patient": pid, "reason": "unconscious", "confirm": "yes"},
    )
    assert opened.status_code == 303
    assert doctor.get(f"/patients/{pid}").status_code == 200
    patient = portal.login("patient-4")
    history = patient.get("/me/access").text
    assert re.search(r'<tr class="emergency[^"]*">', history)
    assert "AKSES DARURAT" in history


def test_pharmacy_dispenses_a_shared_prescription(portal: Portal) -> None:
    pharmacist = portal.login("apoteker-sentosa")
    listing = pharmacist.get("/pharmacy")
    pending = [
        key
        for key, row in portal.ws.records.for_patient(portal.id_of("patient-1"))
        if row["resource_type"] == "MedicationRequest" and not row["dispensed"]
    ]
    assert len(pending) == 1 and pending[0] in listing.text
    page = pharmacist.get(f"/records/{pending[0]}")
    assert "Serahkan obat" in page.text
    done = pharmacist.post(f"/pharmacy/{pending[0]}/dispense", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 303
    head = portal.ws.node.store.get("record", pending[0])
    assert head is not None and head["dispensed"]
    # A second dispense of the same prescription is refused by the ledger rules.
    again = pharmacist.post(f"/pharmacy/{pending[0]}/dispense", data={"csrf": csrf_of(page.text)})
    assert again.status_code in (403, 409)


def test_org_admin_enrols_and_revokes_a_member(portal: Portal) -> None:
    admin = portal.login("admin-melati")
    page = admin.get("/admin")
    assert page.status_code == 200 and "dr. Andi Contoh" in page.text
    token = csrf_of(page.text)
    short = admin.post(
        "/admin/members",
        data={"csrf": token, "label": "Nia Contoh", "role": "nurse", "password": "short"},
    )
    assert short.status_code == 400
    enrolled = admin.post(
        "/admin/members",
        data={
            "csrf": token,
            "label": "Nia Contoh",
            "role": "nurse",
            "password": "kata-sandi-awal-123",
        },
    )
    assert enrolled.status_code == 303
    member = next(k for k, v in portal.ws.datadir.labels().items() if v == "Nia Contoh")
    nurse = portal.client()
    assert login(nurse, member, "kata-sandi-awal-123").headers["location"] == "/patients"
    revoked = admin.post(f"/admin/members/{member}/revoke", data={"csrf": token})
    assert revoked.status_code == 303
    row = portal.ws.node.store.get("member", member)
    assert row is not None and row["revoked"]
    # A revoked member can no longer log in.
    assert login(portal.client(), member, "kata-sandi-awal-123").status_code == 401
    # An admin cannot revoke a member of another organisation.
    other = portal.id_of("dokter-kenanga")
    assert admin.post(f"/admin/members/{other}/revoke", data={"csrf": token}).status_code == 403


def test_admin_runs_verification_and_sees_its_members_events(portal: Portal) -> None:
    doctor = portal.login("dokter-kenanga")
    assert doctor.get("/admin").status_code == 403
    admin = portal.login("admin-melati")
    page = admin.get("/admin")
    assert "Belum pernah diverifikasi" in page.text  # no verification recorded yet
    report = admin.post("/admin/verify", data={"csrf": csrf_of(page.text)})
    assert report.status_code == 200 and "Verifikasi berhasil" in report.text
    # The outcome is kept: the status shows the last verification on later visits too.
    status = admin.get("/admin").text.split('id="events"')[0]
    assert "Verifikasi terakhir" in status and "Belum pernah diverifikasi" not in status
    assert "Node dalam jaringan" not in status  # an embedded node has no peers to list
    reads = admin.get("/admin", params={"kind": "record.write"}).text
    events = reads.split('id="events"')[1]
    assert "dr. Andi Contoh" in events and "menulis" in events
    # Only this organisation's members' events: the other clinic's doctor is absent.
    assert "dr. Budi Fiktif" not in events


def test_patient_chart_of_numeric_observations(portal: Portal) -> None:
    doctor = portal.login("dokter-melati")
    pid = portal.id_of("patient-2")
    token = csrf_of(doctor.get(f"/patients/{pid}").text)
    for value in ("98", "131,5", "105"):
        added = doctor.post(
            f"/patients/{pid}/records", data={"csrf": token, "kind": "glucose", "value": value}
        )
        assert added.status_code == 303
    patient = portal.login("patient-2")
    reads_before = sum(1 for e in portal.ws.audit.history(pid) if e.kind == "access.read")
    page = patient.get("/me/chart")
    assert page.status_code == 200
    svg = page.text.split("<svg", 1)[1].split("</svg>", 1)[0]
    points = re.search(r'<polyline[^>]*points="([^"]+)"', svg)
    assert points is not None
    coords = [tuple(map(float, p.split(","))) for p in points.group(1).split()]
    assert len(coords) == 3
    # Time runs left to right; the highest value (131.5) is drawn highest (smallest y).
    assert coords[0][0] < coords[1][0] < coords[2][0]
    assert coords[1][1] < coords[2][1] < coords[0][1]
    assert "131,5 mg/dL" in page.text
    # Drawing the chart read each observation through the audited read path.
    reads_after = sum(1 for e in portal.ws.audit.history(pid) if e.kind == "access.read")
    assert reads_after == reads_before + 3


def test_totp_second_factor(portal: Portal) -> None:
    import pyotp
    from fastapi.testclient import TestClient

    from rekam.web import PortalConfig, create_portal

    wall = [1_800_000_000.0]
    app = create_portal(portal.ws, config=PortalConfig(wall_clock=lambda: wall[0]))

    def client() -> TestClient:
        return TestClient(app, base_url="http://testserver", follow_redirects=False)

    def attempt(code: str) -> int:
        page = client()
        form = page.get("/login").text
        data = {
            "csrf": csrf_of(form),
            "username": "patient-2",
            "password": portal.password("patient-2"),
            "code": code,
        }
        return int(page.post("/login", data=data).status_code)

    user = client()
    assert login(user, "patient-2", portal.password("patient-2")).status_code == 303
    page = user.get("/account").text
    secret = re.search(r'<code id="totp-secret">([A-Z2-7=]+)</code>', page)
    assert secret is not None
    totp = pyotp.TOTP(secret.group(1))
    wrong = user.post("/account/totp", data={"csrf": csrf_of(page), "code": "000000"})
    assert wrong.status_code == 400
    ok = user.post("/account/totp", data={"csrf": csrf_of(page), "code": totp.at(wall[0])})
    assert ok.status_code == 303
    # The stored secret is wrapped to the patient's key: not readable from the file.
    assert secret.group(1) not in (portal.root / "portal-totp.json").read_text("utf-8")
    wall[0] += 60
    assert attempt("") == 401  # the password alone no longer suffices
    assert attempt("123456" if totp.at(wall[0]) != "123456" else "654321") == 401
    code = totp.at(wall[0])
    assert attempt(code) == 303
    assert attempt(code) == 401  # a code works once


def test_patient_exports_a_bundle_and_erases_a_record(portal: Portal) -> None:
    pid = portal.id_of("patient-2")
    patient = portal.login("patient-2")
    heads = portal.ws.records.for_patient(pid)
    bundle = patient.get("/me/export")
    assert bundle.status_code == 200
    assert "attachment" in bundle.headers["content-disposition"]
    doc = bundle.json()
    assert doc["resourceType"] == "Bundle" and doc["total"] == len(heads)
    assert {e["resource"]["resourceType"] for e in doc["entry"]} == {
        r["resource_type"] for _, r in heads
    }
    condition = next(k for k, r in heads if r["resource_type"] == "Condition")
    page = patient.get(f"/records/{condition}")
    assert "Hapus catatan" in page.text
    token = csrf_of(page.text)
    unconfirmed = patient.post(f"/records/{condition}/erase", data={"csrf": token})
    assert unconfirmed.status_code == 400
    other = portal.ws.records.for_patient(portal.id_of("patient-1"))[1][0]
    refused = patient.post(f"/records/{other}/erase", data={"csrf": token, "confirm": "yes"})
    assert refused.status_code == 404
    erased = patient.post(f"/records/{condition}/erase", data={"csrf": token, "confirm": "yes"})
    assert erased.status_code == 303
    head = portal.ws.node.store.get("record", condition)
    assert head is not None and head["erased"]
    assert patient.get(f"/records/{condition}").status_code == 410
    assert patient.get("/me/export").json()["total"] == len(heads) - 1


def test_doctor_prescribes_patient_shares_pharmacy_dispenses(portal: Portal) -> None:
    pid = portal.id_of("patient-2")
    nurse = portal.login("perawat-melati")
    nurse_page = nurse.get(f"/patients/{pid}")
    assert nurse_page.status_code == 200 and "Tulis resep" not in nurse_page.text
    assert (
        nurse.post(
            f"/patients/{pid}/prescriptions",
            data={"csrf": csrf_of(nurse_page.text), "medication": "93001019", "quantity": "10"},
        ).status_code
        == 403
    )
    doctor = portal.login("dokter-melati")
    token = csrf_of(doctor.get(f"/patients/{pid}").text)
    assert (
        doctor.post(f"/patients/{pid}/conditions", data={"csrf": token, "icd10": "I10"}).status_code
        == 303
    )
    assert (
        doctor.post(f"/patients/{pid}/conditions", data={"csrf": token, "icd10": "E11"}).status_code
        == 400
    )
    prescribed = doctor.post(
        f"/patients/{pid}/prescriptions",
        data={"csrf": token, "medication": "93001245", "quantity": "30"},
    )
    assert prescribed.status_code == 303
    rx = portal.ws.records.for_patient(pid)[-1][0]
    pharmacist = portal.login("apoteker-sentosa")
    assert rx not in pharmacist.get("/pharmacy").text  # not shared yet
    patient = portal.login("patient-2")
    page = patient.get("/me/consents")
    granted = patient.post(
        "/me/consents",
        data={
            "csrf": csrf_of(page.text),
            "grantee": "apotek-sentosa",
            "resource_type": "MedicationRequest",
            "purpose": "dispensing",
            "days": "7",
        },
    )
    assert granted.status_code == 303
    assert rx in pharmacist.get("/pharmacy").text
    shown = pharmacist.get(f"/records/{rx}")
    assert "Amlodipin 10 mg Tablet" in shown.text
    done = pharmacist.post(f"/pharmacy/{rx}/dispense", data={"csrf": csrf_of(shown.text)})
    assert done.status_code == 303
    history = patient.get("/me/access").text
    assert "menyerahkan obat" in history


def test_secure_cookie_over_https(portal: Portal) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(portal.app, base_url="https://testserver", follow_redirects=False)
    response = login(client, "patient-1", portal.password("patient-1"))
    cookie = next(c for c in response.headers.get_list("set-cookie") if "rekam_sid=" in c)
    assert "Secure" in cookie and "HttpOnly" in cookie


SAFE_LINK = re.compile(
    r"^#main$|^/(static/[a-z.]+|[a-z]+(/[a-z]+)*(/[pr]-[0-9a-f]{32}(/[a-z]+)?)?"
    r"|(lang/(id|en)\?next=[/%0-9A-Za-z-]*)|me/consents/c-[0-9a-f]{32}/revoke"
    r"|admin/members/m-[0-9a-f]{32}/(revoke|reset)|patients/[pr]-[0-9a-f]{32}/[a-z-]+"
    r"|me/requests/[0-9a-f]{64}/(grant|decline)|(admin|audit)\?([a-z]+=[a-z0-9.-]*&(amp;)?)*page=[0-9]+)?$"
)


def test_links_and_forms_carry_only_pseudonymous_ids(portal: Portal) -> None:
    """No name, NIK or clinical text in any URL a page links or posts to."""
    pages = {
        "patient-1": ["/me", "/me/access", "/me/consents", "/me/chart", "/account"],
        "dokter-melati": ["/patients", f"/patients/{portal.id_of('patient-1')}"],
        "apoteker-sentosa": ["/pharmacy"],
        "admin-melati": ["/admin"],
    }
    names = [p["name"] for p in portal.creds["patients"]]
    seen = 0
    for user, paths in pages.items():
        client = portal.login(user)
        for path in paths:
            html = client.get(path).text
            for url in re.findall(r'(?:href|action)="([^"]*)"', html):
                seen += 1
                assert SAFE_LINK.match(url), url
                assert not any(name.split()[0] in url for name in names)
    assert seen > 30


def test_expired_sessions_are_dropped_even_if_never_revisited(portal: Portal) -> None:
    sessions = portal.app.state.sessions
    portal.login("patient-1")
    portal.login("dokter-melati")
    assert len(sessions) == 2
    portal.clock.now += 601
    # Any later request sweeps them: the unlocked keys do not stay in memory.
    portal.client().get("/me")
    assert len(sessions) == 0


def test_doctor_orders_a_lab_test_and_the_lab_attaches_the_result(portal: Portal) -> None:
    pid = portal.id_of("patient-2")
    doctor = portal.login("dokter-melati")
    token = csrf_of(doctor.get(f"/patients/{pid}").text)
    bad_lab = doctor.post(
        f"/patients/{pid}/lab-orders",
        data={"csrf": token, "test": "hba1c", "lab": "apotek-sentosa"},
    )
    assert bad_lab.status_code == 400
    ordered = doctor.post(
        f"/patients/{pid}/lab-orders", data={"csrf": token, "test": "hba1c", "lab": "lab-prima"}
    )
    assert ordered.status_code == 303
    order = portal.ws.records.for_patient(pid)[-1][0]
    analyst = portal.login("analis-prima")
    assert order not in analyst.get("/lab").text  # the patient has not shared it yet
    patient = portal.login("patient-2")
    page = patient.get("/me/consents")
    shared = patient.post(
        "/me/consents",
        data={
            "csrf": csrf_of(page.text),
            "grantee": "lab-prima",
            "resource_type": ["ServiceRequest", "Observation"],
            "purpose": "treatment",
            "days": "7",
        },
    )
    assert shared.status_code == 303
    assert order in analyst.get("/lab").text
    shown = analyst.get(f"/records/{order}")
    assert "Lampirkan hasil" in shown.text
    done = analyst.post(f"/lab/{order}/result", data={"csrf": csrf_of(shown.text), "value": "6,8"})
    assert done.status_code == 303
    key, row = portal.ws.records.for_patient(pid)[-1]
    assert row["resource_type"] == "Observation" and row["author_org"] == "lab-prima"
    result = portal.ws.records.read(
        portal.ws.actor(pid, portal.password("patient-2")), key, None, "own"
    )
    assert result.resource["basedOn"] == [{"reference": f"ServiceRequest/{order}"}]
    assert result.resource["valueQuantity"]["value"] == 6.8


def test_api_paths_keep_their_own_errors_beside_the_portal(portal: Portal) -> None:
    from fastapi.testclient import TestClient

    from rekam.api import create_app
    from rekam.service.tokens import TokenStore
    from rekam.web.dispatch import PathDispatcher

    tokens = TokenStore(portal.root)
    try:
        api = create_app(portal.ws, tokens)
        client = TestClient(PathDispatcher(api, portal.app), follow_redirects=False)
        unknown = client.get("/api/no-such-endpoint")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"].startswith("application/fhir+json")
        assert client.post("/api/status").status_code == 405
        assert client.get("/fhir/metadata").json()["resourceType"] == "CapabilityStatement"
        assert client.get("/").headers["location"] == "/login"
        login_page = client.get("/login")
        assert login_page.status_code == 200 and "Masuk" in login_page.text
        assert client.get("/no-such-page").headers["content-type"].startswith("text/html")
    finally:
        api.state.ctx.close()
        tokens.close()


ACTION_CELL = re.compile(r"^\s*(<a [^>]*>.*</a>|<form .*</form>)?\s*$", re.S)


def test_every_table_cell_names_its_column_for_the_phone_layout(portal: Portal) -> None:
    """Below 600 px the header row is hidden, so each data cell carries its column's name
    (``data-label``); only cells holding nothing but a link or a form may go without."""
    pages = {
        "patient-1": ["/me", "/me/access", "/me/consents", "/me/chart"],
        "dokter-melati": ["/patients", f"/patients/{portal.id_of('patient-1')}", "/requests"],
        "apoteker-sentosa": ["/pharmacy"],
        "admin-melati": ["/admin"],
        "auditor-melati": ["/audit"],
    }
    # A request of the doctor's so that /requests lists one.
    doctor = portal.login("dokter-melati")
    page = doctor.get("/requests")
    made = doctor.post(
        "/requests",
        data={
            "csrf": csrf_of(page.text),
            "patient": portal.id_of("patient-3"),
            "purpose": "treatment",
            "days": "7",
        },
    )
    assert made.status_code == 303, made.text
    labelled = 0
    for user, paths in pages.items():
        client = portal.login(user)
        for path in paths:
            html = client.get(path).text
            assert "<td" in html, path
            for attrs, content in re.findall(r"<td([^>]*)>(.*?)</td>", html, re.S):
                if "colspan" in attrs:
                    continue  # a "nothing here" row spanning the table
                if "data-label=" in attrs:
                    labelled += 1
                    assert re.search(r'data-label="[^"{}]+"', attrs), (path, attrs)
                else:
                    assert ACTION_CELL.match(content), (path, content)
    assert labelled > 60


def _order_for(portal: Portal, patient: str) -> str:
    """A doctor orders an HbA1c test at Lab Prima; the patient shares orders and results
    with the lab. Returns the order's record id."""
    doctor = portal.login("dokter-melati")
    token = csrf_of(doctor.get(f"/patients/{patient}").text)
    ordered = doctor.post(
        f"/patients/{patient}/lab-orders",
        data={"csrf": token, "test": "hba1c", "lab": "lab-prima"},
    )
    assert ordered.status_code == 303
    order = str(portal.ws.records.for_patient(patient)[-1][0])
    name = next(
        f"patient-{i + 1}" for i, p in enumerate(portal.creds["patients"]) if p["id"] == patient
    )
    client = portal.login(name)
    shared = client.post(
        "/me/consents",
        data={
            "csrf": csrf_of(client.get("/me/consents").text),
            "grantee": "lab-prima",
            "resource_type": ["ServiceRequest", "Observation"],
            "purpose": "treatment",
            "days": "7",
        },
    )
    assert shared.status_code == 303
    return order


def _order_row(html: str, order: str) -> str:
    rows = re.findall(r"<tr>.*?</tr>", html, re.S)
    return next(row for row in rows if f"/records/{order}" in row)


def test_a_lab_order_shows_completed_once_its_result_is_on_the_chain(portal: Portal) -> None:
    pid = portal.id_of("patient-2")
    order = _order_for(portal, pid)
    analyst = portal.login("analis-prima")
    patient = portal.login("patient-2")
    doctor = portal.login("dokter-melati")
    assert "menunggu hasil" in _order_row(analyst.get("/lab").text, order)
    assert "menunggu hasil" in _order_row(patient.get("/me").text, order)
    shown = analyst.get(f"/records/{order}")
    assert "menunggu hasil" in shown.text
    done = analyst.post(f"/lab/{order}/result", data={"csrf": csrf_of(shown.text), "value": "7"})
    assert done.status_code == 303
    result = str(portal.ws.records.for_patient(pid)[-1][0])
    # The lab's list, the patient's timeline, the doctor's patient page and the order's
    # own page all show it as completed.
    assert "selesai (hasil diterima)" in _order_row(analyst.get("/lab").text, order)
    assert "selesai (hasil diterima)" in _order_row(patient.get("/me").text, order)
    assert "selesai (hasil diterima)" in _order_row(doctor.get(f"/patients/{pid}").text, order)
    assert "selesai (hasil diterima)" in patient.get(f"/records/{order}").text
    patient.get("/lang/en", params={"next": "/me"})
    assert "completed (result received)" in patient.get(f"/records/{order}").text
    # The order's content is still what the doctor signed: the lab may not author it.
    own = portal.ws.actor(pid, portal.password("patient-2"))
    content = portal.ws.records.read(own, order, None, "own")
    assert content.version == 1 and content.resource["status"] == "active"
    # Erasing the result takes the evidence away: the order is open again.
    token = csrf_of(patient.get("/me").text)
    erased = patient.post(f"/records/{result}/erase", data={"csrf": token, "confirm": "yes"})
    assert erased.status_code == 303
    assert "menunggu hasil" in _order_row(analyst.get("/lab").text, order)


def test_a_result_written_elsewhere_counts_once_read_here(portal: Portal) -> None:
    """A result written outside the portal (the FHIR API, another node) is linked to its
    order when this node reads it under audit; a basedOn naming another patient's order,
    or a record that is not a lab order, is ignored."""
    pid = portal.id_of("patient-2")
    order = _order_for(portal, pid)
    other_order = _order_for(portal, portal.id_of("patient-3"))
    analyst_actor = portal.ws.actor(portal.id_of("analis-prima"), portal.password("analis-prima"))
    first_record = str(portal.ws.records.for_patient(pid)[0][0])
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "basedOn": [
            {"reference": f"ServiceRequest/{order}"},
            {"reference": f"ServiceRequest/{other_order}"},
            {"reference": f"ServiceRequest/{first_record}"},
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-11-24T01:00:00+00:00",
        "valueQuantity": {
            "value": 6.1,
            "unit": "%",
            "system": "http://unitsofmeasure.org",
            "code": "%",
        },
    }
    written = portal.ws.records.write(analyst_actor, resource, patient=pid)
    analyst = portal.login("analis-prima")
    assert "menunggu hasil" in _order_row(analyst.get("/lab").text, order)
    assert analyst.get(f"/records/{written.record}").status_code == 200
    lab = analyst.get("/lab").text
    assert "selesai (hasil diterima)" in _order_row(lab, order)
    assert "menunggu hasil" in _order_row(lab, other_order)
    links = json.loads((portal.root / "portal-lab-results.json").read_text("utf-8"))
    assert links == {order: [written.record]}
    assert (portal.root / "portal-lab-results.json").stat().st_mode & 0o077 == 0
