"""Worker processes for signature checks, shared by the node and by ``rekam verify``.

Ed25519 checks run in libsodium without the GIL, but each one has to take the GIL back when
it returns; a thread busy validating blocks gives it up only every switch interval (5 ms),
so checks on threads crawl while blocks are validated or applied. Worker processes have no
such contention. They only ever run the same ``verify_signature`` rule, so a node that checks
in workers and one that checks on threads accept exactly the same signatures.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from rekam.crypto import verify_many

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")
SigItem = tuple[bytes, bytes, bytes]  # (public key, message, signature)

# What may go wrong with the worker processes themselves (not with the work): a worker died,
# the pool was shut down, starting a process failed. Work is then done in this process.
POOL_FAILURES = (BrokenProcessPool, CancelledError, RuntimeError, OSError)


def _worker_start() -> None:
    # Nothing inherited from the parent becomes garbage in a worker. Frozen, it is left out of
    # collections, which would otherwise write to (and so copy) every inherited page.
    gc.freeze()
    # A forked worker lives for one verification and only decodes and checks: what it builds
    # holds no reference cycles and is freed by reference counting, so the collector's
    # passes over every new batch would find nothing.
    gc.disable()


def worker_count(limit: int) -> int:
    """How many worker processes are worth starting here (0: work in this process)."""
    workers = min(os.cpu_count() or 1, limit)
    # A daemonic process may not have children; forking is only cheap and safe on Linux.
    if (
        workers < 2
        or not sys.platform.startswith("linux")
        or multiprocessing.current_process().daemon
    ):
        return 0
    return workers


def fork_pool(limit: int, *, fresh: bool = False) -> tuple[ProcessPoolExecutor, int] | None:
    """Forked worker processes and their number, or None where they would not help.

    Forking copies the parent as it is, locks included, so it is for a parent whose other
    threads sit idle: ``rekam verify``'s node threads wait on their queues while it runs.
    ``fresh`` forks the workers from a server process started afresh instead
    (``forkserver``), for a server whose other threads may be inside a C library at any
    moment: a worker copied then would find that library's lock held for ever (SQLite's
    memory lock, for one, which the workers need to read the content store). The server
    takes a few hundred milliseconds to start, once per process.
    """
    workers = worker_count(limit)
    if not workers:
        return None
    context = multiprocessing.get_context("forkserver" if fresh else "fork")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start)
    # The processes start with the first task: an empty one starts them now, before the
    # caller reads what it will hand them.
    pool.submit(check_items, [])
    return pool, workers


def check_items(items: Sequence[SigItem]) -> list[bool]:
    """Verify (key, message, signature) items on the calling thread: a worker's task."""
    return verify_many(items, workers=1)


class SignaturePool:
    """Worker processes that check signatures for a long-running node.

    The workers start from a fresh interpreter (the ``forkserver`` method), not as forks of
    the node, whose threads may hold locks at the moment of a fork. Starting takes a moment,
    so it happens in the background on the first large batch (or on ``start``); until the
    workers are up, and if they fail, signatures are checked in this process as before.
    """

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._starting = False
        #: Signatures checked by the workers so far (for status and tests).
        self.checked_in_workers = 0

    def start(self) -> None:
        """Start the workers in the background (idempotent)."""
        with self._lock:
            if self._starting or self._processes < 1:
                return
            self._starting = True
        threading.Thread(target=self._start, name="rekam-sigpool-start", daemon=True).start()

    def _start(self) -> None:
        try:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["rekam.service.workers"])
            pool = ProcessPoolExecutor(self._processes, mp_context=context)
            # One round trip per worker makes sure they are all up before work is sent.
            warm = [pool.submit(check_items, []) for _ in range(self._processes)]
            for future in warm:
                future.result(timeout=60)
        except Exception:
            log.warning("signature worker processes did not start; checking in-process")
            return
        self._pool = pool
        self._ready.set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the workers are up; False when they are not (yet)."""
        return self._ready.wait(timeout)

    def check(self, items: Sequence[SigItem]) -> list[bool]:
        """Verify items in the workers (split evenly) or, failing that, in this process."""
        if len(items) < 64:
            return verify_many(items)  # not worth a round trip
        pool = self._pool
        if pool is None:
            self.start()  # a node that only ever sees small blocks never starts them
            return verify_many(items)
        try:
            parts = submit_parts(pool, check_items, list(items), self._processes)
            verdicts = [ok for part in parts for ok in part.result()]
        except POOL_FAILURES:
            log.warning("signature worker processes failed; checking in-process from now on")
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            return verify_many(items)
        self.checked_in_workers += len(verdicts)
        return verdicts

    def close(self) -> None:
        """Stop the workers."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def submit_parts(
    pool: ProcessPoolExecutor, task: Callable[[list[_T]], _R], items: list[_T], parts: int
) -> list[Future[_R]]:
    """Split ``items`` into ``parts`` contiguous pieces and submit ``task`` on each."""
    size = max(1, -(-len(items) // parts))
    return [pool.submit(task, items[i : i + size]) for i in range(0, len(items), size)]
