"""The SQL schema of a Rekam store, as SQLAlchemy Core metadata.

The state tables are generated from :data:`rekam.ledger.state.TABLES`, so the ledger's table
specification stays the single source of their columns. Every string column is declared with
the binary ``"C"`` collation on PostgreSQL, so ``ORDER BY`` gives the same order as SQLite and
as Python's ``sorted`` (the ids Rekam stores are ASCII).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

from rekam.ledger.state import TABLES, ColumnType, TableSpec

STATE_PREFIX = "state_"

# Columns the service filters on, per state table (single-column equality indexes; the event
# index also carries time, because a patient's events are listed in time order). Only columns
# a query filters on are indexed: every index costs a B-tree insert per row on the commit path
# (schema version 2 dropped record_version(patient) and event(record), which no query used).
INDEXED: dict[str, tuple[tuple[str, ...], ...]] = {
    "record": (("patient",),),
    "record_version": (("record",),),
    "consent": (("patient",), ("grantee",)),
    "emergency": (("patient",), ("member",)),
    "event": (("patient", "time"),),
}


def _string(length: int | None = None) -> TypeEngine[str]:
    """A string column with byte-order collation on every backend."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


def sql_type(kind: ColumnType) -> TypeEngine[Any]:
    """The SQL type of a state column type (strlist is canonical JSON text)."""
    if kind == "str":
        return _string()
    if kind == "int":
        return BigInteger()
    if kind == "bool":
        return Boolean()
    if kind == "strlist":
        return Text()
    raise ValueError(f"unknown column type {kind!r}")


metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", _string(64), primary_key=True),
    Column("value", Text, nullable=False),
)

blocks = Table(
    "blocks",
    metadata,
    Column("height", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("prev", String(64), nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("tx_count", Integer, nullable=False),
    Column("header", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
)

txs = Table(
    "txs",
    metadata,
    Column("height", BigInteger, ForeignKey("blocks.height"), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("tx_id", String(64), nullable=False),
    Column("type", String, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("valid", Boolean, nullable=False),
    Column("code", String, nullable=False),
    # Only an authenticated transaction takes its id (a forged copy must not burn it).
    Column("authenticated", Boolean, nullable=False),
    # Not unique: a replayed transaction is committed again, flagged invalid ("duplicate"),
    # and a block carrying one must still be stored. get_tx returns the first occurrence.
    PrimaryKeyConstraint("height", "idx", name="pk_txs"),
    Index("ix_txs_tx_id", "tx_id"),
)

wrapped_keys = Table(
    "wrapped_keys",
    metadata,
    Column("record", _string(), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("recipient", _string(), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    PrimaryKeyConstraint("record", "version", "recipient", name="pk_wrapped_keys"),
    Index("ix_wrapped_keys_recipient", "recipient"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("height", BigInteger, primary_key=True, autoincrement=False),
    Column("body", LargeBinary, nullable=False),
    Column("sigs", Text, nullable=False),
)


def _state_table(spec: TableSpec) -> Table:
    name = STATE_PREFIX + spec.name
    columns = [Column("key", _string(), primary_key=True)]
    columns += [
        Column(col, sql_type(kind), nullable=nullable) for col, kind, nullable in spec.columns
    ]
    indexes = [Index(f"ix_{name}_{'_'.join(cols)}", *cols) for cols in INDEXED.get(spec.name, ())]
    return Table(name, metadata, *columns, *indexes)


state_tables: dict[str, Table] = {spec.name: _state_table(spec) for spec in TABLES}
