"""A network node's portal and API: the same app as ``rekam serve``, with the cluster's status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from rekam.ordering.etcd_local import free_ports
from rekam.service.network import NetworkNode, cluster_view
from rekam.service.network_demo import run_network_demo
from rekam.service.node import NotOrderedHere
from rekam.service.tokens import TokenStore
from rekam.service.workspace import Workspace
from rekam.web.dispatch import node_app
from tests.network.harness import network, require_etcd, wait_for
from tests.web.conftest import csrf_of, login

ADMIN_PASSWORD = "kata-sandi-admin-1"


def _wait_for_portal(url: str, what: str) -> None:
    """Wait until the portal at ``url`` (ending in /) serves its login page."""

    def up() -> bool:
        try:
            return httpx.get(f"{url}login", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, what)


def test_admin_page_of_a_network_node_lists_peers_and_etcd(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        a_folder, b_folder = list(net.folders.values())[:2]
        with NetworkNode.open(a_folder) as a, NetworkNode.open(b_folder) as b:
            ws = a.workspace
            admin = ws.admin.enrol_member(ws.actor(a.config.org), "admin", ADMIN_PASSWORD)
            # Both nodes publish their heads to etcd; wait until both have registered.
            wait_for(
                lambda: (
                    {n["org"] for n in cluster_view(a_folder).get("nodes", [])}
                    >= {a.config.org, b.config.org}
                ),
                30,
                "both nodes registered in etcd",
            )
            tokens = TokenStore(a_folder)
            app = node_app(ws, tokens, network_view=lambda: cluster_view(a_folder))
            try:
                client = TestClient(app.asgi, follow_redirects=False)
                assert login(client, admin.id, ADMIN_PASSWORD).status_code == 303
                page = client.get("/admin")
                assert page.status_code == 200
                status = page.text.split('id="events"')[0]
                assert "Node dalam jaringan" in status and "Anggota etcd" in status
                assert "pemimpin Raft" in status  # one member is the Raft leader
                assert status.count('<td data-label="Organisasi">') == 2  # both nodes
                assert b.workspace.node.head.hash[:16] in status
                # A verification on a network node checks the content it holds keys for.
                report = client.post("/admin/verify", data={"csrf": csrf_of(page.text)})
                assert "Verifikasi berhasil" in report.text
                # The FHIR API answers on the same app.
                assert client.get("/fhir/metadata").status_code == 200
            finally:
                app.close()
                tokens.close()


def test_network_run_serves_the_portal_and_api_with_http(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        folder = next(iter(net.folders.values()))
        port = free_ports(1)[0]
        log = open(folder / "node.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rekam.cli.main",
                "network",
                "run",
                "-d",
                str(folder),
                "--http",
                f"127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        try:
            _wait_for_portal(f"http://127.0.0.1:{port}/", "the node's portal")
            metadata = httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=5)
            assert metadata.json()["resourceType"] == "CapabilityStatement"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, (folder / "node.log").read_text("utf-8")


def test_a_network_folder_opened_alone_refuses_writes_instead_of_forking(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        folder = next(iter(net.folders.values()))
        with Workspace.open(folder) as ws:
            height = ws.node.head.height
            org = ws.actor(next(iter(ws.org_identities)))
            with pytest.raises(NotOrderedHere):
                ws.admin.enrol_member(org, "doctor", "kata-sandi-dokter-1")
            # The same write again gets the same clear refusal (nothing was left queued).
            with pytest.raises(NotOrderedHere):
                ws.admin.enrol_member(org, "doctor", "kata-sandi-dokter-1")
            assert ws.node.head.height == height  # no block of its own


def test_cli_writes_on_a_stopped_network_node_go_through_the_network(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        folders = list(net.folders.values())
        org = folders[0].name
        env = {**os.environ, "NEW_PASSPHRASE": "kata-sandi-admin-2"}
        command = [sys.executable, "-m", "rekam.cli.main", "member", "enrol", "-d", str(folders[0])]
        command += ["--as", org, "--new-passphrase-env", "NEW_PASSPHRASE", "--role"]
        with NetworkNode.open(folders[1]) as other:  # another organisation's running node
            out = subprocess.run(
                [*command, "admin"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            member = out.stdout.split()[1]  # "member <id> enrolled as admin in tx ..."
            # Ordered through etcd: the other node committed the enrolment too.
            wait_for(
                lambda: other.workspace.node.store.get("member", member) is not None,
                30,
                "the enrolment at the other node",
            )
        # While a node runs, its folder is locked: the CLI says what to do instead.
        with NetworkNode.open(folders[0]):
            out = subprocess.run(
                [*command, "doctor"],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
            assert out.returncode == 1 and "the node is running" in out.stderr


def test_kept_running_demo_gives_each_node_a_portal_with_demo_names(tmp_path: Path) -> None:
    require_etcd()
    root = tmp_path / "demo"
    result = run_network_demo(root, kdf="fast", keep_running=True)
    try:
        assert result.agreed and set(result.portals) == set(result.heads)
        creds = json.loads((root / "demo-credentials.json").read_text("utf-8"))
        assert (root / "demo-credentials.json").stat().st_mode & 0o077 == 0
        doctor = creds["people"]["dokter-kenanga"]
        url = creds["portals"][doctor["org"]]
        _wait_for_portal(url, "the kept-running node's portal")
        with httpx.Client(base_url=url, follow_redirects=False, timeout=10) as client:
            page = client.get("/login")
            form = {"csrf": csrf_of(page.text), "username": "dokter-kenanga"}
            answer = client.post("/login", data={**form, "password": doctor["passphrase"]})
            assert answer.status_code == 303 and answer.headers["location"] == "/patients"
            # The patient consented to this doctor in the story: they are listed here.
            assert creds["people"]["patient-1"]["id"] in client.get("/patients").text
    finally:
        subprocess.run(
            [sys.executable, "-m", "rekam.cli.main", "network", "stop", "--data-dir", str(root)],
            capture_output=True,
            timeout=120,
            check=False,
        )
