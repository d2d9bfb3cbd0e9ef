"""An acknowledged write survives the writer being killed at any moment.

A worker process (crash_worker.py) opens a network folder and commits record writes from
several threads, printing each transaction id once its future resolves valid. The test kills
it with SIGKILL after a random delay, then opens the folder (the kernel released the folder
lock), checks that every acknowledged transaction is committed and valid and that the chain
never shrank, and starts the next worker. After all the cycles the whole chain verifies.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rekam.service.verify import verify_chain
from rekam.service.workspace import OrgSpec, Workspace

WORKER = Path(__file__).with_name("crash_worker.py")
CYCLES = 12
CONTENTS = 16  # blobs shared by all the writes (content hashes may repeat across records)
READY_TIMEOUT = 30.0
# At least a full batch must have been acknowledged over the run, or the test proved little.
ACK_FLOOR = 50
TX_ID = re.compile(rb"[0-9a-f]{64}")


def _make_network(folder: Path) -> None:
    """Found the network, enrol a doctor, register a patient and store some content."""
    with Workspace.create(
        folder, "rekam-crash", (OrgSpec("klinik-crash", "clinic", "Crash clinic"),), kdf="fast"
    ) as ws:
        org = ws.actor("klinik-crash")
        doctor = ws.admin.enrol_member(org, "doctor", "crash-doctor").id
        patient = ws.admin.register_patient(org, "crash-patient")[0].id
        contents = []
        for _ in range(CONTENTS):
            data = os.urandom(600)
            contents.append([ws.node.blobs.put(data), len(data)])
    config = {
        "doctor": doctor,
        "passphrase": "crash-doctor",
        "patient": patient,
        "contents": contents,
    }
    (folder / "crash-worker.json").write_text(json.dumps(config), "utf-8")


def _wait_ready(proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not out.read_bytes().startswith(b"ready\n"):
        if proc.poll() is not None:
            pytest.fail(
                f"the worker exited with {proc.returncode} before it was ready:\n{err.read_text()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"the worker was not ready within {READY_TIMEOUT}s:\n{err.read_text()}")
        time.sleep(0.02)


def _acknowledged(out: Path) -> list[str]:
    """The tx ids on complete lines (a line cut off by the kill is not an acknowledgement)."""
    *lines, _partial = out.read_bytes().split(b"\n")
    assert lines[0] == b"ready"
    for line in lines[1:]:
        assert TX_ID.fullmatch(line), f"unexpected worker output {line[:80]!r}"
    return [line.decode("ascii") for line in lines[1:]]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_acknowledged_writes_survive_sigkill(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    folder = tmp_path / "node"
    _make_network(folder)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    context = f"(seed {seed})"
    acked: set[str] = set()
    heights: list[int] = []
    for cycle in range(CYCLES):
        out, err = tmp_path / f"worker-{cycle}.out", tmp_path / f"worker-{cycle}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(folder)], stdout=stdout, stderr=stderr
            )
        processes.append(proc)
        try:
            _wait_ready(proc, out, err)
            time.sleep(rng.uniform(0.3, 1.5))
            alive = proc.poll() is None
        finally:
            proc.kill()
            proc.wait(30)
        errors = err.read_text("utf-8", "replace")
        assert alive, f"cycle {cycle}: the worker died by itself {context}:\n{errors}"
        assert "refused" not in errors and "Traceback" not in errors, (
            f"cycle {cycle} {context}:\n{errors}"
        )
        new = _acknowledged(out)
        assert not acked.intersection(new), (
            f"cycle {cycle}: a transaction was acknowledged twice {context}"
        )
        acked.update(new)

        # The dead worker's folder lock is gone: open without waiting for it.
        with Workspace.open(folder, wait_for_lock=False) as ws:
            head = ws.node.head.height
            store = ws.node.store
            for tx_id in new:
                stored = store.get_tx(tx_id)
                assert stored is not None, f"cycle {cycle}: acknowledged {tx_id} was lost {context}"
                assert stored.valid and stored.authenticated, (
                    f"cycle {cycle}: {tx_id} {stored.code} {context}"
                )
                assert stored.height <= head
        assert not heights or head >= heights[-1], (
            f"the chain shrank: {heights} then {head} {context}"
        )
        heights.append(head)

    assert len(acked) >= ACK_FLOOR, (
        f"only {len(acked)} writes were acknowledged in {CYCLES} cycles {context}"
    )
    with Workspace.open(folder, wait_for_lock=False) as ws:
        store = ws.node.store
        # Nothing acknowledged in an earlier cycle went missing in a later recovery.
        committed = {
            r.tx_id
            for h in range(1, ws.node.head.height + 1)
            for r in store.block_txs(h)
            if r.valid
        }
        assert not acked - committed, (
            f"{len(acked - committed)} acknowledged writes were lost {context}"
        )
        report = verify_chain(store, ws.genesis, ws.node.blobs)
        assert ws.node.head.height >= heights[-1]
    assert report.ok, f"{report.problem} {context}"
    assert report.txs >= len(acked)
