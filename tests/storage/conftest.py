"""Fixtures for the storage tests: every store test runs on SQLite and on a real PostgreSQL.

The ``store_url`` fixture (tests/conftest.py) gives each test a SQLite file or its own fresh
PostgreSQL database on the session's server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from rekam.storage import SqlChainStore, open_store


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
