"""Verify a node's data without trusting it, and rebuild state from blocks.

``verify_chain`` re-derives everything from the blocks: the hash chain, every Merkle root,
every block and transaction signature, every transaction's validity, every state table row,
the content hashes of stored blobs, and the stored checkpoint. It stops at the first problem
and names where it is. Transactions are decoded and their signatures checked in batches,
ahead of the blocks being applied and in worker processes where possible (see
``_Preparation``); the stored state is read while waiting for them.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import operator
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rekam.crypto import verify_signature
from rekam.encoding import b64d
from rekam.ledger._errors import InvalidBlockError
from rekam.ledger.block import Block, Genesis, genesis_block
from rekam.ledger.state import TABLES, Delta, MemoryState
from rekam.ledger.tx import Transaction
from rekam.ledger.validate import (
    ChainHead,
    TxResult,
    apply_block,
    check_signatures,
    decode_all,
    genesis_delta,
)
from rekam.service.ports import BlobStore, ChainStore, TxRecord
from rekam.service.proofs import BlockLog
from rekam.service.workers import POOL_FAILURES, fork_pool, submit_parts

if TYPE_CHECKING:
    from rekam.service.workspace import Workspace

# Replay reads blocks in batches, each closed at whichever limit it reaches first, and
# prepares (decodes and signature-checks) up to PREPARE_AHEAD batches ahead of the one it
# applies. Preparing needs no state, so on Linux it runs in up to MAX_WORKERS forked worker
# processes while this process applies blocks. Threads would not do: each signature check
# has to take the GIL back afterwards, and a thread busy applying blocks gives it up only
# every 5 ms (the switch interval), so checks on threads crawl while blocks are applied.
BATCH_BLOCKS = 32
BATCH_TXS = 512
PREPARE_AHEAD = 3
MAX_WORKERS = 8
# Stored state rows read per piece while replay waits for prepared batches.
STATE_ROWS_STEP = 250
# Rows compared per piece, once the stored state is read (about as long as reading a piece).
COMPARE_STEP = 1000


@dataclass
class VerifyReport:
    """What verification checked, and the first problem found (None when all is well)."""

    network: str = ""
    height: int = 0
    head: str = ""
    blocks: int = 0
    txs: int = 0
    invalid_txs: int = 0
    signatures: int = 0
    state_rows: int = 0
    blobs: int = 0
    erased: int = 0
    not_held: int = 0  # content a network node is not meant to hold (held_content_only)
    checkpoint: int | None = None
    seconds: float = 0.0
    problem: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    # Every signing key each organisation has held, for signatures made before a rotation.
    org_keys: dict[str, set[str]] = field(default_factory=dict)
    checkpoints: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was wrong."""
        return self.problem is None

    def summary(self) -> str:
        """One line for humans."""
        if not self.ok:
            return f"FAILED: {self.problem}"
        checkpoint = f", checkpoint at {self.checkpoint}" if self.checkpoint is not None else ""
        not_held = f" ({self.not_held} more not held by this node)" if self.not_held else ""
        return (
            f"OK: {self.blocks} blocks to height {self.height} (head {self.head[:16]}), "
            f"{self.txs} transactions ({self.invalid_txs} invalid by rule), "
            f"{self.signatures} signatures, {self.state_rows} state rows, "
            f"{self.blobs} blobs{not_held}, {self.erased} erased{checkpoint} "
            f"in {self.seconds:.2f}s"
        )


class VerifyFailure(Exception):
    """The first problem found, naming the block, transaction, row or blob."""


StoredBlock = tuple[Block, list[TxRecord]]  # a block and the stored results of its txs
_T = TypeVar("_T")


