"""Verify one data folder once, in this process: wall time and CPU per transaction.

Usage: .venv/bin/python scripts/perf/verify_once.py DATA_DIR

Prints the verification's own time in ms, then the CPU time per transaction of this (the
verifying) process and of its worker processes. Run it alternately on one folder with two
versions of the code (``PYTHONPATH=<worktree>/src``) to compare them on the same chain.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from pathlib import Path

from rekam.service.verify import verify_chain
from rekam.service.workspace import Workspace


def main() -> None:
    ws = Workspace.open(Path(sys.argv[1]))
    try:
        started = time.process_time()
        report = verify_chain(ws.node.store, ws.genesis, ws.node.blobs)
        own = time.process_time() - started
    finally:
        ws.close()
    if not report.ok:
        raise SystemExit(f"verification failed: {report.problem}")
    # The workers are let go without waiting once their last part is back: reap them, so
    # that their CPU time is counted.
    while multiprocessing.active_children():
        time.sleep(0.01)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = children.ru_utime + children.ru_stime
    per_tx = 1e6 / report.txs
    print(
        f"{report.seconds * 1000:.0f} ms, {report.txs} txs: verifying process "
        f"{own * per_tx:.1f} us/tx, workers {workers * per_tx:.1f} us/tx"
    )


if __name__ == "__main__":
    main()
