"""Portal: the lockout and the TOTP replay state survive a restart of the server (a new
workspace and a new app on the same data folder), and the file holding them keeps no user
name, address or code."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient

from rekam.service.portal_auth import GuardState
from rekam.service.workspace import Workspace
from rekam.web import PortalConfig, create_portal

from .conftest import Clock, csrf_of, login


@pytest.fixture
def folder(web_demo: Path, tmp_path: Path) -> Path:
    """A fresh copy of the demo folder (no portal has run on it yet)."""
    root = tmp_path / "demo"
    shutil.copytree(web_demo, root)
    (root / "rekam.lock").unlink(missing_ok=True)
    return root


def _creds(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "demo-credentials.json").read_text("utf-8"))
    return data


def _password(root: Path, name: str) -> str:
    creds = _creds(root)
    if name.startswith("patient-"):
        return str(creds["patients"][int(name[8:]) - 1]["passphrase"])
    return str(creds["members"][name]["passphrase"])


@contextmanager
def server(
    root: Path, clock: Callable[[], float], wall: Callable[[], float]
) -> Iterator[Callable[[], TestClient]]:
    """One run of the portal on the folder: its own workspace and app, closed at the end
    (what a restart of ``rekam serve`` does)."""
    ws = Workspace.open(root)
    try:
        app = create_portal(ws, config=PortalConfig(clock=clock, wall_clock=wall))
        yield lambda: TestClient(app, base_url="http://testserver", follow_redirects=False)
    finally:
        ws.close()


def test_a_locked_user_stays_locked_after_a_restart(folder: Path) -> None:
    clock = Clock()
    right = _password(folder, "dokter-melati")
    with server(folder, clock, clock) as client:
        browser = client()
        for _ in range(4):
            assert login(browser, "dokter-melati", "not-the-passphrase").status_code == 401
        assert login(browser, "dokter-melati", "not-the-passphrase").status_code == 429
    clock.now += 60
    with server(folder, clock, clock) as client:
        # A new process on the same folder: the right password is still refused, and the
        # address lock holds for other user names too.
        assert login(client(), "dokter-melati", right).status_code == 429
        assert login(client(), "patient-1", _password(folder, "patient-1")).status_code == 429
    clock.now += 15 * 60
    with server(folder, clock, clock) as client:
        ok = login(client(), "dokter-melati", right)
        assert ok.status_code == 303 and ok.headers["location"] == "/patients"


def test_failures_short_of_a_lock_still_count_after_a_restart(folder: Path) -> None:
    clock = Clock()
    with server(folder, clock, clock) as client:
        for _ in range(3):
            assert login(client(), "patient-2", "wrong").status_code == 401
    with server(folder, clock, clock) as client:
        assert login(client(), "patient-2", "wrong").status_code == 401
        assert login(client(), "patient-2", "wrong").status_code == 429


def test_a_used_totp_code_is_refused_after_a_restart(folder: Path) -> None:
    clock = Clock()
    wall = Clock()
    wall.now = 1_800_000_000.0
    password = _password(folder, "patient-2")

    def attempt(client: Callable[[], TestClient], code: str) -> int:
        browser = client()
        form = browser.get("/login").text
        data = {"csrf": csrf_of(form), "username": "patient-2", "password": password}
        return int(browser.post("/login", data={**data, "code": code}).status_code)

    with server(folder, clock, wall) as client:
        user = client()
        assert login(user, "patient-2", password).status_code == 303
        page = user.get("/account").text
        found = re.search(r'<code id="totp-secret">([A-Z2-7=]+)</code>', page)
        assert found is not None
        totp = pyotp.TOTP(found.group(1))
        enabled = user.post("/account/totp", data={"csrf": csrf_of(page), "code": totp.at(wall())})
        assert enabled.status_code == 303
        wall.now += 60
        code = totp.at(wall())
        assert attempt(client, code) == 303
    with server(folder, clock, wall) as client:
        # Still within the code's window, but it was used before the restart.
        assert attempt(client, code) == 401
        wall.now += 30
        assert attempt(client, totp.at(wall())) == 303


def test_the_guard_file_holds_no_user_name_address_or_code(folder: Path) -> None:
    clock = Clock()
    with server(folder, clock, clock) as client:
        # (patient-3 first: once the address is locked, nothing more is counted.)
        assert login(client(), "patient-3", "wrong").status_code == 401
        for _ in range(5):
            login(client(), "dokter-melati", "not-the-passphrase")
    db = folder / "portal-guard.db"
    key = folder / "secrets" / "portal-guard.key"
    assert db.stat().st_mode & 0o077 == 0 and key.stat().st_mode & 0o077 == 0
    raw = db.read_bytes()
    for secret in (b"dokter-melati", b"patient-3", b"testclient", b"not-the-passphrase"):
        assert secret not in raw
    member = _creds(folder)["members"]["dokter-melati"]["id"].encode()
    assert member not in raw  # user names are tagged, whichever form was typed
    with sqlite3.connect(db) as conn:
        tags = {row[0] for row in conn.execute("SELECT tag FROM lockout")}
        counted = {row[0] for row in conn.execute("SELECT tag FROM failure")}
    state = GuardState(folder)
    # The tags are keyed: the same name under another node's key gives another tag.
    # The address reached five failures first and is locked; the two names are counted.
    assert tags == {state.tag("ip:testclient")}
    assert counted == {state.tag("user:patient-3"), state.tag("user:dokter-melati")}
    other = folder.parent / "other"
    other.mkdir()
    assert GuardState(other).tag("user:dokter-melati") != state.tag("user:dokter-melati")


def test_old_failures_leave_the_file_and_the_count(tmp_path: Path) -> None:
    state = GuardState(tmp_path)
    tags = [state.tag("user:someone")]
    for second in (0.0, 1.0, 2.0, 3.0):
        state.failed(tags, second, window=10, max_failures=5, lockout=60)
    # The window has passed for all four: a fifth failure starts a new count.
    state.failed(tags, 20.0, window=10, max_failures=5, lockout=60)
    assert not state.locked(tags, 20.0)
    with sqlite3.connect(tmp_path / "portal-guard.db") as conn:
        assert conn.execute("SELECT count(*) FROM failure").fetchone() == (1,)
    for second in (21.0, 22.0, 23.0, 24.0):
        state.failed(tags, second, window=10, max_failures=5, lockout=60)
    assert state.locked(tags, 24.0) and state.locked(tags, 83.9)
    assert not state.locked(tags, 84.0)
    state.failed([state.tag("user:other")], 90.0, window=10, max_failures=5, lockout=60)
    with sqlite3.connect(tmp_path / "portal-guard.db") as conn:
        assert conn.execute("SELECT count(*) FROM lockout").fetchone() == (0,)
