"""The demo across a real network: a loopback etcd cluster and three clinic nodes.

A record is written at Klinik Melati, read with the patient's consent at Klinik Kenanga (the
content travels from the authoring node, checked against the chain) and the prescription is
dispensed at Apotek Sentosa. Every node orders through etcd and validates every block itself;
at the end each node's head height and hash are reported (they must be equal).
"""

from __future__ import annotations

import contextlib
import json
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
from rekam.service.workspace import OrgSpec

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
            for spec in ORGS:
                command = [sys.executable, "-m", "rekam.cli.main", "network", "run"]
                process = subprocess.Popen(
                    [*command, "-d", str(folders[spec.org])],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=open(folders[spec.org] / "node.log", "ab"),  # noqa: SIM115
                    start_new_session=True,
                )
                result.node_pids.append(process.pid)
            (data_dir / "pids.json").write_text(
                json.dumps({"nodes": result.node_pids}) + "\n", "utf-8"
            )
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
    doctor_a = a.actor(
        a.admin.enrol_member(a.actor("klinik-melati"), "doctor", "demo-a").id, "demo-a"
    )
    doctor_b = b.actor(
        b.admin.enrol_member(b.actor("klinik-kenanga"), "doctor", "demo-b").id, "demo-b"
    )
    pharmacist = p.actor(
        p.admin.enrol_member(p.actor("apotek-sentosa"), "pharmacist", "demo-p").id, "demo-p"
    )
    step("registering a synthetic patient at Klinik Melati")
    registered, _ = a.admin.register_patient(a.actor("klinik-melati"), "demo-patient")
    patient = a.actor(registered.id, "demo-patient")
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
