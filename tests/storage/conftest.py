"""Fixtures for the storage tests: every store test runs on SQLite and on a real PostgreSQL.

The PostgreSQL server is started once per session (see tests/pg_server.py); each test gets
its own freshly created database, dropped afterwards.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pg_server
from rekam.storage import SqlChainStore, open_store, sqlite_url


@pytest.fixture(scope="session")
def pg_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg_server.PgServer]:
    """A real PostgreSQL server for the whole session (skipped if unavailable, unless CI)."""
    try:
        server = pg_server.start_postgres(tmp_path_factory.mktemp("postgres"))
    except pg_server.PostgresUnavailable as exc:
        if pg_server.in_ci():
            pytest.fail(f"PostgreSQL is required when CI=true: {exc}")
        pytest.skip(f"PostgreSQL is not available: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_instance: pg_server.PgServer) -> str:
    """SQLAlchemy URL of the session server's ``rekam`` database."""
    return pg_instance.url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "chain.db")
        return
    server: pg_server.PgServer = request.getfixturevalue("pg_instance")
    with pg_server.fresh_database(server, f"t_{uuid.uuid4().hex[:20]}") as url:
        yield url


@pytest.fixture
def backend(store_url: str) -> str:
    """'sqlite' or 'postgresql'."""
    return "sqlite" if store_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def open_stores(store_url: str) -> Iterator[Callable[[], SqlChainStore]]:
    """A factory of stores on the test database; all are closed after the test."""
    opened: list[SqlChainStore] = []

    def make() -> SqlChainStore:
        store = open_store(store_url)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_stores: Callable[[], SqlChainStore]) -> SqlChainStore:
    """An open, empty store."""
    return open_stores()