def _batches(store: ChainStore, start: int, end: int) -> Iterator[list[StoredBlock]]:
    """The stored blocks from ``start`` up to (excluding) ``end``, in batches for preparing.

    The first two and the last block each make a batch of their own. The workers start on
    the first blocks while the next are read; the last block's transactions are the only ones
    applied with nothing left to prepare beside them, so that stretch is one block long.
    Each batch goes as soon as its last block is read: the last block is known by its height,
    not by reading past it (a read of up to 64 blocks, which held up each batch at the start).
    """
    batch: list[StoredBlock] = []
    txs = 0
    alone = 2  # blocks still to come alone at the start
    for current in store.iter_block_records(start, end):
        last = current[0].height == end - 1
        if last and batch:
            yield batch
            batch, txs = [], 0
        batch.append(current)
        txs += len(current[0].txs)
        if alone or last or len(batch) >= BATCH_BLOCKS or txs >= BATCH_TXS:
            yield batch
            batch, txs, alone = [], 0, max(alone - 1, 0)
    if batch:  # the store held fewer blocks than its head said: replay names the problem
        yield batch


# What a worker sends back for its part of a batch: each transaction's id (None where the
# bytes are malformed) and its signature results. The verifier holds the bytes already and
# rebuilds the decoded transactions from them (Transaction.accepted), so they do not travel
# back through the pipe.
WorkerResult = tuple[list[str | None], list[tuple[bool, ...]]]


def _prepare_txs(raws: list[bytes]) -> WorkerResult:
    """Decode envelopes and check their signatures on this thread: a worker process's task."""
    decoded = decode_all(raws)
    ids = [None if tx is None else tx.tx_id for tx in decoded]
    return ids, check_signatures(decoded, workers=1)


def _scan_blobs(blobs: BlobStore, part: tuple[int, int]) -> dict[str, int]:
    """Hash every blob in one part of the store: a worker process's task."""
    return {digest: _verdict(digest, data) for digest, data in blobs.scan(part)}


class _BlobScan:
    """Every stored blob read and hashed by the worker processes, each a part of the store.

    The parts are handed out after the chain's last batch of transactions, so the workers
    hash while the verifier applies that batch, when they would otherwise have nothing to
    do. A store that cannot be pickled (a network node's, which fetches from its peers) is
    not scanned: its blobs are read after replay, as are all blobs where there are no
    workers.
    """

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._parts: list[Future[dict[str, int]]] = []

    def submit(self, pool: ProcessPoolExecutor, parts: int) -> None:
        """Hand the parts of the store to the workers."""
        if not _picklable(self._blobs):
            return
        try:
            self._parts = [
                pool.submit(_scan_blobs, self._blobs, part) for part in self._blobs.partition(parts)
            ]
        except POOL_FAILURES:
            self._parts = []

    def verdicts(self) -> dict[str, int] | None:
        """A verdict on every stored blob, or None when the workers did not scan them all."""
        verdicts: dict[str, int] = {}
        try:
            for part in self._parts:
                verdicts.update(part.result())
        except Exception:  # whatever went wrong there, the blobs are read here instead
            return None
        return verdicts if self._parts else None


