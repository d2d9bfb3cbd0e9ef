"""The demo across a real network: a loopback etcd cluster and three clinic nodes.

A record is written at Klinik Melati, read with the patient's consent at Klinik Kenanga (the
content travels from the authoring node, checked against the chain) and the prescription is
dispensed at Apotek Sentosa. Every node orders through etcd and validates every block itself;
at the end each node's head height and hash are reported (they must be equal).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rekam.ordering.etcd_local import LocalEtcdCluster, free_ports
from rekam.records import synthetic
from rekam.service.errors import AccessDenied
from rekam.service.network import NetworkNode, create_network
from rekam.service.workspace import Actor, OrgSpec, Workspace

ORGS = (
    OrgSpec("klinik-melati", "clinic", "Klinik Melati"),
    OrgSpec("klinik-kenanga", "clinic", "Klinik Kenanga"),
    OrgSpec("apotek-sentosa", "pharmacy", "Apotek Sentosa"),
)
Step = Callable[[str], None]


@dataclass
class NetworkDemoResult:
    """What the network demo did: per-node heads, the story's outcomes, what keeps running."""

    heads: dict[str, tuple[int, str]] = field(default_factory=dict)
    story: list[str] = field(default_factory=list)
    etcd_endpoints: list[str] = field(default_factory=list)
    node_pids: list[int] = field(default_factory=list)
    #: Demo people (name -> org, id, passphrase): synthetic, for logging in to the portals.
    people: dict[str, dict[str, str]] = field(default_factory=dict)
    #: With ``keep_running``: each node's portal and API address.
    portals: dict[str, str] = field(default_factory=dict)

    @property
    def agreed(self) -> bool:
        """True when every node reports the same head."""
        return len(set(self.heads.values())) == 1


def _sync(nodes: list[NetworkNode], timeout: float = 30.0) -> None:
    """Wait until every node has committed the highest head any of them has."""
    target = max(n.workspace.node.head.height for n in nodes)
    for node in nodes:
        if not node.wait_for_height(target, timeout):
            raise RuntimeError(f"{node.config.org} did not reach height {target} in time")


