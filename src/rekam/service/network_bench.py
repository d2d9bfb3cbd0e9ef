"""``rekam bench network``: throughput and latency of a loopback etcd-ordered network.

The nodes are real ``rekam network run`` processes (one per organisation, each validating
and storing every block in its own SQLite store) over a real 3-member etcd cluster, all on
this machine. Three phases in one run:

* throughput: pre-signed record writes, spread over the three organisations' writers,
  submitted as fast as possible; the committed rate is measured at every node (first submit
  to that node's last commit);
* latency: the same kind of writes offered at a fixed rate; for each, the time from submit to
  its commit at the last of all nodes (p50, p99);
* baseline: the raw etcd put rate for the same bytes with the same client, one put per
  request (64 concurrent) and in the batches the submit path uses.

Writes are submitted the way a node's ``submit`` does it (``pending/<tx id>`` keys in etcd,
concurrent submissions batched into one etcd transaction); each node logs when it committed
each block (``--commit-log``), and the figures are computed from those logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rekam.ledger.tx import Transaction
from rekam.ordering.etcd import SUBMIT_BATCH, EtcdClient, Keys, op_put
from rekam.ordering.etcd_local import LocalEtcdCluster, free_ports
from rekam.service.bench import presigned_writes
from rekam.service.network import NetworkNode, create_network, read_commit_log, read_status
from rekam.service.network_demo import ORGS
from rekam.service.workspace import Actor

SUBMITTERS = 64


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _submit(client: EtcdClient, keys: Keys, txs: list[Transaction]) -> float:
    """Write transactions as pending keys in one etcd transaction; returns the submit time."""
    when = time.time()
    client.txn([], [op_put(keys.tx(tx.tx_id), tx.raw) for tx in txs])
    return when


def _wait_committed(logs: list[Path], ids: list[str], timeout: float) -> list[dict[str, float]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = [read_commit_log(p) for p in logs]
        if all(all(t in s for t in ids) for s in seen):
            return seen
        if time.monotonic() > deadline:
            raise RuntimeError("not every benchmark transaction committed at every node")
        time.sleep(0.2)


def bench_network(
    parent: Path, nodes: int = 3, txs: int = 6000, rate: int = 1000
) -> dict[str, Any]:
    """Run the three phases on a throw-away network under ``parent``."""
    if not 2 <= nodes <= len(ORGS):
        raise ValueError(f"--nodes must be between 2 and {len(ORGS)}")
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-network-", dir=parent))
    cluster = LocalEtcdCluster.create(folder / "etcd", 3)
    processes: list[subprocess.Popen[bytes]] = []
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
        # Set-up in this process: one writer and one patient per organisation, on the chain.
        writers: list[tuple[Actor, str, list[str]]] = []
        opened = [NetworkNode.open(folders[s.org]) for s in specs]
        try:
            for net in opened:
                ws = net.workspace
                org = ws.actor(net.config.org)
                doctor = ws.actor(ws.admin.enrol_member(org, "doctor", "bench").id, "bench")
                patient = ws.admin.register_patient(org, "bench")[0].id
                blobs = [ws.node.blobs.put(os.urandom(600)) for _ in range(8)]
                writers.append((doctor, patient, blobs))
            target = max(n.workspace.node.head.height for n in opened)
            for net in opened:
                net.wait_for_height(target, 30)
            network_id = opened[0].network_id
        finally:
            for net in opened:
                net.close()
        logs = [folders[s.org] / "commits.log" for s in specs]
        for spec, log in zip(specs, logs, strict=True):
            command = [sys.executable, "-m", "rekam.cli.main", "network", "run"]
            processes.append(
                subprocess.Popen(
                    [*command, "-d", str(folders[spec.org]), "--commit-log", str(log)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=open(folders[spec.org] / "node.log", "ab"),  # noqa: SIM115
                )
            )
        deadline = time.monotonic() + 60
        while not all(
            (read_status(folders[s.org]) or {}).get("pid") == p.pid
            for s, p in zip(specs, processes, strict=True)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the node processes did not start")
            time.sleep(0.2)

        def make(count: int) -> list[Transaction]:
            out = []
            for i in range(count):
                doctor, patient, blobs = writers[i % nodes]
                out.extend(
                    presigned_writes(
                        network_id, doctor, patient, blobs, 1, time.time_ns() // 1_000_000
                    )
                )
            return out

        keys = Keys(network_id)
        client = EtcdClient(cluster.endpoints)
        try:
            # Phase 1: throughput.
            batch = make(txs)
            chunks = [batch[i : i + SUBMIT_BATCH] for i in range(0, len(batch), SUBMIT_BATCH)]
            started = time.time()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda c: _submit(client, keys, c), chunks))
            ids = [tx.tx_id for tx in batch]
            seen = _wait_committed(logs, ids, 300)
            per_node = {
                spec.org: round(len(ids) / (max(s[t] for t in ids) - started), 1)
                for spec, s in zip(specs, seen, strict=True)
            }

            # Phase 2: latency at a fixed offered rate, in 10 ms batches.
            seconds = 5
            paced = make(rate * seconds)
            per_tick = max(1, rate // 100)
            submitted: dict[str, float] = {}
            t0 = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                futures = []
                for n, i in enumerate(range(0, len(paced), per_tick)):
                    delay = t0 + n * 0.01 - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    chunk = paced[i : i + per_tick]
                    futures.append((chunk, pool.submit(_submit, client, keys, chunk)))
                for chunk, future in futures:
                    when = future.result()
                    for tx in chunk:
                        submitted[tx.tx_id] = when
            paced_ids = [tx.tx_id for tx in paced]
            seen = _wait_committed(logs, paced_ids, 120)
            latencies = [max(s[t] for s in seen) - submitted[t] for t in paced_ids]
            # Status files are refreshed every half second: give them a moment to agree.
            heads: dict[str, Any] = {}
            for _ in range(20):
                heads = {s.org: (read_status(folders[s.org]) or {}).get("hash") for s in specs}
                if len(set(heads.values())) == 1:
                    break
                time.sleep(0.25)

            # Phase 3: the raw etcd put rate for the same bytes.
            raws = [tx.raw for tx in batch]
            scratch = b"/bench-scratch/"
            started_put = time.perf_counter()
            with ThreadPoolExecutor(SUBMITTERS) as pool:
                list(pool.map(lambda i: client.put(scratch + b"%d" % i, raws[i]), range(len(raws))))
            put_rate = len(raws) / (time.perf_counter() - started_put)
            spans = [
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
                        spans,
                    )
                )
            batched_rate = len(raws) / (time.perf_counter() - started_txn)
        finally:
            client.close()
        return {
            "benchmark": "network",
            "nodes": nodes,
            "node_processes": True,
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
            "heads_equal_after_run": len(set(heads.values())) == 1,
            "cores": os.cpu_count() or 1,
        }
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