class _Arriving:
    """One batch's decoded transactions and signature results, taken a part at a time as the
    workers return them.

    A block's transactions are handed to ``apply_block`` one by one (``txs`` and
    ``sig_ok``), so the verifier applies the first while the workers still check the last:
    otherwise the chain's last block would be applied with nothing else running beside it.
    """

    def __init__(
        self,
        raws: list[bytes],
        parts: list[Future[WorkerResult]],
        idle: Callable[[], bool] | None,
        failed: Callable[[], None],
    ) -> None:
        self._raws = raws
        self._parts = deque(parts)
        # Asked for small pieces of other work while a part is not back, until it says it
        # has none; then not again for this batch.
        self._idle = idle
        self._failed = failed
        self._txs: list[Transaction | None] = []
        self._sig_ok: list[tuple[bool, ...]] = []
        #: Called once this batch's last part is taken, when it is the chain's last batch.
        self.finished: Callable[[], None] | None = None

    def txs(self, start: int, end: int) -> Iterator[Transaction | None]:
        """The decoded transactions from ``start`` to ``end``, as they arrive."""
        return self._handed(self._txs, start, end)

    def sig_ok(self, start: int, end: int) -> Iterator[tuple[bool, ...]]:
        """The signature results from ``start`` to ``end``, as they arrive."""
        return self._handed(self._sig_ok, start, end)

    def _handed(self, taken: list[_T], start: int, end: int) -> Iterator[_T]:
        # ``taken`` is one of the lists _take extends in place.
        for index in range(start, end):
            if index >= len(taken):
                self._take(index)
            yield taken[index]

    def _take(self, index: int) -> None:
        """Take parts until the one holding ``index`` is in."""
        while len(self._txs) <= index:
            if not self._parts:
                # No workers, or they failed: the rest of the batch is prepared here.
                rest = decode_all(self._raws[len(self._txs) :])
                self._txs += rest
                self._sig_ok += check_signatures(rest)
                return
            part = self._parts.popleft()
            while self._idle is not None and not part.done():
                if not self._idle():
                    self._idle = None
            try:
                ids, sig_ok = part.result()
            except POOL_FAILURES:
                self._failed()
                self._parts.clear()
                continue
            if not self._parts and self.finished is not None:
                self.finished()
            at = len(self._txs)
            self._txs += [
                None if tx_id is None else Transaction.accepted(raw, tx_id)
                for raw, tx_id in zip(self._raws[at : at + len(ids)], ids, strict=True)
            ]
            self._sig_ok += sig_ok


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # whatever pickling raises, the answer is no
        return False
    return True


PreparedBlock = tuple[StoredBlock, Iterator[Transaction | None], Iterator[tuple[bool, ...]]]


