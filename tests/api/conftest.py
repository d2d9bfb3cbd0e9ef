"""Fixtures for the API tests: a demo data folder copied per module, an app, and tokens."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rekam.api import create_app
from rekam.service.demo import run_demo
from rekam.service.tokens import TokenStore
from rekam.service.workspace import Workspace

FIXTURES = Path(__file__).parent / "fixtures"
HOUR_MS = 3600 * 1000


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo network, built once per session (fast keystore KDF)."""
    folder = tmp_path_factory.mktemp("api-demo") / "demo"
    run_demo(folder, kdf="fast", patients=3)
    return folder


@dataclass
class Api:
    """An in-process API over a copy of the demo folder."""

    root: Path
    ws: Workspace
    tokens: TokenStore
    client: TestClient
    creds: dict[str, Any]

    def principal(self, name: str) -> tuple[str, str | None]:
        """A demo name (member key, patient-N or org slug) as (id, passphrase)."""
        members = self.creds["members"]
        if name in members:
            return members[name]["id"], members[name]["passphrase"]
        if name.startswith("patient-"):
            entry = self.creds["patients"][int(name[8:]) - 1]
            return entry["id"], entry["passphrase"]
        return name, None

    def token(self, name: str, scopes: str | None = None, expires_ms: int = HOUR_MS) -> str:
        """Issue a token for a demo principal."""
        principal, passphrase = self.principal(name)
        default = "patient/*.*" if principal.startswith("p-") else "user/*.*"
        return self.tokens.issue(
            principal,
            passphrase,
            scopes or default,
            now=self.ws.node.clock(),
            expires_in_ms=expires_ms,
        )

    def headers(self, name: str, scopes: str | None = None) -> dict[str, str]:
        """Authorization headers for a demo principal."""
        return {"Authorization": f"Bearer {self.token(name, scopes)}"}

    def patient_id(self, n: int = 1) -> str:
        """The id of demo patient n."""
        return str(self.creds["patients"][n - 1]["id"])

    def events(self, patient: str) -> list[Any]:
        """The patient's access history from the core service (not through the API)."""
        return self.ws.audit.history(patient)


def open_api(src: Path, dest: Path, **config: Any) -> Iterator[Api]:
    """Copy a data folder, open it and serve the app in process."""
    shutil.copytree(src, dest)
    ws = Workspace.open(dest)
    tokens = TokenStore(dest)
    try:
        from rekam.api import ApiConfig

        app = create_app(ws, tokens, ApiConfig(**config))
        with TestClient(app, raise_server_exceptions=False) as client:
            creds = json.loads((dest / "demo-credentials.json").read_text())
            yield Api(dest, ws, tokens, client, creds)
        app.state.ctx.close()
    finally:
        tokens.close()
        ws.close()


@pytest.fixture(scope="module")
def api(demo_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One in-process API per test module, over its own copy of the demo network."""
    yield from open_api(
        demo_template, tmp_path_factory.mktemp("api") / "node", max_body_bytes=256 * 1024
    )


def load_fixture(name: str) -> dict[str, Any]:
    """A JSON fixture from tests/api/fixtures."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text("utf-8"))
    return data
