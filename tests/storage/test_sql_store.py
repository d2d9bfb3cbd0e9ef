"""SqlChainStore behaviour, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from store_helpers import (
    GENESIS_DOC,
    NETWORK,
    committed,
    delta,
    genesis,
    next_block,
    row,
    tx_bytes,
    tx_id,
)

from rekam.ledger.block import Block, Checkpoint
from rekam.ledger.state import TABLES, Delta, MemoryState
from rekam.service.ports import ConflictError, StoreError, TxRecord
from rekam.storage import MAX_PARAMS, SqlChainStore, migrations
from rekam.storage import _sql as sql

Factory = Callable[[], SqlChainStore]


def init(store: SqlChainStore) -> Block:
    g = genesis()
    store.initialise(g)
    return g


def append(
    store: SqlChainStore, prev: Block, tags: list[str], d: Delta | None = None, **kw: Any
) -> Block:
    txs = [tx_bytes(t) for t in tags]
    block = next_block(prev, txs, **kw)
    store.append_block(block, committed(txs), d or Delta())
    return block


def count_statements(store: SqlChainStore) -> list[str]:
    """Record every SQL statement the store sends from now on."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(store._engine, "before_cursor_execute", before)
    return seen


# -- empty store and genesis ------------------------------------------------------------------


def test_empty_store_reads_as_empty(store: SqlChainStore) -> None:
    assert store.head() is None
    assert store.get_block(0) is None
    assert list(store.iter_blocks()) == []
    assert store.get("org", "clinic-a") is None
    assert store.get("record", "r-1") is None
    assert not store.tx_seen("00" * 32)
    assert store.get_tx("00" * 32) is None
    assert store.latest_checkpoint() is None
    assert store.schema_version() is None
    assert store.network_id() is None
    assert list(store.state_rows("org")) == []
    with pytest.raises(StoreError, match="not initialised"):
        append(store, genesis(), ["a"])


def test_initialise_stores_genesis(open_stores: Factory) -> None:
    store = open_stores()
    g = init(store)
    assert store.head() == (0, g.hash)
    stored = store.get_block(0)
    assert stored == g
    assert stored is not None and stored.to_bytes() == g.to_bytes()
    genesis_id = tx_id(GENESIS_DOC)
    assert store.get_tx(genesis_id) == TxRecord(
        genesis_id, GENESIS_DOC, 0, 0, True, "ok", tx_type="genesis"
    )
    assert store.get_tx("genesis") is None
    assert store.tx_seen(genesis_id)
    assert store.network_id() == NETWORK
    assert store.schema_version() == migrations.SCHEMA_VERSION
    store.close()

    again = open_stores()
    assert again.head() == (0, g.hash)
    assert again.get_block(0) == g


def test_initialise_refuses_a_second_time(open_stores: Factory) -> None:
    first = open_stores()
    init(first)
    with pytest.raises(StoreError, match="initialised already"):
        first.initialise(genesis())
    other = open_stores()
    with pytest.raises(StoreError, match="initialised already"):
        other.initialise(genesis())
    assert other.head() == (0, genesis().hash)


def test_initialise_refuses_a_block_that_is_not_genesis(store: SqlChainStore) -> None:
    g = genesis()
    with pytest.raises(StoreError):
        store.initialise(next_block(g, [b"x"]))
    assert store.head() is None


def test_initialise_with_genesis_state(store: SqlChainStore) -> None:
    store.initialise(genesis(), delta(("org", "clinic-a", row("org", 1))))
    assert store.get("org", "clinic-a") == row("org", 1)


def test_store_opened_before_another_initialises_it(open_stores: Factory) -> None:
    early = open_stores()
    assert early.head() is None
    g = init(open_stores())
    assert early.head() == (0, g.hash)


# -- blocks, transactions, rows ---------------------------------------------------------------