class _Preparation:
    """Batches of the blocks in a range of heights, each with its transactions decoded and checked.

    Blocks come out in order, with their stored results, their decoded transactions (None
    where malformed) and each transaction's signature results, as ``apply_block`` takes them:
    the transactions one at a time, as they arrive (see ``_Arriving``). A chain of more than
    BATCH_TXS transactions is prepared by worker processes, PREPARE_AHEAD batches ahead, each
    batch split into two contiguous parts per worker (so that the workers finish the last
    batch together); while a part is not back, ``idle`` (if given) is called for small pieces
    of other work, until it returns False. Without workers, or should they fail, batches are
    prepared in this process (signatures on the shared thread pool).
    """

    def __init__(
        self,
        store: ChainStore,
        start: int,
        end: int,
        idle: Callable[[], bool] | None,
        blob_scan: _BlobScan | None = None,
        fresh_workers: bool = False,
    ) -> None:
        self._store, self._start = store, start
        self._batches = _batches(store, start, end)
        self._idle = idle
        self._blob_scan = blob_scan
        self._fresh_workers = fresh_workers
        self._pool: ProcessPoolExecutor | None = None
        self._workers = 1
        # Each batch waiting to be applied: its blocks and its transactions on their way.
        self._pending: deque[tuple[list[StoredBlock], _Arriving]] = deque()

    def __enter__(self) -> _Preparation:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _release(self) -> None:
        """Let the workers go once the last part is back: they exit (and the pool's own
        thread joins them) while the last transactions are applied, instead of after."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __iter__(self) -> Iterator[PreparedBlock]:
        # A chain of at most BATCH_TXS transactions is done before workers would have started.
        # The stored transaction counts tell, before any block is read: they only decide
        # where the work is done (the blocks' own transactions are what is prepared).
        # Nodes never cut an empty block, so this many blocks are enough to tell.
        txs = 0
        for index in self._store.block_index(self._start, self._start + BATCH_TXS + 1):
            txs += index.tx_count
            if txs > BATCH_TXS:
                started = fork_pool(MAX_WORKERS, fresh=self._fresh_workers)
                if started is not None:
                    self._pool, self._workers = started
                break
        batches = self._batches
        while True:
            while len(self._pending) < PREPARE_AHEAD:
                batch = next(batches, None)
                if batch is None:
                    if self._pending:
                        self._pending[-1][1].finished = self._release
                    if self._pool is not None and self._blob_scan is not None:
                        self._blob_scan.submit(self._pool, 2 * self._workers)
                        self._blob_scan = None
                    break
                raws = [raw for block, _ in batch for raw in block.txs]
                arriving = _Arriving(raws, self._submit(raws), self._idle, self._stop)
                self._pending.append((batch, arriving))
            if not self._pending:
                return
            batch, arriving = self._pending.popleft()
            cursor = 0
            for stored in batch:
                end = cursor + len(stored[0].txs)
                yield stored, arriving.txs(cursor, end), arriving.sig_ok(cursor, end)
                cursor = end

    def _submit(self, raws: list[bytes]) -> list[Future[WorkerResult]]:
        if self._pool is None:
            return []
        try:
            return submit_parts(self._pool, _prepare_txs, raws, 2 * self._workers)
        except POOL_FAILURES:
            self._stop()
            return []


def replay_store(
    store: ChainStore,
    genesis: Genesis,
    report: VerifyReport,
    progress: Callable[[int], None] | None = None,
    compare_results: bool = True,
    idle: Callable[[], bool] | None = None,
    applied: Callable[[MemoryState, Delta], None] | None = None,
    blob_scan: _BlobScan | None = None,
    fresh_workers: bool = False,
) -> tuple[MemoryState, ChainHead]:
    """Recompute state from the stored blocks, checking each against what the store claims.

    ``idle`` is called for small pieces of other work while the blocks' transactions are
    still being decoded and checked elsewhere; it returns False when it has nothing left for
    now. ``applied`` is told of every delta the state takes, genesis's first. With
    ``blob_scan``, worker processes (where there are any) also read and hash every blob.
    ``fresh_workers`` starts them from a fresh server process (see ``fork_pool``).
    """
    stored_head = store.head()
    if stored_head is None:
        raise VerifyFailure("the store holds no chain")
    g = genesis_block(genesis)
    first = store.get_block(0)
    if first is None or first.hash != g.hash or first.txs != g.txs:
        raise VerifyFailure("block 0: does not match genesis.json")
    state = MemoryState()
    founding = genesis_delta(genesis)
    state.apply(founding, [hashlib.sha256(genesis.to_bytes()).hexdigest()])
    if applied is not None:
        applied(state, founding)
    for org, row in founding.tables["org"].items():
        report.org_keys.setdefault(org, set()).add(row["sign_key"])
    head = ChainHead(0, g.hash, g.time)
    report.blocks = 1
    _check_index(store, [first])
    with _Preparation(store, 1, stored_head[0] + 1, idle, blob_scan, fresh_workers) as prepared:
        batch: list[Block] = []
        for (block, records), txs, sig_ok in prepared:
            try:
                result = apply_block(
                    state, genesis, head, block, state.tables["org"].keys(), txs=txs, sig_ok=sig_ok
                )
            except InvalidBlockError as exc:
                raise VerifyFailure(str(exc)) from None
            # Each transaction's signatures, and the block's own.
            report.signatures += sum(len(tx.signatures) for tx in result.txs if tx) + 1
            if compare_results:
                _compare_results(block, records, result.results)
            state.apply(result.delta, result.delta.tx_ids)
            if applied is not None:
                applied(state, result.delta)
            for org, row in result.delta.tables["org"].items():
                report.org_keys.setdefault(org, set()).add(row["sign_key"])
            head = ChainHead(block.height, block.hash, block.time)
            report.blocks += 1
            report.txs += len(result.results)
            report.invalid_txs += sum(1 for r in result.results if not r.valid)
            batch.append(block)
            if len(batch) >= BATCH_BLOCKS:
                _end_of_batch(store, batch, head, progress)
                batch = []
        if batch:
            _end_of_batch(store, batch, head, progress)
    if (head.height, head.hash) != stored_head:
        raise VerifyFailure(
            f"head: store says height {stored_head[0]} hash {stored_head[1][:16]}, "
            f"blocks give height {head.height} hash {head.hash[:16]}"
        )
    return state, head


_RESULT_FIELDS = ("tx_id", "tx_type", "valid", "code", "authenticated")


def _compare_results(block: Block, stored: list[TxRecord], results: list[TxResult]) -> None:
    """The stored results of a block's transactions must be what replay gives."""
    if len(stored) != len(results):
        raise VerifyFailure(f"block {block.height}: stored transaction count differs")
    for index, (mine, theirs) in enumerate(zip(results, stored, strict=True)):
        if (
            mine.tx_id == theirs.tx_id
            and mine.tx_type == theirs.tx_type
            and mine.valid == theirs.valid
            and mine.code == theirs.code
            and mine.authenticated == theirs.authenticated
        ):
            continue
        for field_name in _RESULT_FIELDS:
            stored_value = getattr(theirs, field_name)
            if getattr(mine, field_name) != stored_value:
                raise VerifyFailure(
                    f"block {block.height} transaction {index} "
                    f"({theirs.tx_id[:16]}): stored {field_name} {stored_value!r}, "
                    f"the blocks give {getattr(mine, field_name)!r}"
                )


