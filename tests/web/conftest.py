"""Fixtures for the portal tests: a demo folder built once, copied per test module."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rekam.records import synthetic
from rekam.service.demo import run_demo
from rekam.service.workspace import Workspace
from rekam.web import PortalConfig, create_portal


@pytest.fixture(scope="session")
def web_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo network (four patients, fast KDF) plus one prescription not yet dispensed,
    written by a doctor for patient 1, who already shares prescriptions with the pharmacy."""
    folder = tmp_path_factory.mktemp("web-demo") / "demo"
    run_demo(folder, kdf="fast", patients=4)
    creds = json.loads((folder / "demo-credentials.json").read_text("utf-8"))
    ws = Workspace.open(folder)
    try:
        doctor = creds["members"]["dokter-melati"]
        actor = ws.actor(doctor["id"], doctor["passphrase"])
        patient = creds["patients"][0]["id"]
        rx = synthetic.medication_request(random.Random(11), patient, actor.id, datetime.now(UTC))
        ws.records.write(actor, rx, patient=patient)
    finally:
        ws.close()
    return folder


class Clock:
    """A settable monotonic clock for session expiry and lockout."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Portal:
    """An in-process portal over a copy of the demo folder."""

    root: Path
    ws: Workspace
    clock: Clock
    creds: dict[str, Any]
    app: Any

    def client(self) -> TestClient:
        """A fresh browser-like client (its own cookies)."""
        return TestClient(self.app, base_url="http://testserver", follow_redirects=False)

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

    def login(self, name: str, password: str | None = None) -> TestClient:
        """A client logged in as a demo principal (asserts success)."""
        client = self.client()
        response = login(client, name, self.password(name) if password is None else password)
        assert response.status_code == 303, response.text
        return client


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def login(client: TestClient, username: str, password: str) -> Any:
    """Open the login page, then post the form with its CSRF token."""
    page = client.get("/login")
    return client.post(
        "/login",
        data={"csrf": csrf_of(page.text), "username": username, "password": password},
    )


@pytest.fixture
def portal(web_demo: Path, tmp_path: Path) -> Iterator[Portal]:
    """A portal over a fresh copy of the demo folder, with a controllable clock."""
    root = tmp_path / "demo"
    shutil.copytree(web_demo, root)
    (root / "rekam.lock").unlink(missing_ok=True)
    ws = Workspace.open(root)
    clock = Clock()
    creds = json.loads((root / "demo-credentials.json").read_text("utf-8"))
    app = create_portal(ws, config=PortalConfig(idle_seconds=600, clock=clock))
    try:
        yield Portal(root, ws, clock, creds, app)
    finally:
        ws.close()
