"""Storage adapter: the chain, world state and keyring of a node in SQLite or PostgreSQL.

``open_store(url)`` returns a :class:`SqlChainStore` implementing
:class:`rekam.service.ports.ChainStore` (and :class:`rekam.ledger.state.Prefetching`). The
same SQLAlchemy Core code serves ``sqlite:////abs/path/chain.db`` (the embedded default, in
WAL mode with ``synchronous=FULL``) and ``postgresql+psycopg://...``. A store is used by one
thread at a time.
"""

from rekam.service.ports import ConflictError, SchemaVersionError, StoreError
from rekam.storage._sql import IDENTITY_TABLES, MAX_PARAMS, SqlChainStore, open_store, sqlite_url
from rekam.storage.migrations import MIGRATIONS, SCHEMA_VERSION, migration

__all__ = [
    "IDENTITY_TABLES",
    "MAX_PARAMS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ConflictError",
    "SchemaVersionError",
    "SqlChainStore",
    "StoreError",
    "migration",
    "open_store",
    "sqlite_url",
]