def test_append_and_read_back(open_stores: Factory) -> None:
    store = open_stores()
    g = init(store)
    consent = row("consent", 3, resource_types=["Condition", "Observation"], revoked=True)
    event_row = row("event", 4, actor_org="clinic-a", version=2, allowed=False)
    b1 = append(
        store,
        g,
        ["a", "b"],
        delta(
            ("org", "clinic-b", row("org", 1)),
            ("patient", "p-1", row("patient", 1)),
            ("record", "r-1", row("record", 1)),
        ),
    )
    b2 = append(store, b1, [], Delta())
    b3 = append(
        store,
        b2,
        ["c"],
        delta(
            ("consent", "c-1", consent),
            ("event", "e-1", event_row),
            ("record", "r-1", row("record", 2)),
        ),
    )
    assert store.head() == (3, b3.hash)
    for original in (g, b1, b2, b3):
        stored = store.get_block(original.height)
        assert stored is not None
        assert stored.to_bytes() == original.to_bytes()
        assert stored.header_bytes == original.header_bytes
        assert stored.hash == original.hash
    assert store.get_block(4) is None
    assert store.get_block(-1) is None
    assert [b.height for b in store.iter_blocks()] == [0, 1, 2, 3]
    assert [b.hash for b in store.iter_blocks(1, 3)] == [b1.hash, b2.hash]
    assert [b.height for b in store.iter_blocks(2)] == [2, 3]
    assert list(store.iter_blocks(5)) == []

    records = store.block_txs(1)
    assert [(r.tx_id, r.index, r.height, r.raw) for r in records] == [
        (tx_id(tx_bytes("a")), 0, 1, tx_bytes("a")),
        (tx_id(tx_bytes("b")), 1, 1, tx_bytes("b")),
    ]
    assert store.block_txs(2) == []
    assert store.get_tx(tx_id(tx_bytes("c"))) == TxRecord(
        tx_id(tx_bytes("c")), tx_bytes("c"), 3, 0, True, "ok", tx_type="record.write"
    )
    assert store.tx_seen(tx_id(tx_bytes("b")))
    assert not store.tx_seen(tx_id(tx_bytes("zz")))

    # Rows, read by a fresh store too (no caches involved).
    for reader in (store, open_stores()):
        assert reader.get("record", "r-1") == row("record", 2)
        got = reader.get("consent", "c-1")
        assert got == consent
        assert got is not None and got["resource_types"] == ["Condition", "Observation"]
        assert got["revoked"] is True and type(got["start"]) is int
        assert reader.get("event", "e-1") == event_row
        assert reader.get("org", "clinic-b") == row("org", 1)
        assert reader.get("org", "nobody") is None
        assert [k for k, _ in reader.state_rows("record")] == ["r-1"]


def test_many_blocks_stream_in_order(store: SqlChainStore) -> None:
    prev = init(store)
    hashes = [prev.hash]
    for i in range(150):
        prev = append(store, prev, [f"t{i}"] if i % 3 else [])
        hashes.append(prev.hash)
    assert [b.hash for b in store.iter_blocks()] == hashes
    assert [b.height for b in store.iter_blocks(60, 130)] == list(range(60, 130))
    # Blocks with their records: the same blocks, each with what block_txs says of it.
    for start, end in ((0, None), (1, 2), (60, 130), (140, 200)):
        paired = list(store.iter_block_records(start, end))
        assert [b for b, _ in paired] == list(store.iter_blocks(start, end))
        assert [records for _, records in paired] == [store.block_txs(b.height) for b, _ in paired]
        assert all(tuple(r.raw for r in records) == b.txs for b, records in paired)


def test_a_replayed_transaction_is_stored_again(store: SqlChainStore) -> None:
    g = init(store)
    b1 = append(store, g, ["a"])
    raw = tx_bytes("a")
    b2 = next_block(b1, [raw, tx_bytes("b")])
    store.append_block(
        b2,
        [*committed([raw], valid=False, code="duplicate"), *committed([tx_bytes("b")])],
        Delta(),
    )
    assert store.head() == (2, b2.hash)
    first = store.get_tx(tx_id(raw))
    assert first is not None and (first.height, first.valid) == (1, True)
    assert [(r.valid, r.code) for r in store.block_txs(2)] == [(False, "duplicate"), (True, "ok")]
    assert store.get_block(2) == b2


def test_state_rows_are_in_byte_order(store: SqlChainStore) -> None:
    g = init(store)
    keys = ["b", "B", "a", "_x", "Z", "a-1", "a_1", "a@2", "a@10", "~", "0"]
    append(store, g, [], delta(*(("record", k, row("record", i)) for i, k in enumerate(keys))))
    assert [k for k, _ in store.state_rows("record")] == sorted(keys)


def test_state_rows_stream_in_chunks(store: SqlChainStore) -> None:
    g = init(store)
    writes = [("event", f"k{i:05d}", row("event", i)) for i in range(2_345)]
    append(store, g, [], delta(*writes))
    listed = list(store.state_rows("event"))
    assert [k for k, _ in listed] == [k for _, k, _ in writes]
    assert listed[7][1] == row("event", 7)