def run_network_demo(
    data_dir: Path,
    *,
    kdf: str = "standard",
    keep_running: bool = False,
    step: Step = lambda _msg: None,
    seed: int = 11,
) -> NetworkDemoResult:
    """Start etcd and three nodes in ``data_dir``, play the story, report the heads.

    Everything started is stopped on return or on an exception (Ctrl-C included), except
    with ``keep_running``, where the nodes are restarted as background processes.
    """
    rng = random.Random(seed)  # synthetic data only
    result = NetworkDemoResult()
    step("starting a 3-member etcd cluster on loopback")
    cluster = LocalEtcdCluster.create(data_dir / "etcd", 3)
    nodes: list[NetworkNode] = []
    handed_over = False
    try:
        cluster.start()
        result.etcd_endpoints = cluster.endpoints
        step("founding the network: one folder, one key and one port per organisation")
        ports = free_ports(len(ORGS))
        folders = create_network(
            data_dir / "nodes",
            "rekam-demo",
            ORGS,
            cluster.endpoints,
            [f"127.0.0.1:{p}" for p in ports],
            kdf=kdf,
        )
        for spec in ORGS:
            step(f"starting the node of {spec.label}")
            nodes.append(NetworkNode.open(folders[spec.org]))
        _play(nodes, rng, result, step)
        _sync(nodes)
        for node in nodes:
            head = node.workspace.node.head
            result.heads[node.config.org] = (head.height, head.hash)
        if keep_running:
            step("handing the nodes over to background processes")
            for node in nodes:
                node.close()
            nodes = []
            http_ports = free_ports(len(ORGS))
            for spec, http_port in zip(ORGS, http_ports, strict=True):
                result.portals[spec.org] = f"http://127.0.0.1:{http_port}/"
                command = [sys.executable, "-m", "rekam.cli.main", "network", "run"]
                process = subprocess.Popen(
                    [*command, "-d", str(folders[spec.org]), "--http", f"127.0.0.1:{http_port}"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=open(folders[spec.org] / "node.log", "ab"),  # noqa: SIM115
                    start_new_session=True,
                )
                result.node_pids.append(process.pid)
            (data_dir / "pids.json").write_text(
                json.dumps({"nodes": result.node_pids}) + "\n", "utf-8"
            )
            _write_credentials(data_dir, result)
            handed_over = True
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.close()
        if not handed_over:
            cluster.stop()
    return result


def _play(
    nodes: list[NetworkNode], rng: random.Random, result: NetworkDemoResult, step: Step
) -> None:
    a, b, p = (node.workspace for node in nodes)
    step("each organisation enrols its own staff at its own node")

    def enrol(ws: Workspace, name: str, org: str, role: str, secret: str) -> Actor:
        member = ws.admin.enrol_member(ws.actor(org), role, secret, label=name)
        result.people[name] = {"org": org, "role": role, "id": member.id, "passphrase": secret}
        return ws.actor(member.id, secret)

    enrol(a, "admin-melati", "klinik-melati", "admin", "demo-admin-a")
    doctor_a = enrol(a, "dokter-melati", "klinik-melati", "doctor", "demo-a")
    doctor_b = enrol(b, "dokter-kenanga", "klinik-kenanga", "doctor", "demo-b")
    pharmacist = enrol(p, "apoteker-sentosa", "apotek-sentosa", "pharmacist", "demo-p")
    step("registering a synthetic patient at Klinik Melati")
    registered, _ = a.admin.register_patient(a.actor("klinik-melati"), "demo-patient")
    patient = a.actor(registered.id, "demo-patient")
    result.people["patient-1"] = {
        "org": "klinik-melati",
        "role": "patient",
        "id": registered.id,
        "passphrase": "demo-patient",
    }
    pid = patient.id
    when = datetime.now(UTC) - timedelta(days=1)
    step("writing a diagnosis and a prescription at Klinik Melati")
    cond = a.records.write(doctor_a, synthetic.condition(rng, pid, None, doctor_a.id), patient=pid)
    rx = a.records.write(
        doctor_a, synthetic.medication_request(rng, pid, doctor_a.id, when), patient=pid
    )
    result.story.append(f"record written at klinik-melati (height {a.node.head.height})")
    _sync(nodes)

    step("Klinik Kenanga tries to read without consent (denied, on the chain)")
    try:
        b.records.read(doctor_b, cond.record)
        result.story.append("ERROR: read without consent was allowed")
    except AccessDenied:
        result.story.append("read without consent at klinik-kenanga: denied and recorded")

    step("the patient consents; Klinik Kenanga fetches the content and reads it")
    a.consent.grant(patient, pid, doctor_b.id, resource_types=["*"], purpose="treatment", days=30)
    _sync(nodes)
    # The ordinary read: the node fetches the content from Klinik Melati's node by itself.
    read = b.records.read(doctor_b, cond.record)
    result.story.append(f"read with consent at klinik-kenanga: {read.resource_type} opened")

    step("the patient shares the prescription with the pharmacy; it is dispensed there")
    a.consent.grant(
        patient,
        pid,
        "apotek-sentosa",
        resource_types=["MedicationDispense", "MedicationRequest"],
        purpose="dispensing",
        days=7,
    )
    _sync(nodes)
    p.records.read(pharmacist, rx.record, purpose="dispensing")
    dispense = synthetic.medication_dispense(
        rng, pid, f"MedicationRequest/{rx.record}", pharmacist.id, when
    )
    p.records.dispense(pharmacist, rx.record, dispense)
    result.story.append("prescription read and dispensed at apotek-sentosa")


def _write_credentials(data_dir: Path, result: NetworkDemoResult) -> None:
    """Who to log in as, and where (synthetic identities only, files readable by the owner).

    ``DIR/demo-credentials.json`` lists every person with their node's portal; each node's
    folder gets the same file as the embedded demo writes, with the people whose keystores
    it holds, so the portal and the CLI there take their demo names.
    """
    _owner_only_json(
        data_dir / "demo-credentials.json",
        {
            "note": "Synthetic demo identities. These passphrases protect demo keystores only.",
            "portals": result.portals,
            "people": result.people,
        },
    )
    for spec in ORGS:
        here = {n: p for n, p in result.people.items() if p["org"] == spec.org}
        members = {n: p for n, p in here.items() if p["role"] != "patient"}
        patients = [p for p in here.values() if p["role"] == "patient"]
        _owner_only_json(
            data_dir / "nodes" / spec.org / "demo-credentials.json",
            {"members": members, "patients": patients},
        )


def _owner_only_json(path: Path, doc: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(doc, indent=2) + "\n")


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def describe(result: NetworkDemoResult) -> dict[str, Any]:
    """A JSON-ready summary."""
    return {
        "heads": {o: {"height": h, "hash": x} for o, (h, x) in result.heads.items()},
        "agreed": result.agreed,
        "story": result.story,
    }