def _end_of_batch(
    store: ChainStore,
    blocks: list[Block],
    head: ChainHead,
    progress: Callable[[int], None] | None,
) -> None:
    # After the blocks themselves: a rewritten header is reported as the bad signature it
    # is; only the index columns beside a sound header are compared here.
    _check_index(store, blocks)
    if progress is not None:
        progress(head.height)


Cells = tuple[Any, ...]  # a row's column values as the store keeps them (``state_cells``)


class _StoredState:
    """The store's state tables, read a piece at a time beside replay (see ``_StateCheck``).

    Replay reads only blocks, so reading the state early changes no outcome. A problem met
    while reading is kept and raised when its table is asked for, after replay, just where
    reading the table would have raised it.
    """

    def __init__(self, store: ChainStore) -> None:
        self._store = store
        self._todo = [spec.name for spec in TABLES]
        self._tables: dict[str, dict[str, Cells]] = {}
        self._rows: Iterator[tuple[str, Cells]] | None = None
        #: Rows read so far.
        self.read = 0
        self._error: Exception | None = None

    def step(self) -> bool:
        """Read a few hundred rows; False once every table is read (or reading failed)."""
        if self._error is not None or not self._todo:
            return False
        name = self._todo[0]
        try:
            if self._rows is None:
                self._rows = self._store.state_cells(name)
                self._tables[name] = {}
            rows = list(itertools.islice(self._rows, STATE_ROWS_STEP))
            self._tables[name].update(rows)
            self.read += len(rows)
            if len(rows) < STATE_ROWS_STEP:
                self._todo.pop(0)
                self._rows = None
        except Exception as exc:  # raised again by table(), where it belongs
            self._error = exc
            return False
        return True

    @property
    def complete(self) -> bool:
        """Whether every table has been read (without a problem)."""
        return not self._todo

    def table(self, name: str) -> dict[str, Cells]:
        """Every stored row of a table, by key, as the store's cells (``state_cells``)."""
        while name in self._todo and self.step():
            pass
        if name in self._todo:  # reading failed before this table was complete
            assert self._error is not None
            raise self._error
        return self._tables[name]