def test_query(store: SqlChainStore) -> None:
    g = init(store)
    append(
        store,
        g,
        [],
        delta(
            ("consent", "c-1", row("consent", 1, patient="p-1", grantee="m-1", start=30)),
            ("consent", "c-2", row("consent", 2, patient="p-1", grantee="m-2", start=10)),
            ("consent", "c-3", row("consent", 3, patient="p-2", grantee="m-1", start=20)),
            ("event", "e-1", row("event", 1, patient="p-1", time=5, record="r-1")),
            ("event", "e-2", row("event", 2, patient="p-1", time=3)),
        ),
    )
    assert [k for k, _ in store.query("consent", {"patient": "p-1"})] == ["c-1", "c-2"]
    assert [k for k, _ in store.query("consent", {"patient": "p-1"}, "start")] == ["c-2", "c-1"]
    assert [k for k, _ in store.query("consent", {"grantee": "m-1"}, order_by="start")] == [
        "c-3",
        "c-1",
    ]
    assert store.query("consent", {"patient": "p-1", "grantee": "m-2"}) == [
        ("c-2", row("consent", 2, patient="p-1", grantee="m-2", start=10))
    ]
    assert [k for k, _ in store.query("consent", {"revoked": True})] == ["c-1", "c-3"]
    assert [k for k, _ in store.query("consent", {"resource_types": ["Observation", "T2"]})] == [
        "c-2"
    ]
    assert [k for k, _ in store.query("consent", {"key": "c-3"})] == ["c-3"]
    assert store.query("consent", {"patient": "p-9"}) == []
    assert [k for k, _ in store.query("event", {"record": None})] == ["e-2"]
    assert [k for k, _ in store.query("event", {"patient": "p-1"}, "time")] == ["e-2", "e-1"]
    with pytest.raises(KeyError):
        store.query("consent", {"nope": 1})
    with pytest.raises(KeyError):
        store.query("consent", {}, order_by="nope")
    with pytest.raises(KeyError):
        store.query("nope", {})


# -- conflicts and atomicity ------------------------------------------------------------------


def test_refuses_blocks_that_do_not_extend_the_head(store: SqlChainStore) -> None:
    g = init(store)
    b1 = append(store, g, ["a"])
    with pytest.raises(ConflictError, match="block 3"):
        append(store, b1, ["b"], height=3)  # a gap
    with pytest.raises(ConflictError, match="block 1"):
        append(store, g, ["c"])  # height taken
    with pytest.raises(ConflictError, match="block 2"):
        append(store, g, ["d"], height=2)  # right height, wrong prev
    assert store.head() == (1, b1.hash)
    assert not store.tx_seen(tx_id(tx_bytes("b")))


def test_refuses_mismatched_results(store: SqlChainStore) -> None:
    g = init(store)
    block = next_block(g, [tx_bytes("a")])
    with pytest.raises(StoreError):
        store.append_block(block, [], Delta())
    assert store.head() == (0, g.hash)


def test_second_writer_cannot_append_the_same_height(open_stores: Factory) -> None:
    a, b = open_stores(), open_stores()
    g = init(a)
    b.get("org", "clinic-z")  # b caches a miss
    mine = append(a, g, ["mine"], delta(("org", "clinic-z", row("org", 1))))
    with pytest.raises(ConflictError):
        append(b, g, ["theirs"])
    assert b.head() == (1, mine.hash)
    assert b.get("org", "clinic-z") == row("org", 1)  # caches dropped on conflict
    assert b.get_tx(tx_id(tx_bytes("theirs"))) is None
    nxt = append(b, mine, ["next"])
    assert a.head() == (2, nxt.hash)


