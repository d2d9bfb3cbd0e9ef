"""Interfaces the service layer needs from the outside world; adapters implement them.

Storage (``rekam.storage``) and the blob store (``rekam.blobs``) are plugged in through these
protocols, so the service and ledger layers never import a database driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rekam.ledger.block import Block, Checkpoint
from rekam.ledger.state import Delta, MemoryState, Prefetching, Row, StateReader
from rekam.ledger.tx import Transaction
from rekam.ledger.validate import TxResult


@dataclass(frozen=True)
class TxRecord:
    """A committed transaction as stored: its bytes, position and validity."""

    tx_id: str
    raw: bytes
    height: int
    index: int
    valid: bool
    code: str
    authenticated: bool = True
    tx_type: str = ""


@dataclass(frozen=True)
class BlockIndex:
    """The columns a store keeps beside a block's header, for lookups; verify compares them."""

    height: int
    hash: str
    prev: str
    time: int
    tx_count: int


# What a block commit stores per transaction besides its bytes: the validator's result.
CommittedTx = TxResult


class StoreError(Exception):
    """Root of storage errors."""


class SchemaVersionError(StoreError):
    """The data folder was written by another schema version and cannot be used as is."""


class ConflictError(StoreError):
    """A block for this height exists already (another writer got there first)."""


class ChainStore(StateReader, Prefetching, Protocol):
    """A node's durable chain, state tables and off-chain keyring."""

    def initialise(self, genesis: Block, delta: Delta | None = None) -> None:
        """Create the schema, store the genesis block and its state; refuse a non-empty store."""
        ...

    def head(self) -> tuple[int, str] | None:
        """(height, hash) of the last block, or None before genesis."""
        ...

    def append_block(
        self,
        block: Block,
        txs: Sequence[CommittedTx],
        delta: Delta,
        wrapped_keys: Sequence[tuple[str, int, str, bytes]] = (),
    ) -> None:
        """Atomically store a block, its results, its state writes and attached wrapped keys."""
        ...

    def get_block(self, height: int) -> Block | None:
        """The block at a height."""
        ...

    def iter_blocks(self, start: int = 0, end: int | None = None) -> Iterator[Block]:
        """Blocks from start up to (excluding) end, in order, streamed."""
        ...

    def iter_block_records(
        self, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[Block, list[TxRecord]]]:
        """Blocks from start up to (excluding) end, each with its ``block_txs``, streamed."""
        ...

    def block_index(self, start: int = 0, end: int | None = None) -> Iterator[BlockIndex]:
        """The stored index columns of blocks from start up to (excluding) end."""
        ...

    def get_tx(self, tx_id: str) -> TxRecord | None:
        """A committed transaction by id."""
        ...

    def block_txs(self, height: int) -> list[TxRecord]:
        """The stored results of a block's transactions, in block order."""
        ...

    def state_rows(self, table: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (key, row) of a state table, ordered by key."""
        ...

    def state_cells(self, table: str) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """Every (key, cells) of a state table, in no set order: its column values as stored."""
        ...

    def row_cells(self, table: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
        """A function giving a row's cells as ``state_cells`` gives them for an equal row."""
        ...

    def query(
        self, table: str, where: Mapping[str, Any], order_by: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Rows of a state table whose columns equal the given values."""
        ...

    def replace_state(self, state: MemoryState) -> None:
        """Atomically replace every state table with recomputed rows (``rekam rebuild``)."""
        ...

    def put_wrapped_keys(self, entries: Sequence[tuple[str, int, str, bytes]]) -> None:
        """Store (record, version, recipient, wrapped key) entries, replacing equal keys."""
        ...

    def get_wrapped_key(self, record: str, version: int, recipient: str) -> bytes | None:
        """One recipient's wrapped key for a record version."""
        ...

    def delete_wrapped_keys(self, record: str | None = None, recipient: str | None = None) -> int:
        """Delete wrapped keys of a record and/or a recipient; returns how many went."""
        ...

    def wrapped_versions(self) -> set[tuple[str, int]]:
        """Every (record, version) this node holds at least one wrapped key for."""
        ...

    def wrapped_keys_for(self, recipient: str) -> list[tuple[str, int, bytes]]:
        """Every (record, version, wrapped key) held for a recipient, in record order."""
        ...

    def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store or merge signatures into the checkpoint at its height."""
        ...

    def latest_checkpoint(self) -> Checkpoint | None:
        """The highest stored checkpoint."""
        ...

    def iter_checkpoints(self) -> Iterator[Checkpoint]:
        """Every stored checkpoint, lowest height first."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class BlobStore(Protocol):
    """Content-addressed store of encrypted record content."""

    def put(self, data: bytes) -> str:
        """Store bytes durably and atomically; returns their SHA-256 hex."""
        ...

    def get(self, digest: str) -> bytes | None:
        """The bytes with this digest, or None."""
        ...

    def get_many(self, digests: Sequence[str]) -> list[bytes | None]:
        """The bytes with each digest, in the order given (None where absent)."""
        ...

    def partition(self, parts: int) -> list[tuple[int, int]]:
        """Up to ``parts`` disjoint parts of the store that together hold every blob stored
        now, for ``scan``: ``rekam verify`` reads every blob, a part per worker process."""
        ...

    def scan(self, part: tuple[int, int]) -> Iterator[tuple[str, bytes]]:
        """Every blob in one part ``partition`` gave, as (digest, bytes)."""
        ...

    def delete(self, digest: str) -> bool:
        """Remove content (erasure); True when something was deleted."""
        ...

    def iter_digests(self) -> Iterator[str]:
        """Every stored digest."""
        ...

    def close(self) -> None:
        """Release what the store holds open (it may be used again afterwards)."""
        ...


@runtime_checkable
class RefreshingBlobStore(BlobStore, Protocol):
    """A blob store with a source to ask again: a network node's (content held elsewhere)."""

    def refresh(self, digest: str) -> bool:
        """Fetch this content's wrapped keys (and the content) from its source once more;
        True when something was fetched. A consent given after the content arrived wraps a
        key for a new reader at the custodian's node."""
        ...


__all__ = [
    "BlobStore",
    "BlockIndex",
    "ChainStore",
    "CommittedTx",
    "ConflictError",
    "Orderer",
    "RefreshingBlobStore",
    "Row",
    "SchemaVersionError",
    "StoreError",
    "TxRecord",
]


class Orderer(Protocol):
    """Puts submitted transactions into an order and hands blocks to the node."""

    def submit(self, tx: Transaction) -> None:
        """Queue a decoded transaction for ordering (idempotency is the node's job)."""
        ...

    def close(self) -> None:
        """Stop ordering; blocks already cut are delivered before this returns."""
        ...
