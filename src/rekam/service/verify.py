"""Verify a node's data without trusting it, and rebuild state from blocks.

``verify_chain`` re-derives everything from the blocks: the hash chain, every Merkle root,
every block and transaction signature, every transaction's validity, every state table row,
the content hashes of stored blobs, and the stored checkpoint. It stops at the first problem
and names where it is. Signatures are checked in parallel batches across blocks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rekam.crypto import verify_signature
from rekam.encoding import b64d
from rekam.ledger._errors import InvalidBlockError
from rekam.ledger.block import Block, Genesis, genesis_block
from rekam.ledger.state import TABLES, MemoryState
from rekam.ledger.tx import Transaction
from rekam.ledger.validate import (
    ChainHead,
    apply_block,
    check_signatures,
    decode_all,
    genesis_delta,
)
from rekam.service.ports import BlobStore, ChainStore
from rekam.service.proofs import BlockLog

BATCH_BLOCKS = 32


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
        return (
            f"OK: {self.blocks} blocks to height {self.height} (head {self.head[:16]}), "
            f"{self.txs} transactions ({self.invalid_txs} invalid by rule), "
            f"{self.signatures} signatures, {self.state_rows} state rows, "
            f"{self.blobs} blobs, {self.erased} erased{checkpoint} in {self.seconds:.2f}s"
        )


class VerifyFailure(Exception):
    """The first problem found, naming the block, transaction, row or blob."""


def _batches(store: ChainStore, start: int) -> Iterator[list[Block]]:
    batch: list[Block] = []
    for block in store.iter_blocks(start):
        batch.append(block)
        if len(batch) >= BATCH_BLOCKS:
            yield batch
            batch = []
    if batch:
        yield batch


def replay_store(
    store: ChainStore,
    genesis: Genesis,
    report: VerifyReport,
    progress: Callable[[int], None] | None = None,
    compare_results: bool = True,
) -> tuple[MemoryState, ChainHead]:
    """Recompute state from the stored blocks, checking each against what the store claims."""
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
    for org, row in founding.tables["org"].items():
        report.org_keys.setdefault(org, set()).add(row["sign_key"])
    head = ChainHead(0, g.hash, g.time)
    report.blocks = 1
    _check_index(store, [first])
    for batch in _batches(store, 1):
        decoded = [decode_all(b.txs) for b in batch]
        flat: list[Transaction | None] = [tx for txs in decoded for tx in txs]
        flat_ok = check_signatures(flat)
        report.signatures += sum(len(ok) for ok in flat_ok) + len(batch)
        cursor = 0
        for block, txs in zip(batch, decoded, strict=True):
            sig_ok = flat_ok[cursor : cursor + len(txs)]
            cursor += len(txs)
            try:
                result = apply_block(
                    state, genesis, head, block, state.tables["org"].keys(), txs=txs, sig_ok=sig_ok
                )
            except InvalidBlockError as exc:
                raise VerifyFailure(str(exc)) from None
            if compare_results:
                stored = store.block_txs(block.height)
                if len(stored) != len(result.results):
                    raise VerifyFailure(f"block {block.height}: stored transaction count differs")
                for index, (mine, theirs) in enumerate(zip(result.results, stored, strict=True)):
                    for field in ("tx_id", "tx_type", "valid", "code", "authenticated"):
                        stored_value = getattr(theirs, field)
                        if getattr(mine, field) != stored_value:
                            raise VerifyFailure(
                                f"block {block.height} transaction {index} "
                                f"({theirs.tx_id[:16]}): stored {field} {stored_value!r}, "
                                f"the blocks give {getattr(mine, field)!r}"
                            )
                    if theirs.raw != block.txs[index]:
                        raise VerifyFailure(
                            f"block {block.height} transaction {index}: "
                            "stored bytes differ from the block"
                        )
            state.apply(result.delta, result.delta.tx_ids)
            for org, row in result.delta.tables["org"].items():
                report.org_keys.setdefault(org, set()).add(row["sign_key"])
            head = ChainHead(block.height, block.hash, block.time)
            report.blocks += 1
            report.txs += len(result.results)
            report.invalid_txs += sum(1 for r in result.results if not r.valid)
        # After the blocks themselves: a rewritten header is reported as the bad signature it
        # is; only the index columns beside a sound header are compared here.
        _check_index(store, batch)
        if progress is not None:
            progress(head.height)
    if (head.height, head.hash) != stored_head:
        raise VerifyFailure(
            f"head: store says height {stored_head[0]} hash {stored_head[1][:16]}, "
            f"blocks give height {head.height} hash {head.hash[:16]}"
        )
    return state, head


def _compare_state(store: ChainStore, state: MemoryState, report: VerifyReport) -> None:
    for spec in TABLES:
        stored = dict(store.state_rows(spec.name))
        mine = state.tables[spec.name]
        for key in sorted(set(stored) | set(mine)):
            if key not in stored:
                raise VerifyFailure(f"state {spec.name} row {key}: missing from the store")
            if key not in mine:
                raise VerifyFailure(
                    f"state {spec.name} row {key}: in the store but not in any block"
                )
            for column in spec.column_names():
                if stored[key][column] != mine[key][column]:
                    raise VerifyFailure(
                        f"state {spec.name} row {key}: column {column} differs from the blocks"
                    )
        report.state_rows += len(mine)
        report.counts[spec.name] = len(mine)


def _check_blobs(blobs: BlobStore, state: MemoryState, report: VerifyReport) -> None:
    records = state.tables["record"]
    for key, version in sorted(state.tables["record_version"].items()):
        data = blobs.get(version["content_hash"])
        if records[version["record"]]["erased"]:
            if data is not None:
                raise VerifyFailure(f"blob of {key}: the record was erased but its content remains")
            report.erased += 1
            continue
        if data is None:
            raise VerifyFailure(f"blob of {key}: missing")
        if hashlib.sha256(data).hexdigest() != version["content_hash"]:
            raise VerifyFailure(f"blob of {key}: content does not match its on-chain hash")
        report.blobs += 1


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


def verify_chain(
    store: ChainStore,
    genesis: Genesis,
    blobs: BlobStore,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check everything derivable from the blocks; the report names the first problem."""
    started = time.perf_counter()
    report = VerifyReport(network=genesis.network_id)
    try:
        state, head = replay_store(store, genesis, report, progress)
        report.height, report.head = head.height, head.hash
        _compare_state(store, state, report)
        _check_blobs(blobs, state, report)
        _check_checkpoints(store, report)
    except VerifyFailure as failure:
        report.problem = str(failure)
    report.seconds = time.perf_counter() - started
    return report


def rebuild_state(store: ChainStore, genesis: Genesis) -> VerifyReport:
    """Recompute every state table from the blocks and replace the stored tables with it."""
    started = time.perf_counter()
    report = VerifyReport()
    state, head = replay_store(store, genesis, report, compare_results=False)
    store.replace_state(state)
    report.height, report.head = head.height, head.hash
    report.state_rows = sum(len(t) for t in state.tables.values())
    report.seconds = time.perf_counter() - started
    return report