def test_racing_writers_never_both_append(open_stores: Factory) -> None:
    writers = [open_stores(), open_stores(), open_stores()]
    prev = init(writers[0])
    for round_no in range(8):
        candidates = [
            next_block(prev, [tx_bytes(f"r{round_no}-w{i}")]) for i in range(len(writers))
        ]
        outcome: list[str | None] = [None] * len(writers)
        barrier = threading.Barrier(len(writers))

        def run(
            i: int,
            cand: list[Block] = candidates,
            out: list[str | None] = outcome,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            try:
                writers[i].append_block(cand[i], committed(cand[i].txs), Delta())
                out[i] = "won"
            except ConflictError:
                out[i] = "conflict"
            except Exception as exc:
                out[i] = f"error {exc!r}"

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(outcome) == ["conflict", "conflict", "won"], outcome
        winner = candidates[outcome.index("won")]
        assert writers[0].head() == (round_no + 1, winner.hash)
        assert len(writers[1].block_txs(round_no + 1)) == 1
        prev = winner


def test_a_failing_block_stores_nothing(open_stores: Factory) -> None:
    store = open_stores()
    g = init(store)
    b1 = append(store, g, ["a"], delta(("record", "r-0", row("record", 0))))
    bad = Delta()
    bad.put("org", "clinic-new", row("org", 1))
    bad.put("patient", "p-new", row("patient", 1))
    bad.put("record", "r-0", row("record", 5))
    bad_row = row("record", 1, patient="SECRET-PATIENT")
    bad_row["author"] = None  # NOT NULL column: the database refuses it mid-transaction
    bad.tables["record"]["r-bad"] = bad_row
    block = next_block(b1, [tx_bytes("b"), tx_bytes("c")])
    with pytest.raises(StoreError) as caught:
        store.append_block(block, committed(block.txs), bad)
    assert not isinstance(caught.value, ConflictError)
    assert "state_record" in str(caught.value)
    text = "".join(traceback.format_exception(caught.value))
    assert "SECRET" not in text and "clinic-new" not in text

    for reader in (store, open_stores()):
        assert reader.head() == (1, b1.hash)
        assert reader.get_block(2) is None
        assert reader.block_txs(2) == []
        assert reader.get_tx(tx_id(tx_bytes("b"))) is None
        assert not reader.tx_seen(tx_id(tx_bytes("c")))
        assert reader.get("org", "clinic-new") is None
        assert reader.get("patient", "p-new") is None
        assert reader.get("record", "r-0") == row("record", 0)
        assert reader.get("record", "r-bad") is None
    # The store is still usable, and the same height can be appended properly.
    good = next_block(b1, [tx_bytes("b")])
    store.append_block(good, committed(good.txs), delta(("org", "clinic-new", row("org", 1))))
    assert store.head() == (2, good.hash)
    assert store.get("org", "clinic-new") == row("org", 1)


def test_values_of_the_wrong_type_are_refused_on_every_backend(store: SqlChainStore) -> None:
    g = init(store)
    for table, column, value in [
        ("record", "version", "2"),
        ("record", "erased", 1),
        ("record", "patient", 7),
        ("consent", "resource_types", "Observation"),
        ("consent", "resource_types", [1]),
        ("org", "since", True),
    ]:
        bad = Delta()
        bad.tables[table]["k"] = {**row(table), column: value}
        block = next_block(g, [tx_bytes(f"{table}{column}{value!r}")])
        with pytest.raises(StoreError, match=f"state_{table}.{column}"):
            store.append_block(block, committed(block.txs), bad)
        assert store.head() == (0, g.hash)


CRASH_CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
from store_helpers import committed, genesis, next_block, row, tx_bytes, delta
from rekam.storage import open_store
import rekam.storage._sql as sql

store = open_store(sys.argv[1])
head = store.get_block(store.head()[0])
original = sql.SqlChainStore._upsert
calls = []
def crashing(self, conn, table, written):
    original(self, conn, table, written)
    calls.append(table)
    if len(calls) == 2:
        os._exit(17)  # die with the transaction open: block, txs and some rows written
sql.SqlChainStore._upsert = crashing
block = next_block(head, [tx_bytes("crash-a"), tx_bytes("crash-b")])
writes = delta(
    ("org", "clinic-crash", row("org", 1)),
    ("patient", "p-crash", row("patient", 1)),
    ("record", "r-crash", row("record", 1)),
)
store.append_block(block, committed(block.txs), writes)
os._exit(3)
"""


def test_a_crash_mid_commit_keeps_the_previous_head(open_stores: Factory, store_url: str) -> None:
    store = open_stores()
    g = init(store)
    b1 = append(store, g, ["a"])
    store.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, store_url, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 17, result.stderr
    after = open_stores()
    assert after.head() == (1, b1.hash)
    assert after.get_block(2) is None
    assert after.get("org", "clinic-crash") is None
    assert after.get("patient", "p-crash") is None
    assert not after.tx_seen(tx_id(tx_bytes("crash-a")))
    b2 = append(after, b1, ["crash-a"], delta(("org", "clinic-crash", row("org", 1))))
    assert after.head() == (2, b2.hash)


# -- caches and prefetch ----------------------------------------------------------------------


def _populate(store: SqlChainStore, n: int) -> Block:
    g = init(store)
    writes: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(n):
        writes.append(("record", f"r-{i:04d}", row("record", i)))
        writes.append(("consent", f"c-{i:04d}", row("consent", i)))
        if i % 2:
            writes.append(("member", f"m-{i:04d}", row("member", i)))
    return append(store, g, [f"t{i}" for i in range(n)], delta(*writes))


def test_prefetch_gives_the_same_answers_as_get(open_stores: Factory) -> None:
    n = MAX_PARAMS + 150  # more keys than one IN list holds
    writer = open_stores()
    _populate(writer, n)
    plain, warmed = open_stores(), open_stores()
    wanted = {
        "record": {f"r-{i:04d}" for i in range(0, n + 40, 1)},
        "consent": {f"c-{i:04d}" for i in range(0, n, 3)} | {"c-missing"},
        "member": {f"m-{i:04d}" for i in range(n)},
        "patient": {"p-none"},
    }
    tx_ids = [tx_id(tx_bytes(f"t{i}")) for i in range(0, n + 30, 2)]
    seen = count_statements(warmed)
    warmed.prefetch(wanted, tx_ids)
    prefetch_statements = len(seen)
    assert prefetch_statements <= 2 * 5 + 3  # a handful of chunked IN queries
    for table, keys in wanted.items():
        for key in sorted(keys):
            assert warmed.get(table, key) == plain.get(table, key), (table, key)
    for t in tx_ids:
        assert warmed.tx_seen(t) == plain.tx_seen(t)
    assert len(seen) == prefetch_statements  # every answer came from the cache
    assert warmed.get("record", "r-0003") == row("record", 3)
    assert warmed.get("record", f"r-{n + 5:04d}") is None
    assert warmed.tx_seen(tx_id(tx_bytes("t4")))
    assert not warmed.tx_seen(tx_id(tx_bytes(f"t{n + 2}")))


def test_fetch_reads_what_get_reads_without_touching_the_caches(open_stores: Factory) -> None:
    n = MAX_PARAMS + 20
    writer = open_stores()
    _populate(writer, n)
    store = open_stores()
    wanted = {
        "record": {f"r-{i:04d}" for i in range(0, n + 10)},
        "member": {"m-0001", "m-none"},
    }
    tx_ids = [tx_id(tx_bytes(f"t{i}")) for i in range(0, n + 30, 3)]
    rows, seen = store.fetch(wanted, tx_ids)
    for table, keys in wanted.items():
        assert set(rows[table]) == keys
        for key in keys:
            assert rows[table][key] == store.get(table, key), (table, key)
    assert seen == {t: store.tx_seen(t) for t in tx_ids}
    assert rows["record"]["r-0003"] == row("record", 3)
    assert rows["member"]["m-none"] is None
    # Nothing was cached by fetch: its rows belong to the caller.
    other = open_stores()
    other.fetch(wanted, tx_ids)
    assert all(not cache for cache in other._rows.values())
    assert not other._block_txs


def test_stacked_reader_sees_pending_writes_over_its_fetched_memo(store: SqlChainStore) -> None:
    from rekam.ledger.state import Delta, Stacked

    g = init(store)
    append(store, g, ["a"], delta(("record", "r-1", row("record", 1))))
    pending = Delta()
    pending.put("record", "r-1", row("record", 2))
    pending.tx_ids.add(tx_id(tx_bytes("b")))
    asked: list[str] = []

    class Counting:
        def get(self, table: str, key: str) -> object:
            asked.append(key)
            return store.get(table, key)

        def tx_seen(self, tx: str) -> bool:
            asked.append(tx)
            return store.tx_seen(tx)

        def fetch(self, wanted: object, tx_ids: object) -> object:
            return store.fetch(wanted, tx_ids)  # type: ignore[arg-type]

    view = Stacked(Counting(), [pending])  # type: ignore[arg-type]
    view.prefetch({"record": ["r-1", "r-2"]}, [tx_id(tx_bytes("a")), tx_id(tx_bytes("c"))])
    assert view.get("record", "r-1") == row("record", 2)  # the pending block wins
    assert view.get("record", "r-2") is None
    assert view.tx_seen(tx_id(tx_bytes("a")))  # stored
    assert view.tx_seen(tx_id(tx_bytes("b")))  # pending
    assert not view.tx_seen(tx_id(tx_bytes("c")))
    assert asked == []  # everything was answered from the view's own memo
    assert view.get("record", "r-9") is None  # not fetched: asked of the store
    assert asked == ["r-9"]


def test_caches_follow_the_stores_own_writes(store: SqlChainStore) -> None:
    g = init(store)
    store.prefetch({"record": ["r-1"], "org": ["clinic-b"]}, [tx_id(tx_bytes("a"))])
    assert store.get("record", "r-1") is None
    assert store.get("org", "clinic-b") is None
    assert not store.tx_seen(tx_id(tx_bytes("a")))
    b1 = append(
        store,
        g,
        ["a"],
        delta(("record", "r-1", row("record", 1)), ("org", "clinic-b", row("org", 1))),
    )
    assert store.get("record", "r-1") == row("record", 1)
    assert store.get("org", "clinic-b") == row("org", 1)
    assert store.tx_seen(tx_id(tx_bytes("a")))
    seen = count_statements(store)
    assert store.get("org", "clinic-b") == row("org", 1)
    assert seen == []  # identity rows are served from memory
    append(store, b1, [], delta(("org", "clinic-b", row("org", 1, active=False))))
    written = len(seen)
    assert store.get("org", "clinic-b") == row("org", 1, active=False)
    assert len(seen) == written  # ... and kept up to date write-through


def test_returned_rows_are_the_callers_own(store: SqlChainStore) -> None:
    g = init(store)
    append(store, g, [], delta(("consent", "c-1", row("consent", 1)), ("org", "o-1", row("org"))))
    for table, key, column in (("consent", "c-1", "purpose"), ("org", "o-1", "kind")):
        got = store.get(table, key)
        assert got is not None
        assert isinstance(got, dict)
        got[column] = "changed"
        assert store.get(table, key) == row(table, 1 if table == "consent" else 0)
    got = store.get("consent", "c-1")
    assert got is not None
    got["resource_types"].append("Changed")
    assert store.get("consent", "c-1") == row("consent", 1)


def test_unknown_tables_are_refused(store: SqlChainStore) -> None:
    init(store)
    with pytest.raises(KeyError):
        store.get("nope", "k")
    with pytest.raises(KeyError):
        store.prefetch({"nope": ["k"]}, [])
    with pytest.raises(KeyError):
        list(store.state_rows("nope"))


# -- replace_state ----------------------------------------------------------------------------


def test_replace_state(open_stores: Factory) -> None:
    store = open_stores()
    g = init(store)
    b1 = append(
        store,
        g,
        ["a"],
        delta(
            ("org", "clinic-a", row("org", 1)),
            ("record", "r-old", row("record", 1)),
            ("consent", "c-old", row("consent", 1)),
        ),
    )
    assert store.get("org", "clinic-a") == row("org", 1)
    state = MemoryState()
    state.tables["org"]["clinic-a"] = row("org", 2)
    state.tables["org"]["clinic-b"] = row("org", 3)
    state.tables["record"]["r-new"] = row("record", 4)
    for i in range(1_200):
        state.tables["event"][f"e-{i:05d}"] = row("event", i)
    store.replace_state(state)
    for reader in (store, open_stores()):
        assert reader.get("org", "clinic-a") == row("org", 2)
        assert reader.get("org", "clinic-b") == row("org", 3)
        assert reader.get("record", "r-old") is None
        assert reader.get("record", "r-new") == row("record", 4)
        assert list(reader.state_rows("consent")) == []
        assert len(list(reader.state_rows("event"))) == 1_200
        assert reader.head() == (1, b1.hash)  # the chain is untouched
        assert reader.tx_seen(tx_id(tx_bytes("a")))
    for spec in TABLES:
        assert dict(store.state_rows(spec.name)) == state.tables[spec.name]


def test_state_cells_equal_the_cells_of_equal_rows_only(open_stores: Factory) -> None:
    store = open_stores()
    g = init(store)
    writes = [(spec.name, f"k-{n}", row(spec.name, n)) for spec in TABLES for n in (1, 2)]
    append(store, g, [], delta(*writes))
    for reader in (store, open_stores()):
        for spec in TABLES:
            cells = reader.row_cells(spec.name)
            stored = dict(reader.state_cells(spec.name))
            mine = {key: values for table, key, values in writes if table == spec.name}
            assert stored == {key: cells(values) for key, values in mine.items()}, spec.name
            # Booleans (stored as 0/1 by SQLite) and strlists (stored as JSON text) included:
            # any changed value gives other cells.
            for column, kind, _ in spec.columns:
                changed = {
                    "str": "other",
                    "int": 7,
                    "bool": not mine["k-1"][column],
                    "strlist": ["Condition"],
                }[kind]
                assert cells({**mine["k-1"], column: changed}) != stored["k-1"], column
    with pytest.raises(KeyError):
        store.row_cells("nope")


def test_state_cells_pages_through_every_row_once(
    open_stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read a few rows at a time (in rowid order on SQLite), rows rewritten since included."""
    monkeypatch.setattr(sql, "_STATE_ROWS_CHUNK", 3)
    store = open_stores()
    g = init(store)
    first = append(
        store, g, [], delta(*[("record", f"k-{n:02}", row("record", n)) for n in range(10)])
    )
    # A rewritten row is deleted and inserted again: on SQLite it moves to the end.
    rewritten = {f"k-{n:02}": row("record", 100 + n) for n in (0, 4, 9)}
    append(store, first, ["t2"], delta(*[("record", k, v) for k, v in rewritten.items()]))
    cells = store.row_cells("record")
    read = list(store.state_cells("record"))
    assert len(read) == 10
    expected = {f"k-{n:02}": row("record", n) for n in range(10)} | rewritten
    assert dict(read) == {key: cells(values) for key, values in expected.items()}


def test_replace_state_is_atomic(store: SqlChainStore) -> None:
    g = init(store)
    append(store, g, [], delta(("org", "clinic-a", row("org", 1)), ("event", "e", row("event"))))
    state = MemoryState()
    state.tables["org"]["clinic-b"] = row("org", 2)
    state.tables["event"]["e-bad"] = {**row("event", 1), "kind": None}
    with pytest.raises(StoreError, match="state_event"):
        store.replace_state(state)
    assert store.get("org", "clinic-a") == row("org", 1)
    assert store.get("org", "clinic-b") is None
    assert store.get("event", "e") == row("event")


# -- keyring and checkpoints ------------------------------------------------------------------


def test_wrapped_keys(store: SqlChainStore) -> None:
    init(store)
    store.put_wrapped_keys(
        [
            ("r-1", 1, "p-1", b"w11p"),
            ("r-1", 1, "m-1", b"w11m"),
            ("r-1", 2, "p-1", b"w12p"),
            ("r-2", 1, "p-1", b"w21p"),
            ("r-2", 1, "m-1", b"w21m"),
        ]
    )
    assert store.get_wrapped_key("r-1", 1, "p-1") == b"w11p"
    assert store.get_wrapped_key("r-1", 2, "m-1") is None
    store.put_wrapped_keys([("r-1", 1, "p-1", b"replaced"), ("r-1", 1, "p-1", b"last wins")])
    assert store.get_wrapped_key("r-1", 1, "p-1") == b"last wins"
    store.put_wrapped_keys([])
    assert store.delete_wrapped_keys(recipient="m-1") == 2
    assert store.get_wrapped_key("r-2", 1, "m-1") is None
    assert store.delete_wrapped_keys(record="r-2", recipient="p-1") == 1
    assert store.delete_wrapped_keys(record="r-1") == 2
    assert store.delete_wrapped_keys(record="r-1") == 0
    with pytest.raises(ValueError):
        store.delete_wrapped_keys()
    with pytest.raises(StoreError):
        store.put_wrapped_keys([("r-1", "1", "p-1", b"x")])  # type: ignore[list-item]


def _checkpoint(height: int, sigs: list[tuple[str, bytes]], head: str = "11" * 32) -> Checkpoint:
    body = {"network": NETWORK, "height": height, "head": head, "blocks_root": "22" * 32}
    return Checkpoint(body, tuple(sigs))


def test_checkpoints_merge_signatures(store: SqlChainStore) -> None:
    init(store)
    store.put_checkpoint(_checkpoint(5, [("clinic-a", b"sa")]))
    store.put_checkpoint(_checkpoint(5, [("clinic-b", b"sb"), ("clinic-a", b"sa")]))
    latest = store.latest_checkpoint()
    assert latest is not None
    assert latest.body == _checkpoint(5, []).body
    assert sorted(latest.signatures) == [("clinic-a", b"sa"), ("clinic-b", b"sb")]
    store.put_checkpoint(_checkpoint(3, [("clinic-c", b"sc")]))
    latest = store.latest_checkpoint()
    assert latest is not None and latest.body["height"] == 5
    store.put_checkpoint(_checkpoint(9, [("clinic-c", b"sc9")]))
    latest = store.latest_checkpoint()
    assert latest is not None and latest.signatures == (("clinic-c", b"sc9"),)
    with pytest.raises(ConflictError, match="height 5"):
        store.put_checkpoint(_checkpoint(5, [("clinic-d", b"sd")], head="33" * 32))


def test_closed_store_refuses_use(store: SqlChainStore) -> None:
    init(store)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.head()


def test_calls_from_several_threads_are_serialised(store: SqlChainStore) -> None:
    prev = init(store)
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                head = store.head()
                assert head is not None
                store.get("record", f"r-{head[0]}")
                store.get("org", "clinic-a")
                store.tx_seen(tx_id(tx_bytes(f"w{head[0]}")))
                assert len(list(store.iter_blocks(max(0, head[0] - 3)))) >= 1
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        for i in range(1, 31):
            prev = append(store, prev, [f"w{i}"], delta(("record", f"r-{i}", row("record", i))))
    finally:
        done.set()
        for t in readers:
            t.join(timeout=60)
    assert errors == []
    assert store.head() == (30, prev.hash)
    assert store.get("record", "r-30") == row("record", 30)


# -- bulk writes ------------------------------------------------------------------------------


def _event(i: int) -> dict[str, Any]:
    """Event rows with every nullable column sometimes NULL, sometimes set."""
    if i % 3 == 0:
        return row("event", i)
    return row("event", i, actor_org=f"org-{i}", version=i, allowed=i % 2 == 0, basis="b")


def test_large_blocks_round_trip(open_stores: Factory) -> None:
    """Hundreds of rows per table: inserted in bulk, read back exactly, replaced by key."""
    store = open_stores()
    g = init(store)
    n = 257  # several multi-row statements plus a remainder
    writes = [("event", f"e-{i:04d}", _event(i)) for i in range(n)]
    writes += [("consent", f"c-{i:04d}", row("consent", i)) for i in range(n // 2)]
    writes += [("org", f"o-{i:04d}", row("org", i)) for i in range(n // 3)]
    tags = [f"bulk-{i}" for i in range(n)]
    b1 = append(store, g, tags, delta(*writes))
    # A second block replaces some rows (one of them read first, one not) and adds others.
    store.prefetch({"event": ["e-0001"], "org": ["o-0002", "o-new"]}, [])
    replaced = [
        ("event", "e-0001", _event(1001)),
        ("event", "e-0200", _event(1200)),
        ("org", "o-0002", row("org", 1002)),
        ("org", "o-new", row("org", 3)),
    ]
    append(store, b1, ["bulk-again"], delta(*replaced))
    expected: dict[str, dict[str, dict[str, Any]]] = {"event": {}, "consent": {}, "org": {}}
    for table, key, values in writes + replaced:
        expected[table][key] = values
    for reader in (store, open_stores()):
        for table, rows in expected.items():
            assert dict(reader.state_rows(table)) == rows, table
        assert reader.get("org", "o-0002") == row("org", 1002)
        stored = reader.block_txs(1)
        assert [(r.index, r.raw) for r in stored] == [(i, tx_bytes(t)) for i, t in enumerate(tags)]
        assert all(r.valid and r.authenticated and r.height == 1 for r in stored)


def test_a_bad_row_deep_in_a_large_block_stores_nothing(store: SqlChainStore) -> None:
    g = init(store)
    bad = delta(*(("record", f"r-{i:04d}", row("record", i)) for i in range(250)))
    bad.tables["record"]["r-0150"]["author"] = None  # NOT NULL, in the middle of a statement
    block = next_block(g, [tx_bytes(f"x{i}") for i in range(250)])
    with pytest.raises(StoreError, match="state_record"):
        store.append_block(block, committed(block.txs), bad)
    assert store.head() == (0, g.hash)
    assert list(store.state_rows("record")) == []
    assert store.block_txs(1) == []


def test_a_lost_database_connection_is_replaced(open_stores: Factory, backend: str) -> None:
    """A server that drops the store's connections: the next call fails with a StoreError
    naming what failed (no values), and the store reconnects for the one after it."""
    if backend != "postgresql":
        pytest.skip("only a server can drop a connection")
    store = open_stores()
    g = init(store)
    b1 = append(store, g, ["a"], delta(("record", "r-0", row("record", 0))))
    store.get("record", "r-0")  # both of the store's connections are open now
    store.fetch({"record": ["r-0"]}, [])
    admin = open_stores()
    with admin._engine.connect() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    block = next_block(b1, [tx_bytes("b")])
    writes = delta(("record", "r-1", row("record", 1)))
    with pytest.raises(StoreError, match=r"storing block 2 \(reading the head\) failed") as lost:
        store.append_block(block, committed(block.txs), writes)
    assert "r-1" not in str(lost.value)
    store.append_block(block, committed(block.txs), writes)  # on a new connection
    assert store.head() == (2, block.hash)
    assert store.get("record", "r-1") == row("record", 1)
    with pytest.raises(StoreError, match="reading state failed"):
        store.fetch({"record": ["r-1"]}, [])  # the second connection was dropped too
    rows, _ = store.fetch({"record": ["r-1"]}, [])
    assert rows["record"]["r-1"] == row("record", 1)
