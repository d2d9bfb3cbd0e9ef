"""``rekam bench network``: throughput and latency of a loopback etcd-ordered network.

Three phases in one run, on one machine:

* throughput: pre-signed record writes submitted as fast as the submitters can, spread over
  the nodes; the committed rate is measured at every node (first submit to last commit);
* latency: the same kind of writes offered at a fixed rate; for each, the time from submit to
  its commit at the last of all nodes (p50, p99);
* baseline: the raw etcd put rate for the same bytes, with the same client and concurrency
  (one put per request) and in the batches the orderer's submit path uses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rekam.ledger.block import Block
from rekam.ledger.tx import Transaction, make_tx, new_id
from rekam.ledger.validate import BlockResult
from rekam.ordering.etcd import SUBMIT_BATCH, EtcdClient, op_put
from rekam.ordering.etcd_local import LocalEtcdCluster, free_ports
from rekam.service.network import NetworkNode, create_network
from rekam.service.network_demo import ORGS
from rekam.service.workspace import Actor

SUBMITTERS = 64


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _CommitClock:
    """When each transaction committed at each node."""

    def __init__(self, count: int) -> None:
        self.at: list[dict[str, float]] = [{} for _ in range(count)]
        self._lock = threading.Lock()

    def listener(self, index: int) -> Any:
        def on_block(block: Block, result: BlockResult) -> None:
            now = time.perf_counter()
            with self._lock:
                for r in result.results:
                    self.at[index].setdefault(r.tx_id, now)

        return on_block

    def all_committed(self, tx_ids: list[str]) -> bool:
        with self._lock:
            return all(t in seen for seen in self.at for t in tx_ids)


def _writes(
    net: NetworkNode, doctor: Actor, patient: str, blobs: list[str], n: int
) -> list[Transaction]:
    node = net.workspace.node
    out = []
    for i in range(n):
        body = {
            "record": new_id("record"),
            "version": 1,
            "patient": patient,
            "resource_type": "Observation",
            "content_hash": blobs[i % len(blobs)],
            "content_size": 600,
            "basis": "organisation",
            "basis_ref": None,
        }
        out.append(
            make_tx(
                node.network_id,
                "record.write",
                doctor.id,
                doctor.identity.signer,
                body,
                node.clock(),
            )
        )
    return out


def bench_network(
    parent: Path, nodes: int = 3, txs: int = 6000, rate: int = 1000
) -> dict[str, Any]:
    """Run the three phases on a throw-away network under ``parent``."""
    if not 2 <= nodes <= len(ORGS):
        raise ValueError(f"--nodes must be between 2 and {len(ORGS)}")
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-network-", dir=parent))
    cluster = LocalEtcdCluster.create(folder / "etcd", 3)
    opened: list[NetworkNode] = []
    try:
        cluster.start()
        specs = ORGS[:nodes]
        ports = free_ports(nodes)
        folders = create_network(
            folder / "nodes",
            "rekam-bench",
            specs,
            cluster.endpoints,
            [f"127.0.0.1:{p}" for p in ports],
            kdf="fast",
        )
        opened = [NetworkNode.open(folders[s.org]) for s in specs]
        clock = _CommitClock(nodes)
        for i, net in enumerate(opened):
            net.workspace.node.add_listener(clock.listener(i))
        # One writer per node, each writing for a patient of its own organisation.
        writers = []
        for net in opened:
            ws = net.workspace
            org = ws.actor(net.config.org)
            doctor = ws.actor(ws.admin.enrol_member(org, "doctor", "bench").id, "bench")
            patient = ws.admin.register_patient(org, "bench")[0].id
            blobs = [ws.node.blobs.put(os.urandom(600)) for _ in range(8)]
            writers.append((net, doctor, patient, blobs))
        target = max(n.workspace.node.head.height for n in opened)
        for net in opened:
            net.wait_for_height(target, 30)

        def make(count: int) -> list[tuple[NetworkNode, Transaction]]:
            per = [_writes(n, d, p, b, count // nodes + 1) for n, d, p, b in writers]
            mixed = [(writers[i % nodes][0], per[i % nodes][i // nodes]) for i in range(count)]
            return mixed

        # Phase 1: throughput.
        batch = make(txs)
        submitted: dict[str, float] = {}
        started = time.perf_counter()

        def send(item: tuple[NetworkNode, Transaction]) -> None:
            net, tx = item
            submitted[tx.tx_id] = time.perf_counter()
            net.workspace.node.submit(tx)

        with ThreadPoolExecutor(SUBMITTERS) as pool:
            list(pool.map(send, batch))
        ids = [tx.tx_id for _, tx in batch]
        deadline = time.monotonic() + 300
        while not clock.all_committed(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not clock.all_committed(ids):
            raise RuntimeError("not every benchmark transaction committed at every node")
        per_node = {}
        for i, net in enumerate(opened):
            last = max(clock.at[i][t] for t in ids)
            per_node[net.config.org] = round(len(ids) / (last - started), 1)

        # Phase 2: latency at a fixed offered rate.
        seconds = 5
        paced = make(rate * seconds)
        paced_sub: dict[str, float] = {}
        with ThreadPoolExecutor(SUBMITTERS) as pool:
            t0 = time.perf_counter()
            for i, (net, tx) in enumerate(paced):
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                paced_sub[tx.tx_id] = time.perf_counter()
                pool.submit(net.workspace.node.submit, tx)
        paced_ids = [tx.tx_id for _, tx in paced]
        deadline = time.monotonic() + 120
        while not clock.all_committed(paced_ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        latencies = [
            max(clock.at[i][t] for i in range(nodes)) - paced_sub[t]
            for t in paced_ids
            if all(t in clock.at[i] for i in range(nodes))
        ]
        heads = {n.config.org: n.workspace.node.head.hash for n in opened}

        # Phase 3: the raw etcd put rate for the same bytes.
        raws = [tx.raw for _, tx in batch]
        client = EtcdClient(cluster.endpoints)
        try:
            scratch = b"/bench-scratch/"
            started_put = time.perf_counter()
            with ThreadPoolExecutor(SUBMITTERS) as pool:
                list(pool.map(lambda i: client.put(scratch + b"%d" % i, raws[i]), range(len(raws))))
            put_rate = len(raws) / (time.perf_counter() - started_put)
            chunks = [
                range(i, min(i + SUBMIT_BATCH, len(raws)))
                for i in range(0, len(raws), SUBMIT_BATCH)
            ]
            started_txn = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(
                    pool.map(
                        lambda c: client.txn(
                            [], [op_put(scratch + b"b%d" % i, raws[i]) for i in c]
                        ),
                        chunks,
                    )
                )
            batched_rate = len(raws) / (time.perf_counter() - started_txn)
        finally:
            client.close()
        return {
            "benchmark": "network",
            "nodes": nodes,
            "etcd_members": 3,
            "txs": len(ids),
            "tx_bytes_mean": round(sum(len(r) for r in raws) / len(raws)),
            "committed_tx_per_s_at_each_node": per_node,
            "committed_tx_per_s_min": min(per_node.values()),
            "latency_offered_tx_per_s": rate,
            "latency_txs": len(latencies),
            "latency_p50_ms": round(1000 * _percentile(latencies, 0.50), 1),
            "latency_p99_ms": round(1000 * _percentile(latencies, 0.99), 1),
            "etcd_put_per_s_same_bytes": round(put_rate, 1),
            "etcd_batched_put_per_s_same_bytes": round(batched_rate, 1),
            "heads_equal": len(set(heads.values())) == 1,
            "cores": os.cpu_count() or 1,
        }
    finally:
        for net in opened:
            net.close()
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
