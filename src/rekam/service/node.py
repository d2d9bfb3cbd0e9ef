"""The node: validates and stores blocks, and acknowledges transactions once durable.

A submitted transaction is acknowledged (its future resolves) only after the block holding it
is committed to the store, so an acknowledged write survives a crash. Submitting the same
transaction again returns the stored result; it is never applied twice.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from rekam.crypto import Signer
from rekam.ledger.block import Block, Genesis, cut_block
from rekam.ledger.state import Delta, Stacked
from rekam.ledger.tx import Transaction
from rekam.ledger.validate import (
    BlockResult,
    ChainHead,
    TxResult,
    apply_block,
    check_signatures,
    decode_all,
)
from rekam.service.ports import BlobStore, ChainStore, Orderer
from rekam.service.workers import SignaturePool

log = logging.getLogger(__name__)


def now_ms() -> int:
    """Wall-clock time in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


class NodeError(Exception):
    """Root of the node's own errors."""


class NotOrderedHere(NodeError):
    """A write on a network node's folder opened outside the node: it would fork the chain."""


class NotCommittedError(NodeError):
    """A transaction was not committed in time, or its block could not be stored."""


BlockListener = Callable[[Block, BlockResult], None]
Prepared = tuple[list[Transaction | None], list[tuple[bool, ...]]]
WrappedKey = tuple[str, int, str, bytes]  # (record, version, recipient, wrapped key)


