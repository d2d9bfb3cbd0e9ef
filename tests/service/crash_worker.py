"""A writer process for the crash test: commits record writes until it is killed.

Usage: ``python crash_worker.py DIR``. DIR is an existing network folder holding
``crash-worker.json`` (written by the test): the doctor's id and passphrase, the patient's
id, and the digests and sizes of blobs already stored in the folder, so the record writes
point at real content and the chain verifies.

Several threads each sign a batch of ``record.write`` transactions, submit it with
``submit_many`` and wait for the futures. For every transaction whose future resolves valid
(the node acknowledges only once its block is durably committed), the tx id is written to
stdout as one line, unbuffered: that is the acknowledgement the test holds the node to. The
first line is ``ready`` once the node is open. Anything unexpected goes to stderr and exits
non-zero, so the test can tell a worker bug from a kill.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import traceback
from pathlib import Path

from rekam.ledger.tx import make_tx, new_id
from rekam.service.workspace import Workspace

CONFIG = "crash-worker.json"
BATCH = 50
WRITERS = 4

_out = threading.Lock()


def emit(line: str, fd: int = 1) -> None:
    """One whole line in one write (atomic on a pipe or file), flushed to the OS at once."""
    data = (line + "\n").encode("ascii")
    with _out:
        while data:
            data = data[os.write(fd, data) :]


def main(root: Path) -> None:
    config = json.loads((root / CONFIG).read_text("utf-8"))
    ws = Workspace.open(root)
    doctor = ws.actor(config["doctor"], config["passphrase"])
    patient = config["patient"]
    contents = itertools.cycle(config["contents"])
    contents_lock = threading.Lock()
    failed = threading.Event()

    def write_loop() -> None:
        try:
            while True:
                with contents_lock:
                    picked = [next(contents) for _ in range(BATCH)]
                now = ws.node.clock()
                txs = [
                    make_tx(
                        ws.node.network_id,
                        "record.write",
                        doctor.id,
                        doctor.identity.signer,
                        {
                            "record": new_id("record"),
                            "version": 1,
                            "patient": patient,
                            "resource_type": "Observation",
                            "content_hash": digest,
                            "content_size": size,
                            "basis": "organisation",
                            "basis_ref": None,
                        },
                        now,
                    )
                    for digest, size in picked
                ]
                for tx, future in zip(txs, ws.node.submit_many(txs), strict=True):
                    result = future.result(60)
                    if result.valid:
                        emit(tx.tx_id)
                    else:
                        emit(f"refused {tx.tx_id} {result.code}", fd=2)
        except BaseException:
            emit(traceback.format_exc(), fd=2)
            failed.set()

    threads = [threading.Thread(target=write_loop, daemon=True) for _ in range(WRITERS)]
    emit("ready")
    for thread in threads:
        thread.start()
    failed.wait()
    sys.exit(3)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
