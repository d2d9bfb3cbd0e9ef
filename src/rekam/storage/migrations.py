"""Schema versions and the migrations between them.

A new store is created directly at :data:`SCHEMA_VERSION` from the metadata in
``rekam.storage._schema``. A store written by an older Rekam is brought up to date when it is
opened: every migration from its version up to ``SCHEMA_VERSION`` runs in order, inside one
database transaction, and the version in the ``meta`` table moves with them. A store written
by a newer Rekam is refused.

To change the schema (say to version 3):

1. change the tables in ``_schema.py`` (that is what new stores get);
2. bump ``SCHEMA_VERSION`` to 3;
3. register the step that brings a version-2 store to the same shape::

       @migration(3)
       def _add_something(conn: Connection) -> None:
           conn.execute(text("CREATE INDEX ..."))

A migration receives the connection of the open transaction and must not commit. It must
work on SQLite and PostgreSQL alike (use Core constructs, or SQL both accept).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, text

from rekam.service.ports import SchemaVersionError

#: The schema version this Rekam writes and understands.
SCHEMA_VERSION = 2

Migration = Callable[[Connection], None]

#: ``MIGRATIONS[v]`` upgrades a store from version ``v - 1`` to version ``v``.
MIGRATIONS: dict[int, Migration] = {}


def migration(to_version: int) -> Callable[[Migration], Migration]:
    """Register a function as the step that upgrades a store to ``to_version``."""

    def register(fn: Migration) -> Migration:
        if to_version in MIGRATIONS:
            raise ValueError(f"a migration to schema version {to_version} is registered already")
        MIGRATIONS[to_version] = fn
        return fn

    return register


def plan(found: int, target: int | None = None) -> list[tuple[int, Migration]]:
    """The migrations to run, in order, for a store at version ``found``.

    Raises SchemaVersionError when the store is newer than this Rekam, or when a step is
    missing (an unknown, older version).
    """
    target = SCHEMA_VERSION if target is None else target
    if found > target:
        raise SchemaVersionError(
            f"the data folder was written by schema version {found}; this Rekam understands "
            f"up to {target} — upgrade Rekam to open it"
        )
    steps: list[tuple[int, Migration]] = []
    for version in range(found + 1, target + 1):
        step = MIGRATIONS.get(version)
        if step is None:
            raise SchemaVersionError(
                f"the data folder has schema version {found}, which this Rekam cannot upgrade "
                f"(no migration to version {version}; it understands {target})"
            )
        steps.append((version, step))
    return steps


# -- the steps -----------------------------------------------------------------------------

#: Indexes a version-1 store has that no query uses (see ``_schema.INDEXED``).
UNUSED_V1_INDEXES = ("ix_state_record_version_patient", "ix_state_event_record")


@migration(2)
def _drop_unused_indexes(conn: Connection) -> None:
    """Version 2: drop two indexes that only cost a B-tree insert on every record write."""
    for name in UNUSED_V1_INDEXES:
        # IF EXISTS: a store whose index was dropped by hand still upgrades; both SQLite and
        # PostgreSQL accept it. The names are constants, never input.
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
