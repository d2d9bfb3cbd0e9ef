"""Faults with real etcd members and real node processes, under a steady write load."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.network.harness import assert_consistent, network, wait_for

LOAD = 15.0  # writes per second per node: steady, and light enough for a shared 2-core box


def _etcd_leader(endpoints: list[str]) -> int:
    """Index of the member that leads etcd's Raft right now."""
    with httpx.Client(timeout=2) as http:
        for i, endpoint in enumerate(endpoints):
            reply = http.post(endpoint + "/v3/maintenance/status", json={}).json()
            if reply.get("leader") == reply["header"]["member_id"]:
                return i
    raise AssertionError("no etcd leader")


def _progress(net: object, seconds: float) -> None:
    """Assert that heights grow by at least two blocks within ``seconds``."""
    before = max(net.heights())  # type: ignore[attr-defined]
    wait_for(
        lambda: max(net.heights()) >= before + 2,  # type: ignore[attr-defined]
        seconds,
        "blocks to keep being committed",
    )


def test_kill_one_etcd_member_of_three(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        net.start_nodes(LOAD)
        _progress(net, 20)
        net.cluster.kill(_etcd_leader(net.cluster.endpoints))  # kill -9 the Raft leader
        _progress(net, 30)
        assert_consistent(net)


def test_kill_two_etcd_members_of_five(tmp_path: Path) -> None:
    with network(tmp_path, members=5) as net:
        net.start_nodes(LOAD)
        _progress(net, 20)
        net.cluster.kill(_etcd_leader(net.cluster.endpoints))
        net.cluster.kill(
            next(
                i
                for i, m in enumerate(net.cluster.members)
                if m.process and m.process.poll() is None
            )
        )
        _progress(net, 30)
        assert_consistent(net)


def test_kill_the_block_cutter(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        net.start_nodes(LOAD)
        wait_for(lambda: net.leader() is not None, 20, "a node to cut blocks")
        cutter = net.leader()
        assert cutter is not None
        cutter.kill()
        killed_at = time.monotonic()
        survivors = [n for n in net.nodes if n is not cutter]

        def taken_over() -> bool:
            return any(n.status().get("leading") for n in survivors)

        wait_for(taken_over, 15, "another node to take over cutting")
        took = time.monotonic() - killed_at
        assert took < 10, f"takeover took {took:.1f} s"
        before = max(int(n.status().get("height", 0)) for n in survivors)
        wait_for(
            lambda: min(int(n.status().get("height", 0)) for n in survivors) >= before + 2,
            20,
            "blocks after the takeover",
        )
        # The killed node comes back and catches up.
        cutter.start()
        wait_for(lambda: bool(cutter.status()), 60, "the killed node to start again")
        assert_consistent(net)


def test_sigstop_then_sigcont_catches_up_beyond_the_window(tmp_path: Path) -> None:
    # A window of 5 blocks: a node paused for a few seconds must fetch from peers over HTTP.
    with network(tmp_path, window=5) as net:
        net.start_nodes(LOAD)
        wait_for(lambda: net.leader() is not None, 20, "a node to cut blocks")
        paused = next(n for n in net.nodes if not n.status().get("leading"))
        paused.signal(signal.SIGSTOP)
        others = [n for n in net.nodes if n is not paused]
        start = max(int(n.status().get("height", 0)) for n in others)
        wait_for(
            lambda: min(int(n.status().get("height", 0)) for n in others) >= start + 15,
            40,
            "the others to move well past the window",
        )
        paused.signal(signal.SIGCONT)
        net.stop_load_and_settle()
        assert not paused.status().get("alarms"), paused.status().get("alarms")
        assert_consistent(net)


def test_majority_of_etcd_down_refuses_writes_then_resumes(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        net.start_nodes(LOAD)
        _progress(net, 20)
        net.cluster.kill(0)
        net.cluster.kill(1)
        time.sleep(3)  # writes in flight drain or fail
        frozen = max(net.heights())
        time.sleep(4)
        assert max(net.heights()) == frozen, "blocks were committed without an etcd quorum"

        def refused() -> bool:
            return any(
                (n.status().get("load") or {}).get("refused", {}).get("EtcdUnavailable", 0) > 0
                for n in net.nodes
            )

        wait_for(refused, 20, "writes to be refused with EtcdUnavailable")
        assert any("etcd" in str(n.status().get("etcd_error", "")) for n in net.nodes)
        net.cluster.restart(0)
        net.cluster.restart(1)
        net.cluster.wait_writable(30)
        _progress(net, 40)
        assert_consistent(net)