class _StateCheck:
    """The stored state tables against the state replay recomputes, compared as it goes.

    ``step`` reads the stored tables, then compares the rows replay has written since they
    were last compared. A row written again is compared again; one that differs is looked at
    again at the end, as it may yet be written to what the store holds. ``finish`` then
    compares only what is left, so little of the comparison waits until replay is over, when
    nothing else is left to run beside it. (Rows are never deleted from a state.)

    Steps run while replay waits for prepared transactions, and also as replay writes rows
    (``applied``): when the workers are ahead, replay never waits, and the whole stored state
    would otherwise be read and compared after it.
    """

    def __init__(self, store: ChainStore) -> None:
        self._stored = _StoredState(store)
        self._cells = {spec.name: store.row_cells(spec.name) for spec in TABLES}
        self._state: MemoryState | None = None
        # Keys written since last compared, and keys that differed when compared, by table.
        self._pending: dict[str, set[str]] = {spec.name: set() for spec in TABLES}
        self._differed: dict[str, set[str]] = {spec.name: set() for spec in TABLES}
        # Rows still to be read or compared to keep pace with the rows replay has written.
        self._owed = 0

    def applied(self, state: MemoryState, delta: Delta) -> None:
        """Note the rows a delta wrote to the state, and keep pace: replay's ``applied``.

        For each row written, about two rows are read or compared: in the common case of as
        many stored rows as writes, the reading and the comparing end with replay.
        """
        self._state = state
        for name, rows in delta.tables.items():
            if rows:
                self._pending[name].update(rows)
                self._owed += 2 * len(rows)
        while self._owed > 0:
            done = self._work()
            self._owed = self._owed - done if done else 0

    def step(self) -> bool:
        """Read or compare a piece; False when there is nothing to do for now."""
        return self._work() > 0

    def _work(self) -> int:
        """Read or compare a piece; how many rows that was (0: nothing to do for now)."""
        read = self._stored.read
        if self._stored.step():
            return max(self._stored.read - read, 1)  # an empty table costs a statement
        if not self._stored.complete or self._state is None:
            return 0  # reading failed: finish raises where the table is needed
        for name, keys in self._pending.items():
            if keys:
                stored, mine = self._stored.table(name), self._state.tables[name]
                cells = self._cells[name]
                batch = [keys.pop() for _ in range(min(len(keys), COMPARE_STEP))]
                for key in batch:
                    if stored.get(key) != cells(mine[key]):
                        self._differed[name].add(key)
                return len(batch)
        return 0

    def finish(self, state: MemoryState, report: VerifyReport) -> None:
        """Compare what is left, raising for the first difference in each table's key order."""
        for spec in TABLES:
            stored = self._stored.table(spec.name)
            mine = state.tables[spec.name]
            cells = self._cells[spec.name]
            # Every row of ``mine`` was written through ``applied``, so each has been compared
            # since it was last written, or is compared here: with as many rows stored, the
            # tables are equal. Any difference is looked up key by key, to name the first.
            left = self._pending[spec.name] | self._differed[spec.name]
            if state is not self._state:
                left = set(mine)
            if len(stored) != len(mine) or any(stored.get(k) != cells(mine[k]) for k in left):
                _name_state_difference(spec.name, spec.column_names(), stored, mine, cells)
            report.state_rows += len(mine)
            report.counts[spec.name] = len(mine)


def _name_state_difference(
    table: str,
    columns: tuple[str, ...],
    stored: dict[str, Cells],
    mine: dict[str, dict[str, Any]],
    cells: Callable[[dict[str, Any]], Cells],
) -> None:
    """Raise for the first key (in key order) whose row differs, naming the column."""
    for key in sorted(set(stored) | set(mine)):
        if key not in stored:
            raise VerifyFailure(f"state {table} row {key}: missing from the store")
        if key not in mine:
            raise VerifyFailure(f"state {table} row {key}: in the store but not in any block")
        for column, theirs, ours in zip(columns, stored[key], cells(mine[key]), strict=True):
            if theirs != ours:
                raise VerifyFailure(
                    f"state {table} row {key}: column {column} differs from the blocks"
                )


# A blob's verdict: absent, present and matching its digest, or present and not matching.
_ABSENT, _SOUND, _CORRUPT = 0, 1, 2


def _verdict(digest: str, data: bytes | None) -> int:
    """The verdict on the bytes stored under ``digest`` (None: nothing stored)."""
    if data is None:
        return _ABSENT
    return _SOUND if hashlib.sha256(data).hexdigest() == digest else _CORRUPT


