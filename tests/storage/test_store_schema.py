"""The store's schema: generated tables, SQLite settings, versioning and migrations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, Table, create_engine, inspect, text
from store_helpers import delta as make_delta
from store_helpers import genesis, row

from rekam.ledger.state import TABLES
from rekam.service.ports import SchemaVersionError, StoreError
from rekam.storage import SqlChainStore, migrations, open_store, sqlite_url
from rekam.storage._schema import INDEXED

Factory = Callable[[], SqlChainStore]


def _raw(store_url: str, *statements: str) -> None:
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(text(sql))
    finally:
        engine.dispose()


def _meta(store_url: str) -> dict[str, str]:
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            return {k: v for k, v in conn.execute(text("SELECT key, value FROM meta"))}
    finally:
        engine.dispose()


def test_tables_follow_the_ledger_spec(store: SqlChainStore, store_url: str) -> None:
    store.initialise(genesis())
    engine = create_engine(store_url)
    try:
        insp = inspect(engine)
        names = set(insp.get_table_names())
        assert {"meta", "blocks", "txs", "wrapped_keys", "checkpoints"} <= names
        for spec in TABLES:
            table = f"state_{spec.name}"
            assert table in names
            columns = {c["name"]: c for c in insp.get_columns(table)}
            assert list(columns) == ["key", *spec.column_names()]
            for name, _kind, nullable in spec.columns:
                assert columns[name]["nullable"] == nullable, (table, name)
            assert insp.get_pk_constraint(table)["constrained_columns"] == ["key"]
            indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
            assert set(INDEXED.get(spec.name, ())) <= indexed
        assert {tuple(ix["column_names"]) for ix in insp.get_indexes("txs")} >= {("tx_id",)}
        assert {tuple(ix["column_names"]) for ix in insp.get_indexes("wrapped_keys")} >= {
            ("recipient",)
        }
        assert insp.get_pk_constraint("txs")["constrained_columns"] == ["height", "idx"]
    finally:
        engine.dispose()
    assert _meta(store_url) == {
        "schema_version": str(migrations.SCHEMA_VERSION),
        "network": genesis().header["network"],
    }


def test_sqlite_settings(tmp_path: Path) -> None:
    store = open_store(sqlite_url(tmp_path / "chain.db"))
    store.initialise(genesis())
    conn = store._conn
    assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.close()


# -- versions ---------------------------------------------------------------------------------


def test_a_newer_store_is_refused(open_stores: Factory, store_url: str) -> None:
    open_stores().initialise(genesis())
    _raw(store_url, "UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError) as caught:
        open_store(store_url)
    message = str(caught.value)
    assert "schema version 7" in message
    assert f"understands up to {migrations.SCHEMA_VERSION}" in message
    assert "upgrade Rekam" in message


def test_an_unknown_older_version_is_refused(open_stores: Factory, store_url: str) -> None:
    open_stores().initialise(genesis())
    _raw(store_url, "UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="no migration to version 1"):
        open_store(store_url)
    assert _meta(store_url)["schema_version"] == "0"


@pytest.mark.parametrize(
    ("statements", "reason"),
    [
        (["CREATE TABLE patients (id INTEGER PRIMARY KEY)"], "no Rekam meta table"),
        (
            ["CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value TEXT)"],
            "no schema version",
        ),
        (
            [
                "CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value TEXT)",
                "INSERT INTO meta VALUES ('schema_version', 'one')",
            ],
            "not a number",
        ),
    ],
)
def test_a_foreign_database_is_refused(store_url: str, statements: list[str], reason: str) -> None:
    _raw(store_url, *statements)
    with pytest.raises(SchemaVersionError, match="not a Rekam store") as caught:
        open_store(store_url)
    assert reason in str(caught.value)


def test_migrations_run_in_order_once(
    open_stores: Factory, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 1)  # a store written at version 1
    first = open_stores()
    g = genesis()
    first.initialise(g)
    first.close()
    ran: list[int] = []

    def to_2(conn: Connection) -> None:
        ran.append(2)
        extra = Table("extra_v2", MetaData(), Column("id", Integer, primary_key=True))
        extra.create(conn)

    def to_3(conn: Connection) -> None:
        ran.append(3)
        conn.execute(text("INSERT INTO meta (key, value) VALUES ('feature', 'v3')"))

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(migrations, "MIGRATIONS", {3: to_3, 2: to_2})
    upgraded = open_stores()
    assert ran == [2, 3]
    assert upgraded.schema_version() == 3
    assert upgraded.head() == (0, g.hash)
    assert _meta(store_url)["feature"] == "v3"
    engine = create_engine(store_url)
    try:
        assert "extra_v2" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    open_stores()
    assert ran == [2, 3]  # nothing left to do


def test_a_faked_older_store_is_upgraded(
    open_stores: Factory, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 1)
    store = open_stores()
    g = genesis()
    store.initialise(g, make_delta(("org", "clinic-a", row("org", 1))))
    store.close()
    _raw(store_url, "UPDATE meta SET value = '0' WHERE key = 'schema_version'")

    def to_1(conn: Connection) -> None:
        conn.execute(text("UPDATE state_org SET kind = 'hospital'"))

    monkeypatch.setattr(migrations, "MIGRATIONS", {1: to_1})
    upgraded = open_stores()
    assert upgraded.schema_version() == 1
    assert upgraded.get("org", "clinic-a") == row("org", 1, kind="hospital")


def test_a_failed_migration_changes_nothing(
    open_stores: Factory, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 1)
    open_stores().initialise(genesis())

    def to_2(conn: Connection) -> None:
        Table("extra_v2", MetaData(), Column("id", Integer, primary_key=True)).create(conn)

    def to_3(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(migrations, "MIGRATIONS", {2: to_2, 3: to_3})
    with pytest.raises(StoreError, match="version 3"):
        open_store(store_url)
    assert _meta(store_url)["schema_version"] == "1"
    engine = create_engine(store_url)
    try:
        assert "extra_v2" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_missing_step_refuses_before_touching_anything(
    open_stores: Factory, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 1)
    open_stores().initialise(genesis())
    ran: list[int] = []
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(migrations, "MIGRATIONS", {3: lambda conn: ran.append(3)})
    with pytest.raises(SchemaVersionError, match="no migration to version 2"):
        open_store(store_url)
    assert ran == []
    assert _meta(store_url)["schema_version"] == "1"


def test_a_version_1_store_is_upgraded_to_2(open_stores: Factory, store_url: str) -> None:
    # A store as Rekam wrote it at version 1: the same tables plus two indexes no query uses.
    store = open_stores()
    g = genesis()
    store.initialise(g, make_delta(("record_version", "r-1@1", row("record_version", 1))))
    store.close()
    _raw(
        store_url,
        "CREATE INDEX ix_state_record_version_patient ON state_record_version (patient)",
        "CREATE INDEX ix_state_event_record ON state_event (record)",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    )
    upgraded = open_stores()
    assert upgraded.schema_version() == 2
    assert _meta(store_url)["schema_version"] == "2"
    assert upgraded.head() == (0, g.hash)
    assert upgraded.get("record_version", "r-1@1") == row("record_version", 1)
    engine = create_engine(store_url)
    try:
        insp = inspect(engine)
        for table in ("state_record_version", "state_event"):
            names = {ix["name"] for ix in insp.get_indexes(table)}
            assert not names & set(migrations.UNUSED_V1_INDEXES), table
        # The indexes the service's queries use are still there.
        assert {tuple(ix["column_names"]) for ix in insp.get_indexes("state_event")} == {
            ("patient", "time")
        }
        assert {tuple(ix["column_names"]) for ix in insp.get_indexes("state_record_version")} == {
            ("record",)
        }
    finally:
        engine.dispose()


def test_a_new_store_is_created_at_the_current_version(
    store: SqlChainStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 4)
    store.initialise(genesis())
    assert store.schema_version() == 4


def test_registering_a_migration_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", {})

    @migrations.migration(2)
    def first(conn: Connection) -> None:
        pass

    assert {2: first} == migrations.MIGRATIONS
    with pytest.raises(ValueError):
        migrations.migration(2)(first)
