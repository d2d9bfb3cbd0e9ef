"""SqlChainStore: the chain, state tables and keyring of a node in one SQL database.

The same SQLAlchemy Core code runs on SQLite (the embedded default) and PostgreSQL; the only
backend-specific lines are in :func:`open_store` (connection setup: SQLite pragmas, and how
a write transaction begins).

Transactions are explicit: the store keeps one connection in driver autocommit mode, so
every read sees the latest committed state without holding a snapshot open, and every write
runs between an explicit ``BEGIN`` (``BEGIN IMMEDIATE`` on SQLite, so writers queue on the
lock instead of failing on upgrade) and ``COMMIT``. A failure or a crash before ``COMMIT``
leaves the database as it was.

Threads: a store is meant to be used by one thread at a time. It holds a single connection
and in-memory caches; as a safety net every public method takes the store's lock, so calls
from several threads are serialised (one statement at a time), never interleaved. For
parallel database work, open one store per thread. Several stores, in one process or many,
may share a database: ``append_block`` checks the head inside its transaction, so only one
of them can extend the chain at a given height.

Caches: the small identity tables (org, member, patient) are cached without bound and kept
up to date write-through by ``append_block``; other rows and transaction ids are cached per
block (filled by ``prefetch`` and by reads); ``append_block`` drops the entries it makes
stale. The caches
assume this store is the only writer of the state it reads; when another writer is noticed
(``append_block`` finds a head it did not write) every cache is dropped.

Writes: rows are encoded straight to driver-ready tuples and inserted with statements
compiled once per table (see ``_Insert``), without SQLAlchemy's per-row parameter handling;
key lists (``IN``) are expanded once per padded length (see ``_KeyList``).

Errors never carry stored values: messages name tables, columns and heights only, and
SQLAlchemy is told to hide statement parameters.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import NoneType
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Delete,
    Engine,
    Select,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    literal_column,
    select,
    update,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError

from rekam.encoding import canonical, parse
from rekam.ledger.block import ZERO_HASH, Block, Checkpoint
from rekam.ledger.state import TABLES, Delta, Fetched, MemoryState, Row, TableSpec
from rekam.service.ports import (
    BlockIndex,
    CommittedTx,
    ConflictError,
    SchemaVersionError,
    StoreError,
    TxRecord,
)
from rekam.storage import _schema as sc
from rekam.storage import migrations

log = logging.getLogger(__name__)

#: State tables read on almost every transaction, cached whole-row without bound.
IDENTITY_TABLES = frozenset({"org", "member", "patient"})
#: Most bound parameters in one ``IN (...)`` list.
MAX_PARAMS = 500
# IN lists are padded to one of these lengths, so a few statements serve every size.
_IN_SIZES = (1, 8, 32, 128, MAX_PARAMS)
_BLOCK_CACHE_LIMIT = 100_000
_ITER_BLOCKS_CHUNK = 64
_STATE_ROWS_CHUNK = 1000
_NO_HEIGHT = 2**62  # above every height: a range with no end
_INSERT_CHUNK = 1000
# Rows per multi-row INSERT statement (see _Insert).
_VALUES_ROWS = 100
_GENESIS_TX_TYPE = "genesis"

_T = TypeVar("_T")
_R = TypeVar("_R")
_P = ParamSpec("_P")
_CachedRow = dict[str, Any]
_MISSING: Any = object()  # not cached


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file (made absolute)."""
    return f"sqlite:///{Path(path).resolve()}"


def open_store(url: str) -> SqlChainStore:
    """Open (without initialising) the store at a SQLAlchemy URL.

    ``sqlite:////abs/path/chain.db`` or ``postgresql+psycopg://user@host:port/db``
    (``postgresql://`` is taken to mean psycopg 3). Raises SchemaVersionError when the
    database was written by an incompatible Rekam or is not a Rekam store.
    """
    try:
        sa_url = make_url(url)
    except ArgumentError:
        raise StoreError("the store location is not a database URL") from None
    if sa_url.drivername == "postgresql":
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    backend = sa_url.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            sa_url,
            isolation_level="AUTOCOMMIT",
            hide_parameters=True,
            connect_args={"cached_statements": 256},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        begin_sql = "BEGIN IMMEDIATE"
    elif backend == "postgresql":
        engine = create_engine(
            sa_url,
            isolation_level="AUTOCOMMIT",
            hide_parameters=True,
            connect_args={"application_name": "rekam"},
        )
        begin_sql = "BEGIN"
    else:
        raise StoreError(f"unsupported database backend {backend!r} (use sqlite or postgresql)")
    try:
        return SqlChainStore(engine, begin_sql)
    except BaseException:
        engine.dispose()
        raise


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _padded(keys: Sequence[str]) -> list[str]:
    """Pad an IN list to a standard length by repeating its last key (harmless in IN)."""
    size = next(n for n in _IN_SIZES if n >= len(keys))
    return [*keys, *([keys[-1]] * (size - len(keys)))]


def _db_detail(exc: BaseException) -> str:
    """A value-free description of a database error: SQLSTATE, SQLite error name or class."""
    orig = getattr(exc, "orig", None) or exc
    for attr in ("sqlstate", "sqlite_errorname"):
        value = getattr(orig, attr, None)
        if isinstance(value, str) and value:
            return f"{type(orig).__name__} {value}"
    return type(orig).__name__


# Column types whose values go to the driver unchanged when their type is exactly this one;
# anything else (a str subclass, a strlist, a wrong type) takes the checked path.
_EXACT: dict[str, type] = {"str": str, "int": int, "bool": bool}


