"""A network node's portal and API: the same app as ``rekam serve``, with the cluster's status."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from rekam.ordering.etcd_local import free_ports
from rekam.service.network import NetworkNode, cluster_view
from rekam.service.tokens import TokenStore
from rekam.web.dispatch import node_app
from tests.network.harness import network, wait_for
from tests.web.conftest import csrf_of, login

ADMIN_PASSWORD = "kata-sandi-admin-1"


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

            def up() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, 60, "the node's portal")
            metadata = httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=5)
            assert metadata.json()["resourceType"] == "CapabilityStatement"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, (folder / "node.log").read_text("utf-8")
