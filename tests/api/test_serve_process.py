"""A real ``rekam serve`` process on a free loopback port, with a token from ``rekam token``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REKAM = [sys.executable, "-m", "rekam.cli.main"]
ENV = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _token(root: Path, *args: str) -> str:
    out = subprocess.run(
        [*REKAM, "token", "--data-dir", str(root), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_serve_token_and_revoke(demo_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "node"
    shutil.copytree(demo_template, root)
    port = _free_port()
    server = subprocess.Popen(
        [*REKAM, "serve", "--data-dir", str(root), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    base = f"http://127.0.0.1:{port}"
    nik = "not-yet-known"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/status", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail("rekam serve did not come up")
            time.sleep(0.2)
        # Tokens are issued while the server runs: the token store is not behind its lock.
        token = _token(root, "--as", "patient-1", "--scope", "patient/*.read", "--expires", "1h")
        bearer = {"Authorization": f"Bearer {token}"}
        metadata = httpx.get(f"{base}/fhir/metadata", timeout=10)
        assert metadata.json()["resourceType"] == "CapabilityStatement"
        own = httpx.get(f"{base}/fhir/Condition", headers=bearer, timeout=30)
        assert own.status_code == 200, own.text
        assert own.json()["total"] >= 1
        patient = httpx.get(f"{base}/fhir/Patient", headers=bearer, timeout=30).json()
        nik = patient["entry"][0]["resource"]["identifier"][0]["value"]
        found = httpx.get(f"{base}/fhir/Patient?identifier={nik}", headers=bearer, timeout=30)
        assert found.status_code == 200
        bad = httpx.post(
            f"{base}/fhir/Observation", content=b'{"resourceType":', headers=bearer, timeout=30
        )
        assert bad.status_code == 403  # a read-only token: refused before the body is parsed
        subprocess.run(
            [*REKAM, "token", "revoke", "--data-dir", str(root), token.split(".")[0]],
            env=ENV,
            check=True,
            capture_output=True,
            timeout=60,
        )
        refused = httpx.get(f"{base}/fhir/Condition", headers=bearer, timeout=30)
        assert refused.status_code == 401
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    assert b"Traceback" not in err
    # No access log: the searched identifier (a NIK) must not reach the server's output.
    assert nik.encode() not in out + err


def test_token_cli_refuses_a_wrong_passphrase_and_bad_scopes(
    demo_template: Path, tmp_path: Path
) -> None:
    root = tmp_path / "node"
    shutil.copytree(demo_template, root)
    creds = json.loads((root / "demo-credentials.json").read_text())
    member = creds["members"]["dokter-melati"]["id"]
    wrong = subprocess.run(
        [*REKAM, "token", "-d", str(root), "--as", member, "--passphrase-env", "WRONG_PASS"],
        capture_output=True,
        text=True,
        env={**ENV, "WRONG_PASS": "not-the-passphrase"},
        timeout=120,
        check=False,
    )
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    scope = subprocess.run(
        [*REKAM, "token", "-d", str(root), "--as", "dokter-melati", "--scope", "everything"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    assert scope.returncode == 1 and "scopes look like" in scope.stderr
    listing = subprocess.run(
        [*REKAM, "token", "list", "-d", str(root)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=True,
    )
    assert listing.stdout.strip() == ""