class Node:
    """One node's chain: commits blocks and turns submissions into acknowledged results."""

    def __init__(
        self,
        genesis: Genesis,
        store: ChainStore,
        blobs: BlobStore,
        *,
        clock: Callable[[], int] = now_ms,
        sig_processes: int = 0,
    ) -> None:
        self.genesis = genesis
        self.store = store
        self.blobs = blobs
        self.clock = clock
        # The waiter lock only guards the table of futures, so submitting never waits for a
        # commit.
        self._waiters_lock = threading.Lock()
        self._attachments: dict[str, list[WrappedKey]] = {}
        self._cut_lock = threading.Lock()
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="rekam-prepare")
        # Signature checks in worker processes (see rekam.service.workers); 0: on threads.
        self._sigpool = SignaturePool(sig_processes) if sig_processes > 0 else None
        # (block, its decoded txs and signature verdicts, its outcome, cut by this node)
        self._validate_queue: queue.Queue[
            tuple[Block, Future[Prepared], Future[BlockResult], bool] | None
        ] = queue.Queue()
        self._store_queue: queue.Queue[tuple[Block, BlockResult, Future[BlockResult]] | None] = (
            queue.Queue()
        )
        # Writes of blocks validated but not stored yet, oldest first, by height; the epoch
        # changes when the store refuses a block, so the validator starts again from it.
        self._pending_lock = threading.Lock()
        self._pending: deque[tuple[int, Delta]] = deque()
        self._epoch = 0
        self._pipeline_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._waiters: dict[str, list[Future[TxResult]]] = {}
        self._listeners: list[BlockListener] = []
        self._orderer: Orderer | None = None
        self._orderer_id: str | None = None
        self._orderer_signer: Signer | None = None
        head = store.head()
        if head is None:
            raise NodeError("the store holds no chain; run rekam init first")
        block = store.get_block(head[0])
        assert block is not None
        self._head = ChainHead(head[0], head[1], block.time)
        self._cut_head = self._head  # the orderer's view: may run ahead of the committed head

    # -- wiring ---------------------------------------------------------------------------

    def attach_orderer(self, orderer: Orderer, orderer_id: str, signer: Signer) -> None:
        """Use an orderer; blocks this node cuts are signed by ``orderer_id``'s signer."""
        self._start_pipeline()
        self._orderer = orderer
        self._orderer_id = orderer_id
        self._orderer_signer = signer

    def add_listener(self, listener: BlockListener) -> None:
        """Call ``listener`` after each committed block (for local side effects)."""
        self._listeners.append(listener)

    @property
    def head(self) -> ChainHead:
        """The last committed block."""
        return self._head

    @property
    def network_id(self) -> str:
        """The network this node belongs to."""
        return self.genesis.network_id

    # -- submitting -----------------------------------------------------------------------

    def submit(self, tx: Transaction, wrapped_keys: Sequence[WrappedKey] = ()) -> Future[TxResult]:
        """Queue a transaction; the future resolves with its result once durably committed.

        Only the waiter table is locked here, so submitters never wait for a commit in
        progress; whether the transaction is already in the chain is settled when its batch
        is cut (one bulk lookup on the committing thread). ``wrapped_keys`` (off-chain key
        copies of the content the transaction commits) are stored in the same database
        transaction as its block, and only if the transaction is valid.
        """
        future: Future[TxResult] = Future()
        with self._waiters_lock:
            waiting = self._waiters.get(tx.tx_id)
            self._waiters.setdefault(tx.tx_id, []).append(future)
            if wrapped_keys:
                self._attachments.setdefault(tx.tx_id, []).extend(wrapped_keys)
        if waiting:
            return future  # already queued: the same commit answers both
        if self._orderer is None:
            raise NodeError("this node has no orderer attached")
        try:
            self._orderer.submit(tx)
        except BaseException as exc:
            # Nothing was queued: whoever waits on this transaction learns it now, and a
            # later submission of the same transaction is not mistaken for a queued one.
            with self._waiters_lock:
                waiters = self._waiters.pop(tx.tx_id, [])
                self._attachments.pop(tx.tx_id, None)
            for waiter in waiters:
                if waiter is not future:
                    waiter.set_exception(exc)
            raise
        return future

    def submit_wait(
        self, tx: Transaction, timeout: float = 30.0, wrapped_keys: Sequence[WrappedKey] = ()
    ) -> TxResult:
        """Submit and block until the transaction is committed."""
        try:
            return self.submit(tx, wrapped_keys).result(timeout)
        except TimeoutError:
            raise NotCommittedError("transaction was not committed in time") from None

    def submit_many(self, txs: Iterable[Transaction]) -> list[Future[TxResult]]:
        """Submit several transactions; futures in the same order."""
        return [self.submit(tx) for tx in txs]

    # -- committing -----------------------------------------------------------------------
    #
    # Blocks flow through four stages, as in Fabric: the orderer thread cuts and chains
    # blocks (``cut``); a prepare thread decodes them and checks their signatures in the
    # crypto pool (``deliver``); the validate thread applies the rules to each block in order
    # (``_validate_loop``); the store thread writes each validated block atomically and only
    # then answers its waiters (``_store_loop``). Block n+1 is validated while block n is
    # being written: the validator reads state through the writes of the blocks it validated
    # that the store does not hold yet (``Stacked``). Every check still runs on every block.

    def cut(self, txs: list[Transaction]) -> None:
        """Build and sign a block of ordered transactions and hand it on (the orderer's hook)."""
        assert self._orderer_id is not None and self._orderer_signer is not None
        unique: dict[str, Transaction] = {}
        for tx in txs:
            unique.setdefault(tx.tx_id, tx)
        # A resubmitted transaction that is already in the chain gets its stored result back
        # instead of a second, "duplicate" entry in a new block.
        self.store.prefetch({}, unique)
        for tx_id in [t for t in unique if self.store.tx_seen(t)]:
            stored = self.store.get_tx(tx_id)
            tx = unique.pop(tx_id)
            if stored is not None:
                self._resolve_one(
                    TxResult(tx_id, tx.type, stored.valid, stored.code, stored.authenticated)
                )
        if not unique:
            return
        batch = list(unique.values())
        with self._cut_lock:
            head = self._cut_head
            block = cut_block(
                self.network_id,
                head.height + 1,
                head.hash,
                max(self.clock(), head.time),
                batch,
                self._orderer_id,
                self._orderer_signer,
            )
            self._cut_head = ChainHead(block.height, block.hash, block.time)
        # cut_block computed the header's Merkle root from these very bytes: the validator
        # need not compute it again (every other check of the block still runs).
        self._deliver(block, batch, own_root=True)

    def deliver(self, block: Block, txs: list[Transaction] | None = None) -> Future[BlockResult]:
        """Queue an ordered block: signatures are checked now, rules when its turn comes.

        The future resolves with the block's result once it is stored, or with the error
        that kept it out of the chain.
        """
        return self._deliver(block, txs, own_root=False)

    def _deliver(
        self, block: Block, txs: list[Transaction] | None, *, own_root: bool
    ) -> Future[BlockResult]:
        self._start_pipeline()
        done: Future[BlockResult] = Future()
        prepared = self._prepare_pool.submit(self._prepare, block, txs)
        self._validate_queue.put((block, prepared, done, own_root))
        return done

    def commit(
        self, block: Block, txs: list[Transaction] | None = None, timeout: float | None = None
    ) -> BlockResult:
        """Validate a block against the current state and store it; wait for the outcome."""
        return self.deliver(block, txs).result(timeout)

    def _prepare(self, block: Block, txs: list[Transaction] | None) -> Prepared:
        decoded: list[Transaction | None] = decode_all(block.txs) if txs is None else list(txs)
        pool = self._sigpool
        return decoded, check_signatures(decoded, verify=None if pool is None else pool.check)

    @property
    def signatures_in_workers(self) -> int:
        """How many signatures worker processes have checked for this node so far."""
        return 0 if self._sigpool is None else self._sigpool.checked_in_workers

    def warm_up(self, timeout: float = 30.0) -> bool:
        """Start the signature worker processes now and wait for them (False: not running)."""
        if self._sigpool is None:
            return False
        self._sigpool.start()
        return self._sigpool.wait_ready(timeout)

    def _start_pipeline(self) -> None:
        with self._pipeline_lock:
            if self._threads:
                return
            for target, name in (
                (self._validate_loop, "rekam-validate"),
                (self._store_loop, "rekam-store"),
            ):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _validate_loop(self) -> None:
        head = self._head
        orgs: set[str] = set()
        epoch = -1
        while True:
            item = self._validate_queue.get()
            if item is None:
                self._store_queue.put(None)
                return
            block, prepared, done, own_root = item
            with self._pending_lock:
                if epoch != self._epoch:
                    # First block, or the store refused one: start again from the store.
                    epoch, head = self._epoch, self._head
                    orgs = {key for key, _ in self.store.state_rows("org")}
                pending = list(self._pending)
            try:
                decoded, sig_ok = prepared.result()
                result = apply_block(
                    Stacked(self.store, [delta for _, delta in pending]),
                    self.genesis,
                    head,
                    block,
                    sorted(orgs),
                    txs=decoded,
                    sig_ok=sig_ok,
                    own_root=own_root,
                )
            except Exception as exc:
                log.warning("block %d was refused: %s", block.height, type(exc).__name__)
                self._fail(block, exc)
                done.set_exception(exc)
                with self._cut_lock:
                    self._cut_head = head
                continue
            with self._pending_lock:
                if epoch == self._epoch:
                    self._pending.append((block.height, result.delta))
            head = ChainHead(block.height, block.hash, block.time)
            orgs.update(result.delta.tables["org"])
            self._store_queue.put((block, result, done))

    def _store_loop(self) -> None:
        while True:
            item = self._store_queue.get()
            if item is None:
                return
            block, result, done = item
            try:
                self._store(block, result)
            except Exception as exc:
                # Later blocks were chained on this one: they fail their head check in the
                # store, and the validator and the orderer restart from the stored head.
                log.exception("block %d was not committed", block.height)
                with self._pending_lock:
                    self._pending.clear()
                    self._epoch += 1
                with self._cut_lock:
                    self._cut_head = self._head
                done.set_exception(exc)
            else:
                done.set_result(result)

    def _store(self, block: Block, result: BlockResult) -> None:
        try:
            with self._waiters_lock:
                keys = [
                    key
                    for r in result.results
                    if r.valid
                    for key in self._attachments.get(r.tx_id, ())
                ]
            self.store.append_block(block, result.results, result.delta, keys)
            self._head = ChainHead(block.height, block.hash, block.time)
            with self._pending_lock:
                if self._pending and self._pending[0][0] == block.height:
                    self._pending.popleft()
        except Exception as exc:
            self._fail(block, exc)
            raise
        # Local side effects (shredding, key sharing) finish before anyone is told the
        # block committed, so a caller never sees a grant whose keys are not shared yet.
        for listener in self._listeners:
            try:
                listener(block, result)
            except Exception:
                log.exception("block listener failed at height %d", block.height)
        self._resolve(result)

    def _resolve(self, result: BlockResult) -> None:
        for tx_result in result.results:
            self._resolve_one(tx_result)

    def _resolve_one(self, tx_result: TxResult) -> None:
        with self._waiters_lock:
            futures = self._waiters.pop(tx_result.tx_id, [])
            self._attachments.pop(tx_result.tx_id, None)
        for future in futures:
            if not future.done():
                future.set_result(tx_result)

    def _fail(self, block: Block, exc: Exception) -> None:
        with self._waiters_lock:
            failed: list[Future[TxResult]] = []
            for raw in block.txs:
                try:
                    tx_id = Transaction.decode(raw).tx_id
                except Exception:
                    tx_id = hashlib.sha256(raw).hexdigest()
                failed.extend(self._waiters.pop(tx_id, []))
                self._attachments.pop(tx_id, None)
        error = NotCommittedError(f"block {block.height} was not committed: {type(exc).__name__}")
        for future in failed:
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        """Stop the orderer, commit every block already cut, and release the store."""
        if self._orderer is not None:
            self._orderer.close()
            self._orderer = None
        with self._pipeline_lock:
            if self._threads:
                self._validate_queue.put(None)
                for thread in self._threads:
                    thread.join()
                self._threads = []
        self._prepare_pool.shutdown()
        if self._sigpool is not None:
            self._sigpool.close()
        self.store.close()
