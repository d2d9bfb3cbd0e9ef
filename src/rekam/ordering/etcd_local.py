"""Start a real etcd cluster on loopback ports: for the demo, benchmarks and fault tests.

The members are Debian's ``etcd`` server processes (package ``etcd-server``), each with its own
data folder and log. Only ``127.0.0.1`` addresses are used. A production cluster is set up by
its operators instead (see docs/network.md); this module only makes a local one quickly.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rekam.ordering.etcd import EtcdError


class EtcdNotInstalled(EtcdError):
    """The etcd server binary is not on this machine."""


def etcd_binary() -> str:
    """Path of the etcd server; EtcdNotInstalled when missing."""
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").is_file() else None)
    if found is None:
        raise EtcdNotInstalled("etcd is not installed (Debian: apt-get install etcd-server)")
    return found


def free_ports(count: int) -> list[int]:
    """Loopback TCP ports free right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Member:
    """One etcd member: its name, ports, folder and process."""

    name: str
    client_port: int
    peer_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """Its client URL."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """Its peer URL."""
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class LocalEtcdCluster:
    """A loopback etcd cluster of real member processes."""

    folder: Path
    members: list[Member] = field(default_factory=list)
    token: str = ""

    @classmethod
    def create(cls, folder: Path, size: int = 3) -> LocalEtcdCluster:
        """Lay out (but do not start) a new cluster of ``size`` members in ``folder``."""
        etcd_binary()
        folder.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * size)
        members = [
            Member(f"m{i}", ports[2 * i], ports[2 * i + 1], folder / f"m{i}") for i in range(size)
        ]
        return cls(folder, members, "rekam-" + secrets.token_hex(6))

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL."""
        return [m.endpoint for m in self.members]

    def _command(self, member: Member) -> list[str]:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            etcd_binary(),
            "--name", member.name,
            "--data-dir", str(member.folder),
            "--listen-client-urls", member.endpoint,
            "--advertise-client-urls", member.endpoint,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            # One block's transaction deletes each of its pending keys (see MIN_TXN_OPS).
            "--max-txn-ops", "4096",
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            "--snapshot-count", "20000",
            "--quota-backend-bytes", str(2 * 1024**3),
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self, timeout: float = 20.0) -> None:
        """Start every member and wait until the cluster answers writes."""
        for member in self.members:
            self.start_member(member)
        self.wait_writable(timeout)
        self.save()

    def start_member(self, member: Member) -> None:
        """Start (or restart, keeping its data) one member."""
        member.folder.mkdir(parents=True, exist_ok=True)
        logfile = open(self.folder / f"{member.name}.log", "ab")  # noqa: SIM115 - owned by Popen
        member.process = subprocess.Popen(
            self._command(member),
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches Rekam, which stops members
        )
        logfile.close()

    def wait_writable(self, timeout: float = 20.0) -> None:
        """Wait (bounded) until some member accepts a write; EtcdError on timeout."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while time.monotonic() < deadline:
                for endpoint in self.endpoints:
                    try:
                        reply = http.post(
                            endpoint + "/v3/kv/put", json={"key": "X3JlYWR5", "value": ""}
                        )
                        if reply.status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                time.sleep(0.2)
        raise EtcdError(f"the local etcd cluster did not become writable in {timeout:.0f} s")

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one member (SIGKILL: crash it)."""
        process = self.members[index].process
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                process.wait(timeout=10)

    def restart(self, index: int) -> None:
        """Start a stopped member again on its old data."""
        self.start_member(self.members[index])
        self.save()

    def stop(self) -> None:
        """Stop every member this object started (SIGTERM, then SIGKILL after 5 s)."""
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.terminate()
        for member in self.members:
            if member.process is not None:
                try:
                    member.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    member.process.kill()
                    member.process.wait(timeout=5)
        (self.folder / "pids.json").unlink(missing_ok=True)

    def save(self) -> None:
        """Write the members' process ids and endpoints (for ``rekam network stop``)."""
        doc = {
            "endpoints": self.endpoints,
            "pids": [m.process.pid for m in self.members if m.process is not None],
        }
        (self.folder / "pids.json").write_text(json.dumps(doc) + "\n", "utf-8")


def stop_saved(folder: Path) -> int:
    """Stop the members recorded in ``folder/pids.json`` by their ids; returns how many."""
    path = folder / "pids.json"
    if not path.is_file():
        return 0
    stopped = 0
    for pid in json.loads(path.read_text("utf-8")).get("pids", []):
        try:
            os.kill(int(pid), signal.SIGTERM)
            stopped += 1
        except ProcessLookupError:
            pass
    path.unlink()
    return stopped
