"""Benchmarks, each figure beside its baseline measured in the same run on the same machine.

* commit: already-signed record writes submitted to the node and durably committed (every
  signature checked, every rule validated, blocks stored), beside the raw single-core
  Ed25519 verify rate and a plain SQLite insert of the same bytes with the same durability.
* verify: full-chain verification (``rekam verify``) beside the raw Ed25519 verify rate.
* write: end-to-end record writes (FHIR validation, encryption, key wrapping, signing,
  commit) from concurrent writers, beside the commit rate of pre-signed transactions.
* proofs: receipt proof generation and offline verification rates.

Each benchmark founds a throw-away network in a new folder under the given directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nacl.signing

from rekam.ledger.tx import Transaction, make_tx, new_id
from rekam.records import synthetic
from rekam.service.proofs import BlockLog, build_receipt, make_checkpoint, verify_receipt
from rekam.service.workers import worker_count
from rekam.service.workspace import Actor, OrgSpec, Workspace

BLOCK_TXS = 500
SIG_PROCESSES = 2
BENCH_ORGS = (
    OrgSpec("klinik-bench", "clinic", "Bench clinic"),
    OrgSpec("klinik-dua", "clinic", "Second clinic"),
)


def ed25519_verify_rate(messages: list[bytes], seconds: float = 1.0) -> float:
    """Raw single-core PyNaCl verifications per second over messages of the given sizes."""
    key = nacl.signing.SigningKey(bytes(range(32)))
    verify = key.verify_key.verify
    signed = [(m, key.sign(m).signature) for m in messages[:256]]
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for message, signature in signed:
            verify(message, signature)
        done += len(signed)
    return done / (time.perf_counter() - started)


def sqlite_insert_rate(folder: Path, payloads: list[bytes], batch: int) -> float:
    """Rows per second into a plain SQLite table, WAL and synchronous=FULL, one commit per batch."""
    path = folder / "plain.db"
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, raw BLOB NOT NULL)")
        rows = [(hashlib.sha256(p).hexdigest(), p) for p in payloads]
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            with db:
                db.executemany("INSERT INTO t VALUES (?, ?)", rows[i : i + batch])
        return len(rows) / (time.perf_counter() - started)
    finally:
        db.close()
        path.unlink(missing_ok=True)


@contextmanager
def _network(parent: Path, name: str) -> Iterator[tuple[Workspace, Actor, str]]:
    """A throw-away network with one doctor and one patient, fast keystores."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=parent))
    ws = Workspace.create(
        folder,
        "rekam-bench",
        BENCH_ORGS,
        kdf="fast",
        block_max_txs=BLOCK_TXS,
        sig_processes=worker_count(SIG_PROCESSES),
    )
    ws.node.warm_up()  # a running node has its workers up; starting them is not committing
    try:
        org = ws.actor("klinik-bench")
        doctor_id = ws.admin.enrol_member(org, "doctor", "bench-pass").id
        doctor = ws.actor(doctor_id, "bench-pass")
        patient = ws.admin.register_patient(org, "bench-pass")[0].id
        yield ws, doctor, patient
    finally:
        ws.close()
        shutil.rmtree(folder, ignore_errors=True)


def presigned_writes(
    network_id: str, doctor: Actor, patient: str, blobs: list[str], n: int, created: int
) -> list[Transaction]:
    """``n`` signed ``record.write`` transactions by ``doctor`` for ``patient``, taking their
    content hashes in turn from ``blobs`` (content the benchmark stored beforehand)."""
    txs = []
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
        txs.append(
            make_tx(network_id, "record.write", doctor.id, doctor.identity.signer, body, created)
        )
    return txs


def _signed_writes(
    ws: Workspace, doctor: Actor, patient: str, n: int, blobs: int = 16
) -> list[Transaction]:
    """Pre-signed record writes over a pool of ``blobs`` real (random) content blobs.

    The commit benchmark shares 16 blobs: its figure does not include storing content, and
    thousands of blobs would only lengthen the setup by their fsyncs. The verify benchmark
    gives each write a blob of its own, as a real chain has: verify reads and hashes every
    one of them.
    """
    pool = [ws.node.blobs.put(os.urandom(600)) for _ in range(min(blobs, n))]
    return presigned_writes(ws.node.network_id, doctor, patient, pool, n, ws.node.clock())


def _commit_all(ws: Workspace, txs: list[Transaction]) -> float:
    started = time.perf_counter()
    futures = ws.node.submit_many(txs)
    results = [f.result(600) for f in futures]
    seconds = time.perf_counter() - started
    bad = [r.code for r in results if not r.valid]
    if bad:
        raise RuntimeError(f"{len(bad)} benchmark transactions were refused: {bad[0]}")
    return seconds


