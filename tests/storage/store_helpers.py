"""Builders for the storage tests: dummy blocks (the store checks no signatures) and rows."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from rekam.ledger.block import ZERO_HASH, Block
from rekam.ledger.state import TABLE_BY_NAME, Delta
from rekam.service.ports import CommittedTx

NETWORK = "ab" * 32
GENESIS_DOC = b'{"name":"test-net","v":1}'


def genesis() -> Block:
    header = {
        "v": 1,
        "network": NETWORK,
        "height": 0,
        "prev": ZERO_HASH,
        "time": 1_000,
        "tx_count": 1,
        "tx_root": "00" * 32,
        "orderer": "clinic-a",
    }
    return Block(header, b"", (GENESIS_DOC,))


def next_block(prev: Block, txs: Sequence[bytes], *, height: int | None = None) -> Block:
    """A block on top of ``prev`` (or at a forced height) with a dummy signature."""
    h = prev.height + 1 if height is None else height
    header = {
        "v": 1,
        "network": NETWORK,
        "height": h,
        "prev": prev.hash,
        "time": 1_000 + h * 10,
        "tx_count": len(txs),
        "tx_root": hashlib.sha256(b"".join(txs)).hexdigest(),
        "orderer": "clinic-a",
    }
    return Block(header, b"sig-%d" % h, tuple(txs))


def tx_bytes(tag: str) -> bytes:
    return b'{"sigs":[],"tx":{"tag":"' + tag.encode() + b'"}}'


def tx_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def committed(
    txs: Sequence[bytes], valid: bool = True, code: str = "ok", tx_type: str = "record.write"
) -> list[CommittedTx]:
    return [CommittedTx(tx_id(raw), tx_type, valid, code) for raw in txs]


def row(table: str, n: int = 0, **overrides: Any) -> dict[str, Any]:
    """A complete row for a state table with predictable values."""
    values: dict[str, Any] = {}
    for column, kind, nullable in TABLE_BY_NAME[table].columns:
        if nullable:
            values[column] = None
        elif kind == "str":
            values[column] = f"{column}-{n}"
        elif kind == "int":
            values[column] = 1_000 + n
        elif kind == "bool":
            values[column] = n % 2 == 1
        else:
            values[column] = ["Observation", f"T{n}"]
    for column in overrides:
        assert column in values, column
    values.update(overrides)
    return values


def delta(*writes: tuple[str, str, dict[str, Any]]) -> Delta:
    d = Delta()
    for table, key, values in writes:
        d.put(table, key, values)
    return d
