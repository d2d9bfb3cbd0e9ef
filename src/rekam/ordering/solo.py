"""The solo orderer: one thread in the node process that batches transactions into blocks.

It cuts a block when ``max_txs`` transactions are waiting or ``max_wait`` seconds have passed
since the first of them arrived, whichever comes first, and hands the batch to ``cut`` (the
node builds, signs, validates and stores the block there). One thread means one block at a
time: the embedded default has no competing writers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rekam.ledger.tx import Transaction

log = logging.getLogger(__name__)


class SoloOrderer:
    """Batch transactions in arrival order and cut blocks by size or time."""

    def __init__(
        self,
        cut: Callable[[list[Transaction]], None],
        *,
        max_txs: int = 500,
        max_wait: float = 0.02,
    ) -> None:
        self._cut = cut
        self._max_txs = max_txs
        self._max_wait = max_wait
        self._queue: list[Transaction] = []
        self._first_at = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rekam-solo-orderer", daemon=True)
        self._thread.start()

    def submit(self, tx: Transaction) -> None:
        """Queue a transaction for the next block."""
        with self._cond:
            if self._closed:
                raise RuntimeError("orderer is closed")
            if not self._queue:
                self._first_at = time.monotonic()
            self._queue.append(tx)
            if len(self._queue) >= self._max_txs or len(self._queue) == 1:
                self._cond.notify()

    def close(self) -> None:
        """Cut what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _take_batch(self) -> list[Transaction] | None:
        with self._cond:
            while True:
                if self._queue:
                    waited = time.monotonic() - self._first_at
                    if (
                        len(self._queue) >= self._max_txs
                        or waited >= self._max_wait
                        or self._closed
                    ):
                        batch = self._queue[: self._max_txs]
                        del self._queue[: self._max_txs]
                        if self._queue:
                            self._first_at = time.monotonic()
                        return batch
                    self._cond.wait(self._max_wait - waited)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._cut(batch)
            except Exception:
                # The node has already failed the batch's waiters with the error; the orderer
                # keeps serving later batches rather than dying silently.
                log.exception("block cut failed")