def _machine() -> dict[str, Any]:
    return {"cores": os.cpu_count() or 1, "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def bench_commit(parent: Path, n: int) -> dict[str, Any]:
    """Committed transactions per second for pre-signed record writes."""
    with _network(parent, "commit") as (ws, doctor, patient):
        txs = _signed_writes(ws, doctor, patient, n)
        start_height = ws.node.head.height
        seconds = _commit_all(ws, txs)
        blocks = ws.node.head.height - start_height
        payloads = [t.raw for t in txs]
        ed = ed25519_verify_rate([t.signed_message for t in txs])
        plain = sqlite_insert_rate(ws.datadir.root, payloads, max(1, n // max(blocks, 1)))
    rate = n / seconds
    return {
        "bench": "commit",
        "txs": n,
        "seconds": round(seconds, 3),
        "tx_per_s": round(rate, 1),
        "blocks": blocks,
        "ed25519_verify_per_s": round(ed, 1),
        "sqlite_plain_insert_per_s": round(plain, 1),
        "ratio_to_ed25519": round(rate / ed, 3),
        **_machine(),
    }


def bench_verify(parent: Path, n: int, runs: int = 3) -> dict[str, Any]:
    """Full-chain verification rate over a chain of about ``n`` transactions.

    The chain is verified as ``rekam verify --data-dir`` verifies it: by a process of its
    own, on the closed data folder, not by the node process that committed it (whose heap
    and idle threads a verifier would not have). The time is the verification's own, as it
    reports it, without the process's start.

    Each record write has content of its own, which verify reads and hashes. The chain is
    verified ``runs`` times, each run followed by its baseline: the raw Ed25519 rate
    over the chain's own signed messages. Each run's ratio compares two figures taken a
    second apart, so a spell in which the shared machine is slower affects both; the figures
    reported are the medians over the runs (each run is listed too).
    """
    with _network(parent, "verify") as (ws, doctor, patient):
        txs = _signed_writes(ws, doctor, patient, n, blobs=n)
        _commit_all(ws, txs)
        messages = [t.signed_message for t in txs]
        folder = ws.datadir.root
        ws.close()
        command = [sys.executable, "-m", "rekam.cli.main", "verify", "--data-dir", str(folder)]
        measured: list[dict[str, Any]] = []
        for _ in range(runs):
            done = subprocess.run([*command, "--json"], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"verification failed: {done.stdout.strip() or done.stderr}")
            report = json.loads(done.stdout)
            ed = ed25519_verify_rate(messages)
            rate = report["txs"] / report["seconds"]
            measured.append(
                {
                    "seconds": round(report["seconds"], 3),
                    "tx_per_s": round(rate, 1),
                    "ed25519_verify_per_s": round(ed, 1),
                    "ratio_to_ed25519": round(rate / ed, 3),
                }
            )
    return {
        "bench": "verify",
        "txs": report["txs"],
        "blocks": report["height"] + 1,
        "runs": measured,
        **{
            name: statistics.median(run[name] for run in measured)
            for name in ("seconds", "tx_per_s", "ed25519_verify_per_s", "ratio_to_ed25519")
        },
        **_machine(),
    }


def bench_write(parent: Path, n: int, writers: int = 32) -> dict[str, Any]:
    """End-to-end record writes per second from concurrent writers."""
    rng = random.Random(11)
    when = datetime.now(UTC)
    with _network(parent, "write") as (ws, doctor, patient):
        resources = [
            synthetic.observation(rng, patient, rng.choice(synthetic.OBSERVATION_KINDS), when)
            for _ in range(n)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(lambda r: ws.records.write(doctor, r, patient=patient), resources))
        seconds = time.perf_counter() - started
        baseline = _commit_all(ws, _signed_writes(ws, doctor, patient, n))
        ed = ed25519_verify_rate([b"x" * 420])
    return {
        "bench": "write",
        "txs": n,
        "writers": writers,
        "seconds": round(seconds, 3),
        "tx_per_s": round(n / seconds, 1),
        "commit_presigned_tx_per_s": round(n / baseline, 1),
        "ed25519_verify_per_s": round(ed, 1),
        **_machine(),
    }


def bench_proofs(parent: Path, n: int, samples: int = 500) -> dict[str, Any]:
    """Receipt generation and offline verification rates on a chain of ``n`` transactions."""
    with _network(parent, "proofs") as (ws, doctor, patient):
        txs = _signed_writes(ws, doctor, patient, n)
        _commit_all(ws, txs)
        store = ws.node.store
        started = time.perf_counter()
        log = BlockLog.build(store)
        build_seconds = time.perf_counter() - started
        checkpoint = make_checkpoint(
            store, ws.node.network_id, {o: i.signer for o, i in ws.org_identities.items()}, log
        )
        picked = random.Random(3).sample(txs, min(samples, len(txs)))
        started = time.perf_counter()
        receipts = [build_receipt(store, t.tx_id, checkpoint, log) for t in picked]
        generate = len(receipts) / (time.perf_counter() - started)
        keys = ws.genesis.doc
        started = time.perf_counter()
        for receipt in receipts:
            verify_receipt(receipt, keys)
        check = len(receipts) / (time.perf_counter() - started)
        started = time.perf_counter()
        for t in picked:
            stored = store.get_tx(t.tx_id)
            assert stored is not None
            log.log.inclusion_proof(stored.height, log.log.size)
        raw_proofs = len(picked) / (time.perf_counter() - started)
        ed = ed25519_verify_rate([b"x" * 420])
    return {
        "bench": "proofs",
        "txs": n,
        "samples": len(picked),
        "block_log_build_seconds": round(build_seconds, 3),
        "receipts_per_s": round(generate, 1),
        "receipt_verify_per_s": round(check, 1),
        "block_inclusion_proofs_per_s": round(raw_proofs, 1),
        "ed25519_verify_per_s": round(ed, 1),
        **_machine(),
    }
