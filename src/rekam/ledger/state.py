"""World state: the tables every node derives from the blocks, and the views the rules read.

State is a set of named tables of rows keyed by a string. The table specification below is the
single source for both the in-memory state used when replaying blocks and the SQL tables of
the storage adapters, so a node's stored state can be recomputed from its blocks and compared
row by row. Rows hold only str, int, bool, None and lists of str.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeGuard, runtime_checkable

ColumnType = Literal["str", "int", "bool", "strlist"]
Row = Mapping[str, Any]


@dataclass(frozen=True)
class TableSpec:
    """One state table: its name and typed columns (the key column is implicit)."""

    name: str
    columns: tuple[tuple[str, ColumnType, bool], ...]  # (name, type, nullable)

    def column_names(self) -> tuple[str, ...]:
        """Names of the non-key columns, in declaration order."""
        return tuple(c[0] for c in self.columns)


def _t(name: str, *cols: tuple[str, ColumnType, bool]) -> TableSpec:
    return TableSpec(name, cols)


_S: ColumnType = "str"
_I: ColumnType = "int"
_B: ColumnType = "bool"
_L: ColumnType = "strlist"

TABLES: tuple[TableSpec, ...] = (
    # Organisations: clinics, hospitals, labs and pharmacies (keyed by their public slug).
    _t(
        "org",
        ("kind", _S, False),
        ("sign_key", _S, False),
        ("enc_key", _S, False),
        ("active", _B, False),
        ("since", _I, False),
    ),
    # Members enrolled by an organisation with one role and a validity window.
    _t(
        "member",
        ("org", _S, False),
        ("role", _S, False),
        ("sign_key", _S, False),
        ("enc_key", _S, False),
        ("valid_from", _I, False),
        ("valid_until", _I, False),
        ("revoked", _B, False),
    ),
    # Patients by random pseudonymous id; nothing identifying is ever stored here.
    _t(
        "patient",
        ("home_org", _S, False),
        ("sign_key", _S, False),
        ("enc_key", _S, False),
        ("registered", _I, False),
    ),
    # The head of every record: its latest version and whether it was erased or dispensed.
    _t(
        "record",
        ("patient", _S, False),
        ("resource_type", _S, False),
        ("version", _I, False),
        ("content_hash", _S, False),
        ("author", _S, False),
        ("author_org", _S, False),
        ("created", _I, False),
        ("updated", _I, False),
        ("erased", _B, False),
        ("dispensed", _B, False),
    ),
    # Every version of every record (keyed "record@version"); versions are never updated.
    _t(
        "record_version",
        ("record", _S, False),
        ("version", _I, False),
        ("patient", _S, False),
        ("content_hash", _S, False),
        ("content_size", _I, False),
        ("author", _S, False),
        ("tx", _S, False),
        ("time", _I, False),
    ),
    _t(
        "consent",
        ("patient", _S, False),
        ("grantee", _S, False),
        ("grantee_kind", _S, False),
        ("resource_types", _L, False),
        ("purpose", _S, False),
        ("start", _I, False),
        ("end", _I, False),
        ("revoked", _B, False),
        ("granted_by", _S, False),
    ),
    _t(
        "emergency",
        ("member", _S, False),
        ("patient", _S, False),
        ("reason", _S, False),
        ("start", _I, False),
        ("expires", _I, False),
    ),
    # Everything a patient may see about their data, keyed by transaction id.
    _t(
        "event",
        ("patient", _S, False),
        ("time", _I, False),
        ("kind", _S, False),
        ("actor", _S, False),
        ("actor_org", _S, True),
        ("record", _S, True),
        ("version", _I, True),
        ("allowed", _B, True),
        ("basis", _S, True),
        ("basis_ref", _S, True),
        ("purpose", _S, True),
    ),
)

TABLE_BY_NAME: dict[str, TableSpec] = {t.name: t for t in TABLES}
_COLUMN_SETS: dict[str, frozenset[str]] = {t.name: frozenset(t.column_names()) for t in TABLES}


class StateReader(Protocol):
    """Read access to world state as of the chain head; what the rules are allowed to see."""

    def get(self, table: str, key: str) -> Row | None:
        """The row with this key, or None."""
        ...

    def tx_seen(self, tx_id: str) -> bool:
        """True when a transaction with this id is already in the chain (valid or not)."""
        ...


@runtime_checkable
class Prefetching(Protocol):
    """Optional: a reader that can load many keys at once before a block is validated."""

    def prefetch(self, wanted: Mapping[str, Iterable[str]], tx_ids: Iterable[str]) -> None:
        """Warm the reader with the rows and transaction ids a block will ask for."""
        ...


Fetched = tuple[dict[str, dict[str, Row | None]], dict[str, bool]]


def is_prefetching(reader: object) -> TypeGuard[Prefetching]:
    """``isinstance(reader, Prefetching)``, without typing's protocol check.

    Asked once or twice per block; the runtime protocol check costs more than the rest of
    a small block's validation bookkeeping.
    """
    return callable(getattr(reader, "prefetch", None))


def is_fetching(reader: object) -> TypeGuard[Fetching]:
    """``isinstance(reader, Fetching)``, as cheaply as ``is_prefetching``."""
    return callable(getattr(reader, "fetch", None))


@runtime_checkable
class Fetching(Protocol):
    """Optional: a reader that returns many rows at once without waiting for its writers."""

    def fetch(self, wanted: Mapping[str, Iterable[str]], tx_ids: Iterable[str]) -> Fetched:
        """The rows (None when absent) and whether each transaction id is taken, as of now."""
        ...


class Delta:
    """Rows written by one block, in order; later writes to a key replace earlier ones."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {t.name: {} for t in TABLES}
        self.tx_ids: set[str] = set()

    def put(self, table: str, key: str, row: Mapping[str, Any]) -> None:
        """Record a full row for a key (insert or replace)."""
        expected = _COLUMN_SETS[table]
        if row.keys() != expected:
            raise KeyError(f"row for {table} has wrong columns: {sorted(expected ^ set(row))}")
        self.tables[table][key] = dict(row)

    def rows(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every (table, key, row) written, table by table."""
        for table, rows in self.tables.items():
            for key, row in rows.items():
                yield table, key, row

    def __len__(self) -> int:
        return sum(len(r) for r in self.tables.values())


class Overlay:
    """A reader that sees a base state with a block's pending writes on top."""

    def __init__(self, base: StateReader, delta: Delta) -> None:
        self.base = base
        self.delta = delta
        # The base does not change while a block is applied, so its answers are memoised,
        # by table then key: the rules ask for the same member and organisation rows several
        # times per tx.
        self._read: dict[str, dict[str, Row | None]] = {t.name: {} for t in TABLES}

    def get(self, table: str, key: str) -> Row | None:
        """The pending row if this block wrote one, else the base row."""
        row = self.delta.tables[table].get(key)
        if row is not None:
            return row
        memo = self._read[table]
        try:
            return memo[key]
        except KeyError:
            base = memo[key] = self.base.get(table, key)
            return base

    def tx_seen(self, tx_id: str) -> bool:
        """Seen in this block already, or in the chain below it."""
        return tx_id in self.delta.tx_ids or self.base.tx_seen(tx_id)


class Stacked:
    """A reader that sees a base state with several blocks' writes on top, newest last.

    A node validates block n+1 while block n is still being stored: the validator reads
    through the deltas of the blocks it validated but the store does not hold yet. A delta
    may stay on the stack after its block is stored (it then repeats what the base says).

    With a ``Fetching`` base, ``prefetch`` reads the block's rows in one go into this reader's
    own memo, without waiting for a block being written. Any base state that is at least as
    new as the oldest delta is right under the deltas, so the memo needs no invalidation; it
    lives as long as this reader, one block.
    """

    def __init__(self, base: StateReader, deltas: Sequence[Delta]) -> None:
        self.base = base
        self.deltas = tuple(reversed(deltas))  # newest first: the latest write wins
        self._rows: dict[str, dict[str, Row | None]] = {}
        self._seen: dict[str, bool] = {}

    def get(self, table: str, key: str) -> Row | None:
        """The newest pending row for the key, else the base row."""
        for delta in self.deltas:
            row = delta.tables[table].get(key)
            if row is not None:
                return row
        memo = self._rows.get(table)
        if memo is not None and key in memo:
            return memo[key]
        return self.base.get(table, key)

    def tx_seen(self, tx_id: str) -> bool:
        """Taken by a pending block, or in the chain below them."""
        for delta in self.deltas:
            if tx_id in delta.tx_ids:
                return True
        seen = self._seen.get(tx_id)
        return self.base.tx_seen(tx_id) if seen is None else seen

    def prefetch(self, wanted: Mapping[str, Iterable[str]], tx_ids: Iterable[str]) -> None:
        """Read what a block will ask for: into the memo, or as the base's own warm-up."""
        if is_fetching(self.base):
            self._rows, self._seen = self.base.fetch(wanted, tx_ids)
        elif is_prefetching(self.base):
            self.base.prefetch(wanted, tx_ids)


class MemoryState:
    """World state held in dictionaries; used to replay and recompute state from blocks."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {t.name: {} for t in TABLES}
        self.tx_ids: set[str] = set()

    def get(self, table: str, key: str) -> Row | None:
        """The row with this key, or None."""
        return self.tables[table].get(key)

    def tx_seen(self, tx_id: str) -> bool:
        """True when the id was applied before."""
        return tx_id in self.tx_ids

    def apply(self, delta: Delta, tx_ids: Iterable[str]) -> None:
        """Make a block's writes and transaction ids part of this state."""
        for table, key, row in delta.rows():
            self.tables[table][key] = dict(row)
        self.tx_ids.update(tx_ids)
