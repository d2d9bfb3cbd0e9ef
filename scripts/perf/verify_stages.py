"""CPU time per transaction of each stage of `rekam verify`'s preparation, on one core.

Usage: .venv/bin/python scripts/perf/verify_stages.py DATA_DIR

Decodes every stored transaction, checks its signatures, and pickles and unpickles the
result as the worker processes and the verifier do, timing each with time.process_time().
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

from rekam.ledger.validate import check_signatures, decode_all
from rekam.service.workspace import Workspace


def main() -> None:
    ws = Workspace.open(Path(sys.argv[1]))
    try:
        raws = [raw for block in ws.node.store.iter_blocks(1) for raw in block.txs]
    finally:
        ws.close()
    n = len(raws)
    started = time.process_time()
    decoded = decode_all(raws)
    decode = time.process_time() - started
    started = time.process_time()
    verdicts = check_signatures(decoded, workers=1)
    sigs = time.process_time() - started
    started = time.process_time()
    blob = pickle.dumps((decoded, verdicts))
    dump = time.process_time() - started
    started = time.process_time()
    pickle.loads(blob)  # noqa: S301 - our own bytes, made just above
    load = time.process_time() - started
    print(
        f"{n} txs: decode {1e6 * decode / n:.1f} us, signatures {1e6 * sigs / n:.1f} us, "
        f"pickle {1e6 * dump / n:.1f} us, unpickle {1e6 * load / n:.1f} us per transaction"
    )


if __name__ == "__main__":
    main()
