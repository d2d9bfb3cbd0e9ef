"""The auditor's and the clinician's search pages in a real headless browser (Debian's
Chromium via Playwright) against a real ``rekam serve`` process, with screenshots for the
docs; the fixtures of test_browser.py are reused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.web.test_browser import (
    Server,
    browser,  # noqa: F401 - a fixture, used by name below
    open_as,
    server,  # noqa: F401 - a fixture, used by name below
    shots,  # noqa: F401 - a fixture, used by name below
)


def test_auditor_verifies_and_searches_events_but_cannot_open_a_record(
    browser: Any,  # noqa: F811
    server: Server,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    auditor = open_as(browser, server, "auditor-melati")
    assert auditor.url == f"{server.base}/audit"
    auditor.get_by_role("button", name="Jalankan verifikasi").click()
    auditor.wait_for_load_state()
    assert auditor.get_by_text("Verifikasi berhasil").count() >= 1
    # Reads across every organisation: the filter is a plain GET of kinds and ids.
    auditor.get_by_label("Kejadian").select_option("access.read")
    auditor.get_by_role("button", name="Saring").click()
    auditor.wait_for_load_state()
    assert "kind=access.read" in auditor.url
    events = auditor.locator("#events ~ table").first
    assert events.get_by_text("membaca").count() >= 1
    auditor.goto("/lang/en")
    auditor.goto("/audit?kind=access.read")
    auditor.screenshot(path=shots / "auditor-events-en-desktop.png", full_page=True)
    # An auditor has no basis to read content: a record page is refused.
    record = next(iter(server.creds["records"].values()))
    answer = auditor.goto(f"/records/{record}")
    assert answer is not None and answer.status == 403
    auditor.context.close()


def test_clinician_search_result_screenshot(
    browser: Any,  # noqa: F811
    server: Server,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    doctor = open_as(browser, server, "dokter-melati")
    doctor.get_by_label("Nama, NIK atau nomor rekam medis").fill("Contoh")
    doctor.get_by_role("button", name="Cari", exact=True).click()
    doctor.wait_for_load_state()
    assert doctor.url == f"{server.base}/patients"  # the query is in no URL
    assert doctor.get_by_text("RM-99").count() >= 1
    doctor.screenshot(path=shots / "clinician-patient-search-id-desktop.png", full_page=True)
    doctor.context.close()
