"""Shared fixtures: a real PostgreSQL server for the session, and per-test databases.

The server is started once per session (see tests/pg_server.py); a test asking for
``store_url`` runs twice, on a SQLite file and on its own freshly created PostgreSQL
database, dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rekam.storage import sqlite_url
from tests import pg_server


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
