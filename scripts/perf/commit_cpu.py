"""CPU time per committed transaction, in the node process and in its signature workers.

Usage: .venv/bin/python scripts/perf/commit_cpu.py [TXS]

Founds a throw-away benchmark network (as `rekam bench commit` does), commits TXS pre-signed
record writes and prints wall time and CPU time per transaction: the node process from
time.process_time(), the signature worker processes from /proc/<pid>/stat (Linux only).
CPU time per transaction hardly moves on a busy machine, unlike wall time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from tempfile import mkdtemp

from rekam.service import bench


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with bench._network(Path(mkdtemp(prefix="rekam-perf-")), "cpu") as (ws, doctor, patient):
        txs = bench._signed_writes(ws, doctor, patient, n)
        sigpool = ws.node._sigpool
        pool = sigpool._pool if sigpool is not None else None
        pids = list(pool._processes) if pool is not None else []
        workers_before = sum(_proc_cpu(p) for p in pids)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        bench._commit_all(ws, txs)
        main_cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        workers = sum(_proc_cpu(p) for p in pids) - workers_before
    print(
        f"{n} txs in {wall:.2f}s: node process {1e6 * main_cpu / n:.0f} us/tx, "
        f"signature workers {1e6 * workers / n:.0f} us/tx, "
        f"total {1e6 * (main_cpu + workers) / n:.0f} us/tx of CPU"
    )


if __name__ == "__main__":
    main()
