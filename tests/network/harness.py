"""Real etcd members and real node processes on loopback ports, for the network tests.

Every wait is bounded in time; every process started here is stopped by its id at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rekam.ledger.block import Genesis
from rekam.ledger.validate import replay
from rekam.ordering.etcd_local import EtcdNotInstalled, LocalEtcdCluster, etcd_binary, free_ports
from rekam.service.datadir import DataDir
from rekam.service.network import NetworkConfig, create_network, read_status
from rekam.service.workspace import OrgSpec
from rekam.storage import open_store
from tests import pg_server

ORGS = (
    OrgSpec("klinik-a", "clinic", "Clinic A"),
    OrgSpec("klinik-b", "clinic", "Clinic B"),
    OrgSpec("apotek-c", "pharmacy", "Pharmacy C"),
)


def require_etcd() -> None:
    """Skip (fail under CI) when the etcd server is not installed."""
    try:
        etcd_binary()
    except EtcdNotInstalled as exc:
        if pg_server.in_ci():
            pytest.fail(f"etcd is required when CI=true: {exc}")
        pytest.skip(f"etcd is not available and could not be installed: {exc}")


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``check`` until true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class NodeProc:
    """One ``rekam network run`` process."""

    org: str
    folder: Path
    load_rate: float
    process: subprocess.Popen[bytes] | None = None

    @property
    def acked_log(self) -> Path:
        """Where the process appends acknowledged transaction ids."""
        return self.folder / "acked.log"

    def start(self) -> None:
        """Start the process."""
        command = [sys.executable, "-m", "rekam.cli.main", "network", "run", "-d", str(self.folder)]
        if self.load_rate:
            command += ["--load-rate", str(self.load_rate), "--load-log", str(self.acked_log)]
        log = open(self.folder / "node.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def signal(self, sig: int) -> None:
        """Send a signal to the process."""
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s) and reap."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL and reap."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def status(self) -> dict[str, Any]:
        """The process's last status file (fresh within 3 s), or {}."""
        status = read_status(self.folder)
        if status is None or time.time() - float(status.get("time", 0)) > 3:
            return {}
        if self.process is None or status.get("pid") != self.process.pid:
            return {}  # written by an earlier process of this node
        return status

    def acked(self) -> list[str]:
        """Transaction ids this node acknowledged."""
        if not self.acked_log.is_file():
            return []
        return [line for line in self.acked_log.read_text("utf-8").split("\n") if line]


@dataclass
class Network:
    """An etcd cluster and node folders; node processes are started on demand."""

    cluster: LocalEtcdCluster
    folders: dict[str, Path]
    nodes: list[NodeProc] = field(default_factory=list)

    def start_nodes(self, load_rate: float) -> None:
        """Start one process per node, each generating a steady write load."""
        for org, folder in self.folders.items():
            node = NodeProc(org, folder, load_rate)
            node.start()
            self.nodes.append(node)
        wait_for(
            lambda: all((n.status().get("load") or {}).get("acked", 0) > 0 for n in self.nodes),
            90,
            "every node to start and acknowledge writes",
        )

    def heights(self) -> list[int]:
        """Every running node's committed height (-1 when its status is stale)."""
        return [int(n.status().get("height", -1)) for n in self.nodes]

    def leader(self) -> NodeProc | None:
        """The node that says it cuts blocks."""
        for node in self.nodes:
            if node.status().get("leading"):
                return node
        return None

    def converge(self, timeout: float = 60, stable: float = 0.0) -> None:
        """Wait until every running node reports the same head (unchanged for ``stable`` s)."""
        seen: dict[str, Any] = {"head": None, "since": 0.0}

        def same() -> bool:
            statuses = [n.status() for n in self.nodes if n.process and n.process.poll() is None]
            heads = {(s.get("height"), s.get("hash")) for s in statuses}
            if len(heads) != 1 or not all(statuses):
                seen["head"] = None
                return False
            if heads != seen["head"]:
                seen["head"], seen["since"] = heads, time.monotonic()
            return time.monotonic() - seen["since"] >= stable

        wait_for(same, timeout, "every node to report the same head")

    def stop_load_and_settle(self, timeout: float = 60) -> None:
        """Stop every node's load, let in-flight writes finish, and wait for equal heads."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.signal(signal.SIGUSR1)
        # Writes in flight (a retried submission waits up to its deadline) finish first.
        self.converge(timeout, stable=3.0)


def chain_of(folder: Path) -> tuple[int, str, list[str]]:
    """A stopped node's (height, head hash, every tx id in block order), fully re-validated.

    The blocks are replayed from genesis with every signature and rule checked; the replayed
    head must equal the stored head.
    """
    datadir = DataDir(folder)
    genesis = Genesis.from_bytes(datadir.genesis_path.read_bytes())
    store = open_store(datadir.store_url())
    try:
        head = store.head()
        assert head is not None
        blocks = list(store.iter_blocks(1))
        _, replayed, results = replay(genesis, blocks)
        assert (replayed.height, replayed.hash) == head, "stored head differs from the replay"
        ids = [r.tx_id for result in results for r in result.results if r.valid]
        return head[0], head[1], ids
    finally:
        store.close()


@contextmanager
def network(
    tmp: Path, *, members: int = 3, window: int = 1000, checkpoint_every: int = 20
) -> Iterator[Network]:
    """A started etcd cluster and three node folders; everything stopped afterwards."""
    require_etcd()
    cluster = LocalEtcdCluster.create(tmp / "etcd", members)
    net = Network(cluster, {})
    try:
        cluster.start()
        ports = free_ports(len(ORGS))
        net.folders = create_network(
            tmp / "nodes",
            "rekam-test",
            ORGS,
            cluster.endpoints,
            [f"127.0.0.1:{p}" for p in ports],
            kdf="fast",
            window=window,
        )
        for folder in net.folders.values():
            config = NetworkConfig.load(folder)
            config.checkpoint_every = checkpoint_every
            config.save(folder)
        yield net
    finally:
        for node in net.nodes:
            node.stop()
        cluster.stop()


def stopped_chains(net: Network) -> dict[str, tuple[int, str, list[str]]]:
    """Stop every node and return each one's re-validated chain."""
    for node in net.nodes:
        node.stop()
    return {org: chain_of(folder) for org, folder in net.folders.items()}


def assert_consistent(net: Network) -> dict[str, tuple[int, str, list[str]]]:
    """Equal heads everywhere, no transaction twice, every acknowledged write in every chain."""
    net.stop_load_and_settle()
    chains = stopped_chains(net)
    heads = {(h, x) for h, x, _ in chains.values()}
    assert len(heads) == 1, f"heads differ: {heads}"
    ids = next(iter(chains.values()))[2]
    assert len(ids) == len(set(ids)), "a transaction was committed twice"
    acked = {t for n in net.nodes for t in n.acked()}
    assert acked, "no write was acknowledged"
    missing = acked - set(ids)
    assert not missing, f"{len(missing)} acknowledged writes are not in the chain"
    return chains


def dump_logs(net: Network) -> str:
    """The tail of each node log (for assertion messages)."""
    out = []
    for node in net.nodes:
        path = node.folder / "node.log"
        if path.is_file():
            out.append(f"--- {node.org}\n" + path.read_text("utf-8", "replace")[-2000:])
    return "\n".join(out)
