"""cProfile of the node's commit stages run one after another on one thread.

Usage: .venv/bin/python scripts/perf/commit_profile.py [TXS] [SORT]

Founds a throw-away benchmark network (as `rekam bench commit` does), signs TXS record
writes, checks their signatures up front (not profiled: worker processes do that in the
node), then profiles what the node process does per block: cut (Merkle root, header
signature), validate (``apply_block`` on a ``Stacked`` reader, as the validate stage does)
and store (``append_block``). Prints the CPU time per transaction of each stage and the
profile's top functions (sorted by SORT, default ``tottime``).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path
from tempfile import mkdtemp

from rekam.ledger.block import cut_block
from rekam.ledger.state import Stacked
from rekam.ledger.validate import ChainHead, apply_block, check_signatures
from rekam.service import bench


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    sort = sys.argv[2] if len(sys.argv) > 2 else "tottime"
    with bench._network(Path(mkdtemp(prefix="rekam-perf-")), "profile") as (ws, doctor, patient):
        node = ws.node
        txs = bench._signed_writes(ws, doctor, patient, n)
        store = node.store
        orderer_id, signer = node._orderer_id, node._orderer_signer
        assert orderer_id is not None and signer is not None
        head = node.head
        orgs = sorted(key for key, _ in store.state_rows("org"))
        batches = [txs[i : i + bench.BLOCK_TXS] for i in range(0, n, bench.BLOCK_TXS)]
        sigs = [check_signatures(batch) for batch in batches]
        spent = {"cut": 0.0, "validate": 0.0, "store": 0.0}
        profile = cProfile.Profile()
        profile.enable()
        for batch, sig_ok in zip(batches, sigs, strict=True):
            started = time.process_time()
            block = cut_block(
                node.network_id,
                head.height + 1,
                head.hash,
                max(node.clock(), head.time),
                batch,
                orderer_id,
                signer,
            )
            cut = time.process_time()
            result = apply_block(
                Stacked(store, []), node.genesis, head, block, orgs, txs=batch, sig_ok=sig_ok
            )
            validated = time.process_time()
            store.append_block(block, result.results, result.delta, [])
            stored = time.process_time()
            spent["cut"] += cut - started
            spent["validate"] += validated - cut
            spent["store"] += stored - validated
            bad = [r.code for r in result.results if not r.valid]
            if bad:
                raise RuntimeError(f"{len(bad)} transactions were refused: {bad[0]}")
            head = ChainHead(block.height, block.hash, block.time)
        profile.disable()
    print(", ".join(f"{k} {1e6 * v / n:.1f} us/tx" for k, v in spent.items()) + " (profiled)")
    stats = pstats.Stats(profile).sort_stats(sort)
    stats.print_stats(35)
    if len(sys.argv) > 3:
        stats.print_callers(sys.argv[3])


if __name__ == "__main__":
    main()