def _blob_verdicts(blobs: BlobStore, digests: list[str]) -> list[int]:
    """Read and hash each blob once."""
    return list(map(_verdict, digests, blobs.get_many(digests)))


def _check_blobs(
    blobs: BlobStore,
    state: MemoryState,
    report: VerifyReport,
    held: set[tuple[str, int]] | None = None,
    scanned: dict[str, int] | None = None,
) -> None:
    """Every version's content present and sound (erased ones gone).

    With ``held`` (a network node, which receives content only for versions it holds a
    wrapped key for), content may be absent for the versions not in it; whatever is present
    must still match its hash. ``scanned`` holds a verdict on every stored blob (the workers
    read them all during replay); without it, the blobs are read here.
    """
    records = state.tables["record"]
    versions = state.tables["record_version"]
    # Versions may share content; each distinct blob is read and hashed once.
    needed = set(map(_CONTENT_HASH, versions.values()))
    verdict = scanned
    if verdict is None:
        digests = sorted(needed)
        verdict = dict(zip(digests, _blob_verdicts(blobs, digests), strict=True))
    # The common case, all content there and sound and nothing erased, is told by set
    # operations: a third of the time of looking up every digest.
    if (
        needed <= verdict.keys()
        and _CORRUPT not in verdict.values()
        and _ABSENT not in verdict.values()
        and not any(map(_ERASED, records.values()))
    ):
        report.blobs += len(versions)
        return

    def outcome(version: dict[str, Any]) -> str:
        found = verdict.get(version["content_hash"], _ABSENT)
        if records[version["record"]]["erased"]:
            return "erased" if found == _ABSENT else _BLOB_NOT_ERASED
        if found == _SOUND:
            return "blobs"
        if found == _CORRUPT:
            return _BLOB_CORRUPT
        if held is not None and (version["record"], version["version"]) not in held:
            return "not_held"
        return _BLOB_MISSING

    # Counting needs no order, so the versions are gone through as they are; should anything
    # be wrong, they are gone through again in key order, to name the first problem.
    counts = {"blobs": 0, "erased": 0, "not_held": 0}
    for version in versions.values():
        found = outcome(version)
        if found not in counts:
            for key in sorted(versions):
                problem = outcome(versions[key])
                if problem not in counts:
                    raise VerifyFailure(f"blob of {key}: {problem}")
        counts[found] += 1
    report.blobs += counts["blobs"]
    report.erased += counts["erased"]
    report.not_held += counts["not_held"]


_CONTENT_HASH = operator.itemgetter("content_hash")
_ERASED = operator.itemgetter("erased")
_BLOB_NOT_ERASED = "the record was erased but its content remains"
_BLOB_CORRUPT = "content does not match its on-chain hash"
_BLOB_MISSING = "missing"


def _check_index(store: ChainStore, blocks: list[Block]) -> None:
    """The columns stored beside each block must say what its header says."""
    if not blocks:
        return
    stored = {b.height: b for b in store.block_index(blocks[0].height, blocks[-1].height + 1)}
    for block in blocks:
        row = stored.get(block.height)
        expected = (block.hash, block.prev, block.time, len(block.txs))
        if row is None or (row.hash, row.prev, row.time, row.tx_count) != expected:
            raise VerifyFailure(
                f"block {block.height}: stored hash, prev, time or tx_count differ from its header"
            )


def _check_checkpoints(store: ChainStore, report: VerifyReport) -> None:
    """Every stored checkpoint must match the chain and carry only valid signatures."""
    log: BlockLog | None = None
    for checkpoint in store.iter_checkpoints():
        height = int(checkpoint.body["height"])
        block = store.get_block(height)
        if block is None or block.hash != checkpoint.body["head"]:
            raise VerifyFailure(f"checkpoint at {height}: head does not match block {height}")
        if checkpoint.body["network"] != report.network:
            raise VerifyFailure(f"checkpoint at {height}: made for another network")
        log = log if log is not None and log.log.size > height else BlockLog.build(store)
        if log.root(height + 1).hex() != checkpoint.body["blocks_root"]:
            raise VerifyFailure(f"checkpoint at {height}: blocks root does not match the chain")
        if not checkpoint.signatures:
            raise VerifyFailure(f"checkpoint at {height}: no organisation signature")
        message = checkpoint.message()
        for org, signature in checkpoint.signatures:
            keys = report.org_keys.get(org, set())
            if not any(verify_signature(b64d(k), message, signature) for k in keys):
                raise VerifyFailure(f"checkpoint at {height}: signature by {org} does not verify")
        report.checkpoint = height
        report.checkpoints += 1


