"""CPU time per transaction of `rekam verify`, in the verifying process and in its workers.

Usage: .venv/bin/python scripts/perf/verify_cpu.py [TXS] [RUNS]

Founds a throw-away benchmark network (as `rekam bench verify` does), commits TXS pre-signed
record writes, then verifies the whole chain RUNS times (default 3), printing for each run
the wall time and the CPU time per transaction: the verifying process from
time.process_time(), its forked worker processes from resource.getrusage(RUSAGE_CHILDREN)
(they are waited for before verify_chain returns). CPU time moves much less than wall time
on a busy machine.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from tempfile import mkdtemp

from rekam.service import bench
from rekam.service.verify import verify_chain


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with bench._network(Path(mkdtemp(prefix="rekam-perf-")), "verify-cpu") as (ws, doctor, patient):
        bench._commit_all(ws, bench._signed_writes(ws, doctor, patient, n, blobs=n))
        for _ in range(runs):
            children, cpu, wall = _children_cpu(), time.process_time(), time.perf_counter()
            report = verify_chain(ws.node.store, ws.genesis, ws.node.blobs)
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            children = _children_cpu() - children
            if not report.ok:
                raise RuntimeError(f"verification failed: {report.problem}")
            txs = report.txs
            print(
                f"{txs} txs in {wall:.2f}s: verifying process {1e6 * cpu / txs:.0f} us/tx, "
                f"workers {1e6 * children / txs:.0f} us/tx, "
                f"total {1e6 * (cpu + children) / txs:.0f} us/tx of CPU"
            )


if __name__ == "__main__":
    main()