class _Codec:
    """Converts one state table's rows between Python values and SQL parameters.

    Encoded rows are tuples in the table's column order (``key`` first), ready for the
    driver: strings, integers, booleans and strlists as canonical JSON text.
    """

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.table_name = sc.STATE_PREFIX + spec.name
        self.columns = spec.column_names()
        self.order = ("key", *self.columns)
        self.column_set = frozenset(self.columns)
        self.lists = tuple(c for c, kind, _ in spec.columns if kind == "strlist")
        self.bools = tuple(c for c, kind, _ in spec.columns if kind == "bool")
        self.kinds = {c: kind for c, kind, _ in spec.columns}
        #: A caller's own copy of a cached row (its lists copied too).
        self.copy: Callable[[_CachedRow], dict[str, Any]] = (
            self._copy_with_lists if self.lists else dict.copy
        )
        self._plan = tuple((c, _EXACT.get(kind)) for c, kind, _ in spec.columns)
        getter = operator.itemgetter(*self.columns)  # a tuple from two columns on
        self._cells: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            getter if len(self.columns) > 1 else lambda row: (getter(row),)
        )

    def encode(self, rows: Mapping[str, Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Driver parameters for rows by key, each a tuple in ``order``; types are checked so
        both backends store the same.

        Works column by column: a column whose values all have their exact type (or are
        None; NOT NULL is the database's to enforce) is taken as it is.
        """
        keys = list(rows)
        values = list(rows.values())
        if not set(map(type, keys)) <= {str} and not all(isinstance(k, str) for k in keys):
            raise StoreError(f"{self.table_name}: keys must be strings")
        for row in values:
            if row.keys() != self.column_set:
                raise StoreError(f"{self.table_name}: row has the wrong columns")
        columns: list[list[Any]] = [keys]
        for column, exact in self._plan:
            cells = [row[column] for row in values]
            if not set(map(type, cells)) <= {exact, NoneType}:
                cells = [
                    v if v is None or type(v) is exact else self.encode_value(column, v)
                    for v in cells
                ]
            columns.append(cells)
        return list(zip(*columns, strict=True))

    def encode_value(self, column: str, value: Any) -> Any:
        kind = self.kinds[column]
        ok = (
            (kind == "str" and isinstance(value, str))
            or (kind == "int" and type(value) is int)
            or (kind == "bool" and type(value) is bool)
            or (
                kind == "strlist"
                and isinstance(value, list)
                and all(isinstance(v, str) for v in value)
            )
        )
        if not ok:
            raise StoreError(f"{self.table_name}.{column} must hold a {kind}")
        if kind == "strlist":
            return canonical(value).decode("utf-8")
        return value

    def decode(
        self, mapping: Mapping[Any, Any] | Iterable[tuple[str, Any]]
    ) -> tuple[str, _CachedRow]:
        """(key, row) from a result row: strlist columns as lists, booleans as bool."""
        row: dict[str, Any] = dict(mapping)
        key = row.pop("key")
        return key, self._converted(row)

    def decode_row(self, values: Sequence[Any]) -> tuple[str, _CachedRow]:
        """(key, row) from a driver row of the whole table, in ``order``.

        The same as ``decode(zip(order, values))``, without building the key into the row
        first: ``rekam verify`` decodes every stored row.
        """
        if len(values) != len(self.order):
            raise StoreError(f"{self.table_name}: a row of {len(values)} columns")
        # The length was checked: strict zipping would only check it again.
        return values[0], self._converted(dict(zip(self.columns, values[1:])))  # noqa: B905

    def cells(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """A row's column values as the driver gives them back: strlists as their canonical
        JSON text. Booleans stay booleans, equal to the 0 and 1 SQLite gives back."""
        values = self._cells(row)
        if not self.lists:
            return values
        return tuple(
            canonical(v).decode("utf-8") if c in self.lists and v is not None else v
            for c, v in zip(self.columns, values, strict=True)
        )

    def _converted(self, row: dict[str, Any]) -> _CachedRow:
        """Strlist columns as lists, booleans as bool (SQLite gives 0 and 1)."""
        for column in self.lists:
            if row[column] is not None:
                row[column] = json.loads(row[column])
        for column in self.bools:
            if row[column] is not None:
                row[column] = bool(row[column])
        return row

    def normalise(self, key: str, row: Mapping[str, Any]) -> _CachedRow:
        """A row exactly as it reads back after being written."""
        return self.decode(zip(self.order, self.encode({key: row})[0], strict=True))[1]

    def _copy_with_lists(self, row: _CachedRow) -> dict[str, Any]:
        out = row.copy()
        for column in self.lists:
            value = out[column]
            if value is not None:
                out[column] = list(value)
        return out


def _on_cursor(conn: Connection, sql: str, params: Any = (), *, many: bool = False) -> list[Any]:
    """Run driver SQL on the connection's DBAPI cursor; the result rows (none for a write).

    Per statement, this skips SQLAlchemy's result set-up (cursor metadata, row processors),
    which cost more than SQLite's own work for the small statements a block makes (about
    twenty per block, so per-block CPU on small blocks). Errors come out as SQLAlchemy's,
    as from ``exec_driver_sql``: the driver's error wrapped in its ``DBAPIError`` subclass
    (``IntegrityError``, ...), and a lost connection invalidated so that it is replaced.
    The engine runs in the driver's autocommit mode with explicit ``BEGIN``/``COMMIT``, so
    statements here are part of whatever transaction the connection is in.
    """
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    dialect = conn.dialect
    try:
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description is not None else []
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            params,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,  # as the engines are made: no values in any message
            connection_invalidated=lost,
            dialect=dialect,
        ) from None
    finally:
        cursor.close()


class _Insert:
    """An INSERT of whole rows compiled once for the engine's dialect.

    Rows are tuples in the table's column order, already in driver types. They go to the
    driver through ``exec_driver_sql`` (so errors are wrapped as usual), without
    SQLAlchemy's per-row parameter processing:

    * with a positional paramstyle (SQLite's ``?``), as multi-row ``VALUES`` statements of
      ``_VALUES_ROWS`` rows each: one driver call, and one release of the GIL, per
      statement instead of per row (executemany lets other threads in after every row);
    * with a named paramstyle (psycopg's ``%(name)s``), and for the rows left over, with
      the driver's ``executemany`` (psycopg pipelines it; it parses a statement in Python
      whenever it has over 50 parameters, so long multi-row statements would cost more).

    Statements run on the DBAPI cursor (``_on_cursor``).
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        compiled = insert(table).compile(dialect=dialect)
        self.sql = compiled.string
        self.columns = tuple(str(c.key) for c in table.columns)
        self.named = not dialect.positional
        if not self.named and tuple(compiled.positiontup or ()) != self.columns:
            raise StoreError(f"unexpected parameter order in the INSERT into {table.name}")
        max_rows = dialect.insertmanyvalues_max_parameters // len(self.columns)
        self.rows_per_statement = min(_VALUES_ROWS, max_rows)
        self.multi_sql: str | None = None
        if not self.named and self.rows_per_statement > 2:
            # SQLAlchemy renders the first row's group (with any type casts) and then a
            # group per further row; check that rule on two and three rows, then apply it.
            two, three = (self._rows_sql(table, dialect, n) for n in (2, 3))
            if two.startswith(f"{self.sql}, "):
                more = ", " + two[len(self.sql) + 2 :]
                if three == two + more:
                    self.multi_sql = self.sql + more * (self.rows_per_statement - 1)

    def _rows_sql(self, table: Table, dialect: Dialect, rows: int) -> str:
        """SQLAlchemy's own multi-row INSERT of a number of rows."""
        values: list[dict[str, Any]] = [
            {c: bindparam(f"{c}_{row}") for c in self.columns} for row in range(rows)
        ]
        return insert(table).values(values).compile(dialect=dialect).string

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        done = 0
        if self.multi_sql is not None:
            size = self.rows_per_statement
            done = len(rows) - len(rows) % size
            for start in range(0, done, size):
                flat = tuple(itertools.chain.from_iterable(rows[start : start + size]))
                _on_cursor(conn, self.multi_sql, flat)
        for part in _chunks(rows[done:], _INSERT_CHUNK):
            if len(part) == 1 and not self.named:
                _on_cursor(conn, self.sql, part[0])
            elif self.named:
                named = [dict(zip(self.columns, r, strict=True)) for r in part]
                _on_cursor(conn, self.sql, named, many=True)
            else:
                _on_cursor(conn, self.sql, list(part), many=True)


class _Prepared:
    """A statement compiled once for the engine's dialect, to run on the DBAPI cursor.

    The hottest reads (one row by key, one transaction id) skip SQLAlchemy's per-execution
    work; the driver then caches the statement (SQLite's statement cache, psycopg's
    automatic server-side prepare).
    """

    def __init__(self, stmt: Select[Any], dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        self.columns = tuple(str(c.key) for c in stmt.selected_columns)
        self.positions = tuple(compiled.positiontup or ()) if dialect.positional else None
        self.defaults: dict[str, Any] = dict(compiled.params)  # e.g. a LIMIT's value

    def params(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        """Parameters in the driver's style."""
        merged = {**self.defaults, **values}
        if self.positions is None:
            return merged
        return tuple(merged[name] for name in self.positions)


def _heights(
    rows: Select[Any], height: ColumnElement[Any], *then: ColumnElement[Any]
) -> Select[Any]:
    """``rows`` whose ``height`` is from the bound ``low`` up to (excluding) ``high``, in order
    of height (then of ``then``)."""
    return rows.where(height >= bindparam("low"), height < bindparam("high")).order_by(
        height, *then
    )


def _paged(
    place: ColumnElement[Any], rows: Select[Any], dialect: Dialect
) -> tuple[_Prepared, _Prepared]:
    """Statements reading ``rows`` a chunk at a time in the order of ``place``, the first
    column of each row: the first chunk, and the chunk after the place bound to ``last``."""
    in_order = rows.order_by(place).limit(_STATE_ROWS_CHUNK)
    return (
        _Prepared(in_order, dialect),
        _Prepared(in_order.where(place > bindparam("last")), dialect),
    )


class _KeyList:
    """A statement with an expanding ``IN`` parameter named ``ks``, compiled once.

    Key lists are padded (see ``_padded``), so the statement is expanded once per standard
    list length; it then runs on the DBAPI cursor (``_on_cursor``), skipping SQLAlchemy's
    expansion of the list and its result set-up on every execution.
    """

    def __init__(self, stmt: Select[Any] | Delete, dialect: Dialect) -> None:
        self._compiled = stmt.compile(dialect=dialect)
        self._positional = dialect.positional
        self._by_size: dict[int, tuple[str, tuple[str, ...]]] = {}

    def run(self, conn: Connection, keys: Sequence[str]) -> list[Any]:
        padded = _padded(keys)
        expanded = self._by_size.get(len(padded))
        if expanded is None:
            expanded = self._by_size[len(padded)] = self._expand(padded)
        sql, names = expanded
        params = tuple(padded) if self._positional else dict(zip(names, padded, strict=True))
        return _on_cursor(conn, sql, params)

    def _expand(self, keys: list[str]) -> tuple[str, tuple[str, ...]]:
        state = self._compiled.construct_expanded_state({"ks": keys})
        names = tuple(state.positiontup or ()) if self._positional else tuple(state.parameters)
        if [state.parameters[name] for name in names] != keys:
            raise StoreError("a key list statement has parameters besides its keys")
        return state.statement, names


def _in_keys(column: ColumnElement[Any]) -> ColumnElement[bool]:
    """``column IN (:ks)``, the list expanded by _KeyList."""
    return column.in_(bindparam("ks", expanding=True))


def _serialised(
    method: Callable[Concatenate[SqlChainStore, _P], _R],
) -> Callable[Concatenate[SqlChainStore, _P], _R]:
    """Run a store method under the store's lock (one statement at a time per connection)."""

    @functools.wraps(method)
    def serialised(self: SqlChainStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return serialised


class SqlChainStore:
    """A ChainStore (and Prefetching StateReader) on SQLite or PostgreSQL.

    Meant for one thread at a time (calls from several threads are serialised by a lock);
    see the module documentation.
    """

    def __init__(self, engine: Engine, begin_sql: str = "BEGIN") -> None:
        self._engine = engine
        self._begin_sql = begin_sql
        self._lock = threading.RLock()
        # A second connection, for ``fetch`` only: a validator's reads need not wait while
        # the previous block is written and synced on the main one (WAL readers and
        # PostgreSQL readers do not block on a writer).
        self._read_lock = threading.Lock()
        self._reader: Connection | None = None
        self._codecs = {spec.name: _Codec(spec) for spec in TABLES}
        # Cached rows by table, then key (None: known absent); see the module documentation.
        self._rows: dict[str, dict[str, _CachedRow | None]] = {spec.name: {} for spec in TABLES}
        self._block_txs: dict[str, bool] = {}
        self._initialised = False
        self._closed = False
        self._stage = ""
        try:
            self._conn = engine.connect()
        except SQLAlchemyError as exc:
            raise StoreError(f"could not open the store ({_db_detail(exc)})") from None
        try:
            self._build_statements()  # after connecting: the dialect knows its server then
            self._check_schema()
        except BaseException:
            self._conn.close()
            raise

    # -- statements ------------------------------------------------------------------------

    def _build_statements(self) -> None:
        dialect = self._engine.dialect
        self._get_one: dict[str, _Prepared] = {}
        self._get_many: dict[str, _KeyList] = {}
        self._delete_many: dict[str, _KeyList] = {}
        self._state_chunks: dict[str, tuple[_Prepared, _Prepared]] = {}
        self._cell_chunks: dict[str, tuple[_Prepared, _Prepared]] = {}
        for name, table in sc.state_tables.items():
            self._get_one[name] = _Prepared(
                select(table).where(table.c.key == bindparam("k")), dialect
            )
            self._get_many[name] = _KeyList(select(table).where(_in_keys(table.c.key)), dialect)
            self._delete_many[name] = _KeyList(delete(table).where(_in_keys(table.c.key)), dialect)
            # state_rows reads a table in key order, a chunk at a time: the first chunk, then
            # each one after the last key read.
            self._state_chunks[name] = _paged(table.c.key, select(table), dialect)
            # state_cells needs no order, and reads each row with its place first: on SQLite
            # the rowid, the order the rows are stored in (about 1.6 us a row where key order
            # takes 2.3, each row looked up from the key's index); elsewhere the key.
            place = literal_column("rowid") if dialect.name == "sqlite" else table.c.key
            self._cell_chunks[name] = _paged(place, select(place, table), dialect)
        self._insert_state = {
            name: _Insert(table, dialect) for name, table in sc.state_tables.items()
        }
        for name, codec in self._codecs.items():
            if self._insert_state[name].columns != codec.order:
                raise StoreError(f"{codec.table_name} does not match the ledger's columns")
        self._insert_block = _Insert(sc.blocks, dialect)
        self._insert_tx = _Insert(sc.txs, dialect)
        txs = sc.txs
        self._tx_one = _Prepared(
            select(txs.c.tx_id)
            .where(txs.c.tx_id == bindparam("k"), txs.c.authenticated.is_(True))
            .limit(1),
            dialect,
        )
        self._tx_many = _KeyList(
            select(txs.c.tx_id).where(_in_keys(txs.c.tx_id), txs.c.authenticated.is_(True)),
            dialect,
        )
        blocks = sc.blocks
        self._head_stmt = (
            select(blocks.c.height, blocks.c.hash).order_by(blocks.c.height.desc()).limit(1)
        )
        self._head_prepared = _Prepared(self._head_stmt, dialect)
        self._block_txs_prepared = _Prepared(
            select(*self._tx_columns())
            .where(sc.txs.c.height == bindparam("h"))
            .order_by(sc.txs.c.idx),
            dialect,
        )
        # Blocks are read a range of heights at a time: headers, then their transactions
        # (bytes only, or whole records).
        self._range_headers = _Prepared(
            _heights(select(blocks.c.height, blocks.c.header, blocks.c.signature), blocks.c.height),
            dialect,
        )
        self._range_index = _Prepared(
            _heights(
                select(
                    blocks.c.height, blocks.c.hash, blocks.c.prev, blocks.c.time, blocks.c.tx_count
                ),
                blocks.c.height,
            ),
            dialect,
        )
        self._range_txs = {
            records: _Prepared(
                _heights(
                    select(*(self._tx_columns() if records else (txs.c.height, txs.c.raw))),
                    txs.c.height,
                    txs.c.idx,
                ),
                dialect,
            )
            for records in (False, True)
        }

    # -- lifecycle -------------------------------------------------------------------------

    @_serialised
    def close(self) -> None:
        """Release the connection; the store cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        with self._read_lock:
            self._close_reader()
        try:
            self._conn.close()
        finally:
            self._engine.dispose()

    def __enter__(self) -> SqlChainStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema(self) -> None:
        """Find out whether the database is empty, a usable Rekam store, or neither."""
        with self._reading("reading the schema"):
            names = set(inspect(self._conn).get_table_names())
        if sc.meta.name not in names:
            if names:
                raise SchemaVersionError(
                    "the database is not a Rekam store: it holds tables but no Rekam meta table"
                )
            self._initialised = False
            return
        with self._reading("reading the schema version"):
            found = self._schema_version(self._conn)
        target = migrations.SCHEMA_VERSION
        if found != target:
            migrations.plan(found, target)  # refuse before touching anything
            self._migrate(target)
        self._initialised = True

    @staticmethod
    def _schema_version(conn: Connection, for_update: bool = False) -> int:
        stmt = select(sc.meta.c.value).where(sc.meta.c.key == "schema_version")
        if for_update:
            stmt = stmt.with_for_update()
        value = conn.execute(stmt).scalar()
        if value is None:
            raise SchemaVersionError(
                "the database is not a Rekam store: its meta table has no schema version"
            )
        try:
            return int(value)
        except ValueError:
            raise SchemaVersionError(
                "the database is not a Rekam store: its schema version is not a number"
            ) from None

    def _migrate(self, target: int) -> None:
        try:
            with self._transaction() as conn:
                found = self._schema_version(conn, for_update=True)
                for version, step in migrations.plan(found, target):
                    log.info(
                        "migrating the store schema from version %d to %d", version - 1, version
                    )
                    step(conn)
                    conn.execute(
                        update(sc.meta)
                        .where(sc.meta.c.key == "schema_version")
                        .values(value=str(version))
                    )
        except SQLAlchemyError as exc:
            self._fail(exc, f"migrating the store schema to version {target}")

    @_serialised
    def _refresh(self) -> bool:
        """True when the store holds a chain (re-checks if it was empty when opened)."""
        if self._closed:
            raise StoreError("the store is closed")
        if not self._initialised:
            self._check_schema()
        return self._initialised

    def _require_initialised(self) -> None:
        if not self._refresh():
            raise StoreError("the store is not initialised (no genesis block)")

    # -- transactions and errors -----------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One database transaction on the store's connection; rolls back on any error."""
        if self._closed:
            raise StoreError("the store is closed")
        conn = self._conn
        _on_cursor(conn, self._begin_sql)
        try:
            yield conn
            _on_cursor(conn, "COMMIT")
        except BaseException:
            self._rollback_quietly()
            raise

    def _rollback_quietly(self) -> None:
        try:
            _on_cursor(self._conn, "ROLLBACK")
        except SQLAlchemyError:
            # The connection is gone or the transaction ended already; a lost connection
            # aborts its transaction on the server.
            self._reset_connection()

    def _reset_connection(self) -> None:
        """After a lost connection, let SQLAlchemy reconnect on next use."""
        try:
            self._conn.rollback()
        except SQLAlchemyError:
            log.debug("store connection reset failed", exc_info=False)

    def _fail(self, exc: SQLAlchemyError, what: str) -> NoReturn:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            self._reset_connection()
        self._drop_caches()
        raise StoreError(f"{what} failed ({_db_detail(exc)})") from None

    def _raw_first(
        self, prepared: _Prepared, values: Mapping[str, Any], what: str
    ) -> Sequence[Any] | None:
        """The first result row of a prepared statement, run on the DBAPI connection."""
        if self._closed:
            raise StoreError("the store is closed")
        try:
            rows = _on_cursor(self._conn, prepared.sql, prepared.params(values))
        except SQLAlchemyError as exc:
            self._fail(exc, what)
        return rows[0] if rows else None

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            yield
        except SQLAlchemyError as exc:
            self._fail(exc, what)

    # -- caches ----------------------------------------------------------------------------

    def _drop_caches(self) -> None:
        for cache in self._rows.values():
            cache.clear()
        self._block_txs.clear()

    def _remember(self, table: str, key: str, row: _CachedRow | None) -> None:
        cache = self._rows[table]
        if len(cache) >= _BLOCK_CACHE_LIMIT and table not in IDENTITY_TABLES:
            cache.clear()
        cache[key] = row

    def _remember_tx(self, tx_id: str, seen: bool) -> None:
        if len(self._block_txs) >= _BLOCK_CACHE_LIMIT:
            self._block_txs.clear()
        self._block_txs[tx_id] = seen

    # -- StateReader and Prefetching -------------------------------------------------------

    # get and tx_seen answer cache hits without the lock (a dict lookup is atomic): the rules
    # call them several times per transaction, and a node validates the next block while
    # this store is busy writing the previous one. Misses take the lock and read.

    def get(self, table: str, key: str) -> Row | None:
        """The state row with this key as of the chain head, or None."""
        try:
            hit = self._rows[table].get(key, _MISSING)
        except KeyError:
            raise KeyError(f"unknown state table {table}") from None
        if hit is _MISSING:
            with self._lock:
                hit = self._read_row(table, key)
        return None if hit is None else self._codecs[table].copy(hit)

    def _read_row(self, table: str, key: str) -> _CachedRow | None:
        if not self._initialised and not self._refresh():
            return None
        stmt = self._get_one[table]
        found = self._raw_first(stmt, {"k": key}, f"reading {sc.STATE_PREFIX}{table}")
        row = None
        if found is not None:
            row = self._codecs[table].decode_row(found)[1]
        self._remember(table, key, row)
        return row

    def tx_seen(self, tx_id: str) -> bool:
        """True when an authenticated transaction with this id is in the chain (valid or not)."""
        seen = self._block_txs.get(tx_id)
        if seen is not None:
            return seen
        with self._lock:
            if not self._initialised and not self._refresh():
                return False
            seen = self._raw_first(self._tx_one, {"k": tx_id}, "reading txs") is not None
            self._remember_tx(tx_id, seen)
            return seen

    def fetch(self, wanted: Mapping[str, Iterable[str]], tx_ids: Iterable[str]) -> Fetched:
        """The listed rows (None when absent) and transaction ids, read on the second
        connection without the store's lock and without touching its caches.

        Each query sees the latest committed state when it runs; a block committed meanwhile
        may or may not show, which is fine for a caller that overlays the blocks it has not
        seen stored (``Stacked``).
        """
        for table in wanted:
            if table not in self._get_many:
                raise KeyError(f"unknown state table {table}")
        rows: dict[str, dict[str, Row | None]] = {}
        seen: dict[str, bool] = {}
        if not self._initialised and not self._refresh():
            return rows, seen
        with self._read_lock:
            if self._closed:
                raise StoreError("the store is closed")
            try:
                if self._reader is None:
                    self._reader = self._engine.connect()
                conn = self._reader
                for table, keys in wanted.items():
                    codec = self._codecs[table]
                    found: dict[str, Row | None] = dict.fromkeys(keys)
                    for chunk in _chunks(sorted(found), MAX_PARAMS):
                        for r in self._get_many[table].run(conn, chunk):
                            key, row = codec.decode_row(r)
                            found[key] = row
                    rows[table] = found
                ids = sorted(set(tx_ids))
                for chunk in _chunks(ids, MAX_PARAMS):
                    present = {r[0] for r in self._tx_many.run(conn, chunk)}
                    seen.update((tx_id, tx_id in present) for tx_id in chunk)
            except SQLAlchemyError as exc:
                self._close_reader()
                raise StoreError(f"reading state failed ({_db_detail(exc)})") from None
        return rows, seen

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except SQLAlchemyError:
                log.debug("closing the store's read connection failed", exc_info=False)

    @_serialised
    def prefetch(self, wanted: Mapping[str, Iterable[str]], tx_ids: Iterable[str]) -> None:
        """Load the listed rows and transaction ids with a few ``IN`` queries."""
        for table in wanted:
            if table not in self._get_many:
                raise KeyError(f"unknown state table {table}")
        if not self._initialised and not self._refresh():
            return
        for table, keys in wanted.items():
            cache = self._rows[table]
            missing = sorted({k for k in keys if k not in cache})
            codec = self._codecs[table]
            for chunk in _chunks(missing, MAX_PARAMS):
                with self._reading(f"reading {sc.STATE_PREFIX}{table}"):
                    result = self._get_many[table].run(self._conn, chunk)
                    found = dict(codec.decode_row(r) for r in result)
                for key in chunk:
                    self._remember(table, key, found.get(key))
        ids = sorted({t for t in tx_ids if t not in self._block_txs})
        for chunk in _chunks(ids, MAX_PARAMS):
            with self._reading("reading txs"):
                present = {r[0] for r in self._tx_many.run(self._conn, chunk)}
            for tx_id in chunk:
                self._remember_tx(tx_id, tx_id in present)

    # -- chain -----------------------------------------------------------------------------

    @_serialised
    def head(self) -> tuple[int, str] | None:
        """(height, hash) of the last block, or None before genesis."""
        if not self._refresh():
            return None
        with self._reading("reading the chain head"):
            row = self._conn.execute(self._head_stmt).first()
        return None if row is None else (int(row[0]), str(row[1]))

    @_serialised
    def network_id(self) -> str | None:
        """The network id recorded at initialisation, or None before genesis."""
        if not self._refresh():
            return None
        with self._reading("reading meta"):
            value = self._conn.execute(
                select(sc.meta.c.value).where(sc.meta.c.key == "network")
            ).scalar()
        return None if value is None else str(value)

    @_serialised
    def schema_version(self) -> int | None:
        """The schema version of the database, or None when it is empty."""
        if not self._refresh():
            return None
        with self._reading("reading meta"):
            return self._schema_version(self._conn)

    @_serialised
    def initialise(self, genesis: Block, delta: Delta | None = None) -> None:
        """Create the schema and store the genesis block (and, optionally, its state writes).

        The genesis document is the block's single transaction; its id is the SHA-256 hex of
        the document bytes. Refuses a database that holds anything already.
        """
        if genesis.height != 0 or genesis.prev != ZERO_HASH or len(genesis.txs) != 1:
            raise StoreError("a genesis block has height 0, a zero prev hash and one document")
        if self._refresh():
            raise StoreError("the store is initialised already")
        raw = genesis.txs[0]
        tx = CommittedTx(hashlib.sha256(raw).hexdigest(), _GENESIS_TX_TYPE, True, "ok")
        self._stage = "creating the schema"
        try:
            with self._transaction() as conn:
                if inspect(conn).get_table_names():
                    raise StoreError("the store is initialised already")
                sc.metadata.create_all(conn)
                self._stage = "writing meta"
                conn.execute(
                    insert(sc.meta),
                    [
                        {"key": "schema_version", "value": str(migrations.SCHEMA_VERSION)},
                        {"key": "network", "value": str(genesis.header["network"])},
                    ],
                )
                self._write_block(conn, genesis, [tx], delta or Delta())
        except SQLAlchemyError as exc:
            self._fail(exc, f"initialising the store ({self._stage})")
        self._initialised = True
        self._drop_caches()
        log.info("store initialised with the genesis block")

    @_serialised
    def append_block(
        self,
        block: Block,
        txs: Sequence[CommittedTx],
        delta: Delta,
        wrapped_keys: Sequence[tuple[str, int, str, bytes]] = (),
    ) -> None:
        """Atomically store a block, its transaction results, its state writes and the
        off-chain wrapped keys of the record versions it commits.

        Raises ConflictError unless the block extends the current head (checked inside the
        transaction; the primary key on height settles races between writers).
        """
        if len(txs) != len(block.txs):
            raise StoreError(f"block {block.height}: one result per transaction is needed")
        keys = self._wrapped_params(wrapped_keys)
        self._require_initialised()
        height = block.height
        self._stage = "reading the head"
        try:
            with self._transaction() as conn:
                found = _on_cursor(conn, self._head_prepared.sql, self._head_prepared.params({}))
                head = found[0] if found else None
                if head is None or height != head[0] + 1 or block.prev != head[1]:
                    at = "none" if head is None else str(head[0])
                    raise ConflictError(
                        f"block {height} does not extend the chain head (height {at})"
                    )
                self._write_block(conn, block, txs, delta)
                if keys:
                    self._stage = "wrapped_keys"
                    self._write_wrapped(conn, keys)
        except ConflictError:
            self._drop_caches()
            raise
        except IntegrityError as exc:
            if self._stage == "blocks":
                self._drop_caches()
                raise ConflictError(f"block {height} was stored by another writer") from None
            self._fail(exc, f"storing block {height} ({self._stage})")
        except SQLAlchemyError as exc:
            self._fail(exc, f"storing block {height} ({self._stage})")
        except BaseException:
            self._drop_caches()
            raise
        # Only what this block wrote goes stale. Rows prefetched for the next block (a node
        # validates block n+1 while block n is stored) stay cached: the validator sees this
        # block's writes through its own overlay, and reads the store for everything else.
        for tx in txs:
            self._block_txs.pop(tx.tx_id, None)
        for table, rows in delta.tables.items():
            if not rows:
                continue
            cache = self._rows[table]
            if table in IDENTITY_TABLES:
                codec = self._codecs[table]
                for key, row in rows.items():
                    cache[key] = codec.normalise(key, row)
            else:
                for key in rows:
                    cache.pop(key, None)
        log.debug("stored block %d with %d transactions", height, len(txs))

    def _write_block(
        self, conn: Connection, block: Block, txs: Sequence[CommittedTx], delta: Delta
    ) -> None:
        """Insert a block, its transactions and its state writes (``_stage`` tracks where)."""
        height = block.height
        self._stage = "blocks"
        # Tuples in each table's column order (see _schema): the _Insert checks that order.
        self._insert_block.run(
            conn,
            [
                (
                    height,
                    block.hash,
                    block.prev,
                    block.time,
                    len(block.txs),
                    block.header_bytes,
                    bytes(block.signature),
                )
            ],
        )
        self._stage = "txs"
        self._insert_tx.run(
            conn,
            [
                (
                    height,
                    idx,
                    result.tx_id,
                    result.tx_type,
                    bytes(raw),
                    bool(result.valid),
                    result.code,
                    bool(result.authenticated),
                )
                for idx, (raw, result) in enumerate(zip(block.txs, txs, strict=True))
            ],
        )
        for table, written in delta.tables.items():
            if written:
                self._stage = sc.STATE_PREFIX + table
                self._upsert(conn, table, written)

    def _upsert(
        self, conn: Connection, table: str, written: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Replace rows by key: delete the keys, then insert the new rows (any backend)."""
        rows = self._codecs[table].encode(written)
        # Rows this block's reads (or the identity cache) showed absent need no delete: most
        # writes are new rows.
        cached = self._rows[table]
        keys = [key for key in written if cached.get(key, _MISSING) is not None]
        for chunk in _chunks(keys, MAX_PARAMS):
            self._delete_many[table].run(conn, chunk)
        self._insert_state[table].run(conn, rows)

    @_serialised
    def get_block(self, height: int) -> Block | None:
        """The block at a height, or None."""
        blocks = list(self.iter_blocks(height, height + 1)) if height >= 0 else []
        return blocks[0] if blocks else None

    def iter_blocks(self, start: int = 0, end: int | None = None) -> Iterator[Block]:
        """Blocks from start up to (excluding) end, in order, read in chunks."""
        for block, _ in self._iter_blocks(start, end, records=False):
            yield block

    def iter_block_records(
        self, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[Block, list[TxRecord]]]:
        """Blocks from start up to (excluding) end, each with what ``block_txs`` gives for it.

        One read of the transactions table serves both: the blocks' transaction bytes are the
        records' own.
        """
        return self._iter_blocks(start, end, records=True)

    def _iter_blocks(
        self, start: int, end: int | None, *, records: bool
    ) -> Iterator[tuple[Block, list[TxRecord]]]:
        if not self._refresh():
            return
        if end is None:
            head = self.head()
            if head is None:
                return
            end = head[0] + 1
        headers_stmt, txs_stmt = self._range_headers, self._range_txs[records]
        low = max(start, 0)
        # The first two chunks are one block each and each next one twice as long, up to the
        # limit: the first blocks come back at once (a verifier hands each to its workers
        # straight away) and a long read still takes few statements.
        size, next_size = 1, 1
        while low < end:
            high = min(low + size, end)
            size, next_size = next_size, min(2 * next_size, _ITER_BLOCKS_CHUNK)
            bounds = {"low": low, "high": high}
            with self._lock, self._reading(f"reading blocks {low} to {high - 1}"):
                headers = _on_cursor(self._conn, headers_stmt.sql, headers_stmt.params(bounds))
                rows = _on_cursor(self._conn, txs_stmt.sql, txs_stmt.params(bounds))
            found: dict[int, list[TxRecord]] = {}
            raws: dict[int, list[bytes]] = {}
            for row in rows:
                if records:
                    record = self._tx_record(row)
                    found.setdefault(record.height, []).append(record)
                else:
                    raws.setdefault(int(row[0]), []).append(bytes(row[1]))
            for h, header, signature in headers:
                height = int(h)
                mine = found.get(height, [])
                txs = tuple(r.raw for r in mine) if records else tuple(raws.get(height, ()))
                yield Block(parse(bytes(header)), bytes(signature), txs), mine
            if len(headers) < high - low:
                return  # past the head (or a gap, which the chain never has)
            low = high

    @_serialised
    def get_tx(self, tx_id: str) -> TxRecord | None:
        """A committed transaction by id (its first occurrence, should it be replayed)."""
        if not self._refresh():
            return None
        t = sc.txs
        with self._reading("reading txs"):
            row = self._conn.execute(
                select(*self._tx_columns())
                .where(t.c.tx_id == tx_id)
                # The authenticated occurrence is the transaction; a forged copy is not.
                .order_by(t.c.authenticated.desc(), t.c.height, t.c.idx)
                .limit(1)
            ).first()
        return None if row is None else self._tx_record(row)

    @_serialised
    def block_txs(self, height: int) -> list[TxRecord]:
        """The stored results of a block's transactions, in block order."""
        if not self._refresh():
            return []
        prepared = self._block_txs_prepared
        with self._reading("reading txs"):
            rows = _on_cursor(self._conn, prepared.sql, prepared.params({"h": height}))
        return [self._tx_record(r) for r in rows]

    @staticmethod
    def _tx_columns() -> tuple[Any, ...]:
        t = sc.txs
        return (
            t.c.tx_id,
            t.c.raw,
            t.c.height,
            t.c.idx,
            t.c.valid,
            t.c.code,
            t.c.authenticated,
            t.c.type,
        )

    @staticmethod
    def _tx_record(row: Any) -> TxRecord:
        tx_id, raw, height, idx, valid, code, authenticated, tx_type = row
        # The frozen dataclass's __init__ sets each field through object.__setattr__, half
        # the cost of reading a record; filling the instance's dictionary makes an equal
        # object (the tests compare them with TxRecord(...)), as Transaction._build does.
        record = object.__new__(TxRecord)
        record.__dict__.update(
            tx_id=str(tx_id),
            raw=bytes(raw),
            height=int(height),
            index=int(idx),
            valid=bool(valid),
            code=str(code),
            authenticated=bool(authenticated),
            tx_type=str(tx_type),
        )
        return record

    def block_index(self, start: int = 0, end: int | None = None) -> Iterator[BlockIndex]:
        """The stored index columns of blocks from start up to (excluding) end, in order."""
        if not self._refresh():
            return
        bounds = {"low": start, "high": _NO_HEIGHT if end is None else end}
        stmt = self._range_index
        with self._lock, self._reading("reading blocks"):
            # On the DBAPI cursor: verify reads the index of each few dozen blocks.
            rows = _on_cursor(self._conn, stmt.sql, stmt.params(bounds))
        for height, digest, prev, time, tx_count in rows:
            yield BlockIndex(int(height), str(digest), str(prev), int(time), int(tx_count))

    # -- state -----------------------------------------------------------------------------

    def _table(self, table: str) -> Table:
        sql_table = sc.state_tables.get(table)
        if sql_table is None:
            raise KeyError(f"unknown state table {table}")
        return sql_table

    def state_rows(self, table: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (key, row) of a state table, ordered by key, read in chunks."""
        self._table(table)
        codec = self._codecs[table]
        for rows in self._state_pieces(table):
            yield from (codec.decode_row(r) for r in rows)

    def state_cells(self, table: str) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """Every (key, cells) of a state table, in no set order: the row's column values as
        stored, in column order, undecoded. Equal to ``row_cells(table)`` of an equal row.

        ``rekam verify`` compares every stored row with the row it recomputes: this way no
        stored row is decoded; the recomputed row is turned into cells instead, which costs
        a tuple of its values (and a JSON text for each strlist).
        """
        self._table(table)
        width = 1 + len(self._codecs[table].order)
        for rows in self._state_pieces(table, self._cell_chunks):
            for r in rows:
                if len(r) != width:
                    raise StoreError(f"{table}: a row of {len(r) - 1} columns")
                yield r[1], tuple(r[2:])

    def row_cells(self, table: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
        """A function giving a row's cells as ``state_cells`` gives them for an equal row."""
        self._table(table)
        return self._codecs[table].cells

    def _state_pieces(
        self, table: str, chunks: dict[str, tuple[_Prepared, _Prepared]] | None = None
    ) -> Iterator[list[Any]]:
        """A state table's driver rows, in chunks: by default by key, each the key and then
        the columns; with ``chunks``, in their order, each row's place first."""
        sql_table = self._table(table)
        if not self._refresh():
            return
        first, after = (self._state_chunks if chunks is None else chunks)[table]
        last: str | None = None
        while True:
            chunk = first if last is None else after
            params = chunk.params({} if last is None else {"last": last})
            with self._lock, self._reading(f"reading {sql_table.name}"):
                # Plain driver rows (verify reads every row of every table: SQLAlchemy's row
                # objects cost a fifth of the reading).
                rows = _on_cursor(self._conn, chunk.sql, params)
            yield rows
            if len(rows) < _STATE_ROWS_CHUNK:
                return
            last = rows[-1][0]

    @_serialised
    def query(
        self, table: str, where: Mapping[str, Any], order_by: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Rows whose columns equal the given values (None matches NULL), ordered by a column
        (then key) or by key."""
        sql_table = self._table(table)
        codec = self._codecs[table]
        allowed = {"key", *codec.columns}
        for column in (*where, *([order_by] if order_by else [])):
            if column not in allowed:
                raise KeyError(f"{sql_table.name} has no column {column}")
        if not self._refresh():
            return []
        stmt = select(sql_table)
        for column, value in where.items():
            if value is None:
                stmt = stmt.where(sql_table.c[column].is_(None))
            elif column == "key":
                stmt = stmt.where(sql_table.c.key == value)
            else:
                stmt = stmt.where(sql_table.c[column] == codec.encode_value(column, value))
        if order_by and order_by != "key":
            stmt = stmt.order_by(sql_table.c[order_by])
        stmt = stmt.order_by(sql_table.c.key)
        with self._reading(f"querying {sql_table.name}"):
            return [codec.decode(m) for m in self._conn.execute(stmt).mappings()]

    @_serialised
    def replace_state(self, state: MemoryState) -> None:
        """Atomically replace every state table with the rows of a recomputed state."""
        self._require_initialised()
        encoded = {
            spec.name: self._codecs[spec.name].encode(
                dict(sorted(state.tables.get(spec.name, {}).items()))
            )
            for spec in TABLES
        }
        stage = "state"
        try:
            with self._transaction() as conn:
                for spec in TABLES:
                    sql_table = sc.state_tables[spec.name]
                    stage = sql_table.name
                    conn.execute(delete(sql_table))
                    self._insert_state[spec.name].run(conn, encoded[spec.name])
        except SQLAlchemyError as exc:
            self._fail(exc, f"replacing state ({stage})")
        finally:
            self._drop_caches()
        log.info("state replaced")

    # -- keyring ---------------------------------------------------------------------------

    @_serialised
    def put_wrapped_keys(self, entries: Sequence[tuple[str, int, str, bytes]]) -> None:
        """Store (record, version, recipient, wrapped key) entries, replacing equal keys."""
        params = self._wrapped_params(entries)
        if not params:
            return
        self._require_initialised()
        try:
            with self._transaction() as conn:
                self._write_wrapped(conn, params)
        except SQLAlchemyError as exc:
            self._fail(exc, "writing wrapped_keys")

    @staticmethod
    def _wrapped_params(entries: Sequence[tuple[str, int, str, bytes]]) -> list[dict[str, Any]]:
        """Check wrapped-key entries and turn them into parameter rows (last one wins)."""
        rows: dict[tuple[str, int, str], bytes] = {}
        for record, version, recipient, wrapped in entries:
            if not (
                isinstance(record, str)
                and type(version) is int
                and isinstance(recipient, str)
                and isinstance(wrapped, bytes | bytearray)
            ):
                raise StoreError("wrapped_keys entries are (str, int, str, bytes)")
            rows[(record, version, recipient)] = bytes(wrapped)
        return [
            {"record": r, "version": v, "recipient": p, "wrapped": w}
            for (r, v, p), w in rows.items()
        ]

    @staticmethod
    def _write_wrapped(conn: Connection, params: list[dict[str, Any]]) -> None:
        t = sc.wrapped_keys
        conn.execute(
            delete(t).where(
                t.c.record == bindparam("r"),
                t.c.version == bindparam("v"),
                t.c.recipient == bindparam("p"),
            ),
            [{"r": p["record"], "v": p["version"], "p": p["recipient"]} for p in params],
        )
        conn.execute(insert(t), params)

    @_serialised
    def get_wrapped_key(self, record: str, version: int, recipient: str) -> bytes | None:
        """One recipient's wrapped key for a record version."""
        if not self._refresh():
            return None
        t = sc.wrapped_keys
        with self._reading("reading wrapped_keys"):
            value = self._conn.execute(
                select(t.c.wrapped).where(
                    t.c.record == record, t.c.version == version, t.c.recipient == recipient
                )
            ).scalar()
        return None if value is None else bytes(value)

    @_serialised
    def wrapped_versions(self) -> set[tuple[str, int]]:
        """Every (record, version) this node holds at least one wrapped key for."""
        if not self._refresh():
            return set()
        t = sc.wrapped_keys
        with self._reading("reading wrapped_keys"):
            rows = self._conn.execute(select(t.c.record, t.c.version).distinct()).all()
        return {(str(r), int(v)) for r, v in rows}

    @_serialised
    def wrapped_keys_for(self, recipient: str) -> list[tuple[str, int, bytes]]:
        """Every (record, version, wrapped key) held for a recipient, in record order."""
        if not self._refresh():
            return []
        t = sc.wrapped_keys
        with self._reading("reading wrapped_keys"):
            rows = self._conn.execute(
                select(t.c.record, t.c.version, t.c.wrapped)
                .where(t.c.recipient == recipient)
                .order_by(t.c.record, t.c.version)
            ).all()
        return [(str(r), int(v), bytes(w)) for r, v, w in rows]

    @_serialised
    def delete_wrapped_keys(self, record: str | None = None, recipient: str | None = None) -> int:
        """Delete the wrapped keys of a record and/or a recipient; returns how many went."""
        if record is None and recipient is None:
            raise ValueError("delete_wrapped_keys needs a record, a recipient or both")
        self._require_initialised()
        t = sc.wrapped_keys
        stmt = delete(t)
        if record is not None:
            stmt = stmt.where(t.c.record == record)
        if recipient is not None:
            stmt = stmt.where(t.c.recipient == recipient)
        try:
            with self._transaction() as conn:
                count = conn.execute(stmt).rowcount
        except SQLAlchemyError as exc:
            self._fail(exc, "deleting wrapped_keys")
        return int(count)

    # -- checkpoints -----------------------------------------------------------------------

    @_serialised
    def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store a checkpoint, or merge its signatures into the stored one at its height.

        Signatures are kept as distinct (org, signature) pairs, sorted; the store does not
        verify them. A different body at a stored height raises ConflictError.
        """
        self._require_initialised()
        doc = checkpoint.to_json()
        body = canonical(doc["body"])
        height = doc["body"]["height"]
        if type(height) is not int or height < 0:
            raise StoreError("a checkpoint height is a non-negative integer")
        t = sc.checkpoints
        pairs = {(s["by"], s["sig"]) for s in doc["sigs"]}
        try:
            with self._transaction() as conn:
                row = conn.execute(
                    select(t.c.body, t.c.sigs).where(t.c.height == height).with_for_update()
                ).first()
                if row is not None:
                    if bytes(row[0]) != body:
                        raise ConflictError(f"a different checkpoint is stored at height {height}")
                    pairs |= {(s["by"], s["sig"]) for s in parse(row[1])}
                sigs = canonical([{"by": by, "sig": sig} for by, sig in sorted(pairs)])
                if row is None:
                    conn.execute(
                        insert(t), {"height": height, "body": body, "sigs": sigs.decode("utf-8")}
                    )
                else:
                    conn.execute(
                        update(t).where(t.c.height == height).values(sigs=sigs.decode("utf-8"))
                    )
        except SQLAlchemyError as exc:
            self._fail(exc, f"storing the checkpoint at height {height}")

    @_serialised
    def latest_checkpoint(self) -> Checkpoint | None:
        """The highest stored checkpoint."""
        if not self._refresh():
            return None
        t = sc.checkpoints
        with self._reading("reading checkpoints"):
            row = self._conn.execute(
                select(t.c.body, t.c.sigs).order_by(t.c.height.desc()).limit(1)
            ).first()
        if row is None:
            return None
        return Checkpoint.from_json({"body": parse(bytes(row[0])), "sigs": parse(row[1])})

    def iter_checkpoints(self) -> Iterator[Checkpoint]:
        """Every stored checkpoint, lowest height first."""
        if not self._refresh():
            return
        t = sc.checkpoints
        with self._lock, self._reading("reading checkpoints"):
            rows = self._conn.execute(select(t.c.body, t.c.sigs).order_by(t.c.height)).all()
        for body, sigs in rows:
            yield Checkpoint.from_json({"body": parse(bytes(body)), "sigs": parse(sigs)})


__all__ = ["IDENTITY_TABLES", "MAX_PARAMS", "SqlChainStore", "open_store", "sqlite_url"]