@contextmanager
def _collections_paused() -> Iterator[None]:
    """No automatic garbage collection while replaying a chain.

    Replay keeps the whole state, and the stored state beside it, alive to the end: millions
    of objects on a long chain, which every automatic collection traverses again, for a sixth
    of the time on a chain of 10,000 transactions. Nearly all of it is free of reference
    cycles and freed by reference counting; what cycles there are wait for the collections
    after it. Collections already switched off stay off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def verify_chain(
    store: ChainStore,
    genesis: Genesis,
    blobs: BlobStore,
    progress: Callable[[int], None] | None = None,
    *,
    held_content_only: bool = False,
    fresh_workers: bool = False,
) -> VerifyReport:
    """Check everything derivable from the blocks; the report names the first problem.

    ``held_content_only`` is for a node of a network: content is expected only for the
    versions it holds a wrapped key for (others' content never travels to it).
    ``fresh_workers`` is for a server process: see ``fork_pool``.
    """
    started = time.perf_counter()
    report = VerifyReport(network=genesis.network_id)
    with _collections_paused():
        try:
            state_check = _StateCheck(store)
            blob_scan = _BlobScan(blobs)
            state, head = replay_store(
                store,
                genesis,
                report,
                progress,
                idle=state_check.step,
                applied=state_check.applied,
                blob_scan=blob_scan,
                fresh_workers=fresh_workers,
            )
            report.height, report.head = head.height, head.hash
            state_check.finish(state, report)
            # The stored rows are the bulk of what collections would traverse once they are
            # on again (10 ms on a chain of 10,000 transactions): they go now, by reference
            # counting.
            del state_check
            held = store.wrapped_versions() if held_content_only else None
            _check_blobs(blobs, state, report, held, blob_scan.verdicts())
            _check_checkpoints(store, report)
        except VerifyFailure as failure:
            report.problem = str(failure)
    report.seconds = time.perf_counter() - started
    return report


def verify_workspace(
    ws: Workspace,
    progress: Callable[[int], None] | None = None,
    *,
    in_server: bool = False,
) -> VerifyReport:
    """Verify a node's whole chain and record the outcome in its data folder.

    The one entry point for ``rekam verify`` and the portal: a network node is checked for
    the content it holds keys for only, and every run's outcome (time, verdict, summary;
    never content) is kept for the status pages. ``in_server`` is for a process serving
    requests on other threads meanwhile (the portal): its worker processes start afresh
    instead of as copies of it (see ``fork_pool``).
    """
    report = verify_chain(
        ws.node.store,
        ws.genesis,
        ws.node.blobs,
        progress,
        held_content_only=ws.datadir.in_network,
        fresh_workers=in_server,
    )
    ws.datadir.record_verification(
        {"time": ws.node.clock(), "ok": report.ok, "summary": report.summary()}
    )
    return report


def rebuild_state(store: ChainStore, genesis: Genesis) -> VerifyReport:
    """Recompute every state table from the blocks and replace the stored tables with it."""
    started = time.perf_counter()
    report = VerifyReport()
    with _collections_paused():
        state, head = replay_store(store, genesis, report, compare_results=False)
    store.replace_state(state)
    report.height, report.head = head.height, head.hash
    report.state_rows = sum(len(t) for t in state.tables.values())
    report.seconds = time.perf_counter() - started
    return report
