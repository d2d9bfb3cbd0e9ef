"""End-to-end portal tests in a real headless browser (Debian's Chromium driven by
Playwright) against a real ``rekam serve`` process on a free loopback port.

Screenshots of the main pages (both languages, desktop and phone width) are saved to
``$REKAM_SCREENSHOTS`` or a temporary folder; docs/screenshots/ holds a few of them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed at /usr/bin/chromium and could not be installed "
        "(scripts/test.sh installs it with apt-get when run as root)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

REKAM = [sys.executable, "-m", "rekam.cli.main"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class Server:
    """A running ``rekam serve`` over a copy of the web demo folder."""

    base: str
    root: Path
    log: Path
    creds: dict[str, Any]

    def password(self, name: str) -> str:
        """The passphrase of a demo member or patient-N."""
        if name.startswith("patient-"):
            return str(self.creds["patients"][int(name[8:]) - 1]["passphrase"])
        return str(self.creds["members"][name]["passphrase"])

    def id_of(self, name: str) -> str:
        """The principal id of a demo member or patient-N."""
        if name.startswith("patient-"):
            return str(self.creds["patients"][int(name[8:]) - 1]["id"])
        return str(self.creds["members"][name]["id"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(web_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``rekam serve`` on a free port; stopped (and its folder left) after the module."""
    root = tmp_path_factory.mktemp("browser") / "node"
    shutil.copytree(web_demo, root)
    (root / "rekam.lock").unlink(missing_ok=True)
    port = _free_port()
    log = root.parent / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*REKAM, "serve", "--data-dir", str(root), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("rekam serve did not come up: " + log.read_text("utf-8"))
            time.sleep(0.2)
        creds = json.loads((root / "demo-credentials.json").read_text("utf-8"))
        yield Server(base, root, log, creds)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian's package (never a downloaded browser)."""
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go."""
    target = os.environ.get("REKAM_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_as(browser: Any, server: Server, name: str, viewport: dict[str, int] = DESKTOP) -> Any:
    """A new browser context (own cookies) logged in as a demo principal."""
    context = browser.new_context(viewport=viewport, base_url=server.base)
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("Nama pengguna atau ID").fill(name)
    page.get_by_label("Kata sandi").fill(server.password(name))
    page.get_by_role("button", name="Masuk").click()
    page.wait_for_load_state()
    assert "/login" not in page.url, page.content()
    return page


def test_patient_grants_access_doctor_reads_patient_sees_it(
    browser: Any, server: Server, shots: Path
) -> None:
    patient = open_as(browser, server, "patient-3")
    patient.get_by_role("link", name="Izin akses").click()
    patient.get_by_label("Penerima").select_option(server.id_of("dokter-kenanga"))
    patient.get_by_label("Lama (hari)").fill("14")
    patient.get_by_role("button", name="Beri izin").click()
    patient.wait_for_load_state()
    assert "Izin diberikan." in patient.inner_text("main")
    assert "dr. Budi Fiktif" in patient.inner_text("table")
    patient.screenshot(path=shots / "patient-consents-id-desktop.png", full_page=True)

    doctor = open_as(browser, server, "dokter-kenanga")
    assert doctor.url.endswith("/patients")
    doctor.get_by_role("link", name=server.id_of("patient-3")).click()
    doctor.get_by_role("link", name="Buka").first.click()
    doctor.wait_for_load_state()
    proof = doctor.locator(".proof")
    assert "Terverifikasi di rantai" in proof.inner_text()
    doctor.screenshot(path=shots / "record-verified-id-desktop.png", full_page=True)
    with doctor.expect_download() as download:
        doctor.get_by_role("link", name="Unduh tanda terima (JSON)").click()
    receipt = json.loads(Path(download.value.path()).read_text("utf-8"))
    assert receipt["tx_id"] and receipt["checkpoint"]

    patient.get_by_role("link", name="Siapa yang mengakses").click()
    rows = patient.locator("tbody tr").all_inner_texts()
    assert any("dr. Budi Fiktif" in row and "membaca" in row for row in rows), rows
    patient.screenshot(path=shots / "patient-access-id-desktop.png", full_page=True)
    patient.get_by_role("link", name="English").click()
    assert "Who accessed my data" in patient.inner_text("h1")
    patient.screenshot(path=shots / "patient-access-en-desktop.png", full_page=True)
    patient.context.close()
    doctor.context.close()


def test_pharmacy_dispenses(browser: Any, server: Server, shots: Path) -> None:
    pharmacist = open_as(browser, server, "apoteker-sentosa")
    assert pharmacist.url.endswith("/pharmacy")
    row = pharmacist.locator("tbody tr", has_text="belum diserahkan")
    row.get_by_role("link", name="Buka").click()
    pharmacist.screenshot(path=shots / "pharmacy-prescription-id-desktop.png", full_page=True)
    pharmacist.get_by_role("button", name="Serahkan obat").click()
    pharmacist.wait_for_load_state()
    assert "Penyerahan obat dicatat di rantai." in pharmacist.inner_text("main")
    assert pharmacist.locator("tbody tr", has_text="belum diserahkan").count() == 0
    pharmacist.context.close()


def test_emergency_access(browser: Any, server: Server, shots: Path) -> None:
    doctor = open_as(browser, server, "dokter-kenanga")
    warning = doctor.locator("#emergency-warning").inner_text()
    assert "dicatat di rantai" in warning
    doctor.get_by_label("ID pasien").fill(server.id_of("patient-4"))
    doctor.get_by_label("Alasan (wajib)").select_option("unconscious")
    doctor.screenshot(path=shots / "clinician-emergency-id-desktop.png", full_page=True)
    # The browser itself refuses the form until the audit warning is acknowledged.
    doctor.get_by_role("button", name="Buka akses darurat").click()
    assert doctor.url.endswith("/patients")
    doctor.get_by_label("Saya mengerti bahwa akses ini diaudit").check()
    doctor.get_by_role("button", name="Buka akses darurat").click()
    doctor.wait_for_load_state()
    assert "Akses darurat dibuka" in doctor.inner_text("main")
    doctor.get_by_role("link", name="Buka").first.click()
    assert "Terverifikasi di rantai" in doctor.inner_text("main")

    patient = open_as(browser, server, "patient-4", PHONE)
    patient.get_by_role("link", name="Siapa yang mengakses").click()
    emergency_rows = patient.locator("tr.emergency").all_inner_texts()
    assert any("AKSES DARURAT" in row for row in emergency_rows), emergency_rows
    assert any("dr. Budi Fiktif" in row for row in emergency_rows)
    patient.screenshot(path=shots / "patient-access-emergency-id-phone.png", full_page=True)
    doctor.context.close()
    patient.context.close()


def test_unlisted_patient_leads_to_a_request_on_a_phone(browser: Any, server: Server) -> None:
    doctor = open_as(browser, server, "dokter-kenanga", PHONE)
    # The linked patients' table is stacked; each cell names its column.
    first = doctor.locator("tbody td[data-label]").first
    assert first.evaluate("td => getComputedStyle(td, '::before').content") == '"Pasien: "'
    pid = server.id_of("patient-2")
    doctor.get_by_label("Nomor pasien").fill(pid)
    doctor.get_by_role("button", name="Minta akses").click()
    doctor.wait_for_load_state()
    assert doctor.url.endswith(f"/requests?patient={pid}")
    assert doctor.get_by_label("ID pasien").input_value() == pid
    assert doctor.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    doctor.context.close()


def test_forbidden_page_is_refused(browser: Any, server: Server) -> None:
    pharmacist = open_as(browser, server, "apoteker-sentosa")
    response = pharmacist.goto("/me/access")
    assert response is not None and response.status == 403
    assert "tidak berhak" in pharmacist.inner_text("h1")
    patient = open_as(browser, server, "patient-1")
    response = patient.goto(f"/patients/{server.id_of('patient-2')}")
    assert response is not None and response.status == 403
    pharmacist.context.close()
    patient.context.close()


def test_screenshots_in_both_languages_and_widths(
    browser: Any, server: Server, shots: Path
) -> None:
    for viewport_name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport, base_url=server.base)
        page = context.new_page()
        page.goto("/login")
        assert page.locator("html").get_attribute("lang") == "id"
        page.screenshot(path=shots / f"login-id-{viewport_name}.png")
        page.get_by_role("link", name="English").click()
        assert page.locator("html").get_attribute("lang") == "en"
        page.screenshot(path=shots / f"login-en-{viewport_name}.png")
        context.close()
        patient = open_as(browser, server, "patient-1", viewport)
        patient.screenshot(path=shots / f"patient-timeline-id-{viewport_name}.png", full_page=True)
        patient.get_by_role("link", name="English").click()
        assert patient.inner_text("h1") == "My medical history"
        # Nothing overflows sideways at phone width.
        width = patient.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], width
        if viewport_name == "phone":
            # Stacked cells show their column's name, since the header row is hidden.
            before = patient.evaluate(
                "getComputedStyle(document.querySelector('tbody td[data-label]'), '::before')"
                ".content"
            )
            assert before == '"Date: "', before
            assert patient.locator("thead").first.is_hidden()
        patient.screenshot(path=shots / f"patient-timeline-en-{viewport_name}.png", full_page=True)
        patient.get_by_role("link", name="Results chart").click()
        assert patient.locator("figure.chart svg polyline").count() >= 1
        assert patient.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        patient.screenshot(path=shots / f"patient-chart-en-{viewport_name}.png", full_page=True)
        patient.context.close()
    assert len(list(shots.glob("*.png"))) >= 8


def test_server_output_holds_no_identifying_data(server: Server) -> None:
    output = server.log.read_text("utf-8", errors="replace")
    for entry in server.creds["patients"]:
        assert entry["name"] not in output
        assert entry["id"] not in output
