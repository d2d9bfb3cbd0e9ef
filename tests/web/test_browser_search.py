"""Patient and ICD-10 search in a real headless browser (Debian's Chromium via Playwright),
against a real ``rekam serve`` process: the fixtures of test_browser.py are reused."""

from __future__ import annotations

from typing import Any

from tests.web.test_browser import (
    PHONE,
    Server,
    browser,  # noqa: F401 - a fixture, used by name below
    open_as,
    server,  # noqa: F401 - a fixture, used by name below
)


def test_doctor_finds_a_patient_and_codes_a_searched_diagnosis(
    browser: Any,  # noqa: F811
    server: Server,  # noqa: F811
) -> None:
    doctor = open_as(browser, server, "dokter-melati")
    name = server.creds["patients"][3]["name"]
    pid = server.id_of("patient-4")
    doctor.get_by_label("Nama, NIK atau nomor rekam medis").fill(name)
    doctor.get_by_role("button", name="Cari", exact=True).click()
    doctor.wait_for_load_state()
    # The answer is the page itself: the URL holds no query, and no redirect carried it.
    assert doctor.url == f"{server.base}/patients"
    results = doctor.get_by_role("table").filter(has_text="Hasil pencarian")
    assert results.get_by_text("RM-990004").count() == 1
    results.get_by_role("link", name=pid).click()
    doctor.wait_for_load_state()
    assert doctor.url == f"{server.base}/patients/{pid}"
    doctor.get_by_label("Cari ICD-10: kode (mis. E11) atau kata dalam bahasa Inggris").fill(
        "dengue warning"
    )
    doctor.get_by_role("button", name="Cari kode").click()
    doctor.wait_for_load_state()
    assert doctor.url == f"{server.base}/patients/{pid}/diagnosis-search"
    doctor.get_by_label("A97.1 · Dengue with warning signs").check()
    doctor.get_by_role("button", name="Simpan diagnosis").click()
    doctor.wait_for_load_state()
    assert doctor.url.endswith(f"/patients/{pid}?msg=added")
    # The new Condition opens with the WHO code and display.
    doctor.get_by_role("link", name="Condition").first.click()
    doctor.wait_for_load_state()
    assert "A97.1" in doctor.content() and "Dengue with warning signs" in doctor.content()
    # Nothing overflows at a phone width on the search results.
    phone = open_as(browser, server, "dokter-melati", PHONE)
    phone.get_by_label("Nama, NIK atau nomor rekam medis").fill("RM-990004")
    phone.get_by_role("button", name="Cari", exact=True).click()
    phone.wait_for_load_state()
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    phone.context.close()
    doctor.context.close()
