"""verify_chain's pipeline: worker processes, their fallback, and the state read while waiting.

Replay decodes and signature-checks batches of blocks ahead of applying them, in forked worker
processes when the chain is longer than one batch. Whatever does the preparing, replay must
see exactly what ``decode_all`` and ``check_signatures`` give for each block; a verification
must report the same with and without workers, and name the same first problem.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from rekam.blobs import SqliteBlobStore
from rekam.crypto import Ed25519Signer
from rekam.encoding import b64e, canonical, parse
from rekam.ledger.block import Block, Genesis, cut_block
from rekam.ledger.state import TABLES, Delta, MemoryState
from rekam.ledger.tx import Transaction, make_tx, new_id, sign_tx, unsigned_tx
from rekam.ledger.validate import check_signatures, decode_all
from rekam.service import verify
from rekam.service.datadir import DataDir
from rekam.service.demo import run_demo
from rekam.service.ports import BlockIndex
from rekam.service.verify import VerifyReport, verify_chain
from rekam.service.workspace import Workspace
from rekam.storage import open_store
from tests.blob_rows import tamper_blob

NETWORK = "ab" * 32


def _signer(n: int) -> Ed25519Signer:
    return Ed25519Signer(bytes([n]) * 32)


def _record_write(n: int, signer_id: str, signer: Ed25519Signer) -> Transaction:
    body = {
        "record": new_id("record"),
        "version": 1,
        "patient": new_id("patient"),
        "resource_type": "Observation",
        "content_hash": f"{n:064x}",
        "content_size": 1,
        "basis": "author",
        "basis_ref": None,
    }
    return make_tx(NETWORK, "record.write", signer_id, signer, body, 1000 + n)


def _forged(tx: Transaction) -> bytes:
    """The same transaction with a well-formed signature that does not verify."""
    envelope = parse(tx.raw)
    envelope["sigs"][0]["sig"] = b64e(bytes(64))
    return canonical(envelope)


def _cosigned() -> Transaction:
    tx = unsigned_tx(
        NETWORK,
        "org.enrol",
        "clinic-a",
        {
            "org": "lab-new",
            "kind": "lab",
            "sign_key": b64e(_signer(9).public_key),
            "enc_key": b64e(bytes(33)),
        },
        5,
    )
    return sign_tx(tx, [("clinic-a", _signer(1)), ("clinic-b", _signer(2)), ("lab-c", _signer(3))])


def _blocks() -> list[Block]:
    """Blocks of different sizes, mixing valid, forged, malformed and co-signed transactions."""
    member = new_id("member")
    raws: list[bytes] = []
    for n in range(40):
        tx = _record_write(n, member, _signer(4))
        raws.append(_forged(tx) if n % 7 == 3 else tx.raw)
        if n % 11 == 5:
            raws.append(b'{"not": "a transaction"}')
        if n % 13 == 2:
            raws.append(_cosigned().raw)
    sizes = [1, 5, 2, 9, 1, 1, 7, 3, 12, 4]
    blocks, start, height = [], 0, 1
    while start < len(raws):
        size = sizes[height % len(sizes)]
        chunk = raws[start : start + size]
        blocks.append(cut_block(NETWORK, height, "00" * 32, 1, chunk, "clinic-a", _signer(1)))
        start += size
        height += 1
    return blocks


class _Store:
    """Just enough of a ChainStore for _Preparation: the blocks from a height on."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks

    def iter_block_records(
        self, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[Block, list[Any]]]:
        return iter([(b, []) for b in self._range(start, end)])

    def block_index(self, start: int = 0, end: int | None = None) -> Iterator[BlockIndex]:
        return iter(
            BlockIndex(b.height, b.hash, b.prev, b.time, len(b.txs))
            for b in self._range(start, end)
        )

    def _range(self, start: int, end: int | None) -> list[Block]:
        return [b for b in self.blocks if start <= b.height and (end is None or b.height < end)]


def _expected(blocks: list[Block]) -> list[tuple[int, list[Transaction | None], list[Any]]]:
    out = []
    for block in blocks:
        decoded = decode_all(block.txs)
        out.append((block.height, decoded, check_signatures(decoded)))
    return out


def _prepared(blocks: list[Block], idle: Any = None) -> list[tuple[int, list[Any], list[Any]]]:
    with verify._Preparation(_Store(blocks), 1, blocks[-1].height + 1, idle) as prepared:  # type: ignore[arg-type]
        return [(block.height, list(txs), list(ok)) for (block, _), txs, ok in prepared]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "BATCH_BLOCKS", 3)
    monkeypatch.setattr(verify, "BATCH_TXS", 6)


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Two forked workers even on a one-core machine; records each pool's worker count."""
    started: list[int] = []
    real = verify.fork_pool
    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def two_workers(limit: int, fresh: bool = False) -> tuple[ProcessPoolExecutor, int] | None:
        pool = real(limit, fresh=fresh)
        if pool is not None:
            started.append(pool[1])
        return pool

    monkeypatch.setattr(verify, "fork_pool", two_workers)
    return started


def test_mixed_blocks_are_what_decode_all_and_check_signatures_give(
    small_batches: None, pools: list[int]
) -> None:
    blocks = _blocks()
    expected = _expected(blocks)
    assert any(tx is None for _, txs, _ in expected for tx in txs)
    assert any(not all(ok) for _, _, oks in expected for ok in oks if ok)
    assert any(len(ok) == 3 for _, _, oks in expected for ok in oks)
    assert _prepared(blocks) == expected
    if sys.platform.startswith("linux"):
        assert pools == [2]


def test_first_and_last_block_are_batches_of_their_own(small_batches: None) -> None:
    blocks = _blocks()
    batches = list(verify._batches(_Store(blocks), 1, blocks[-1].height + 1))  # type: ignore[arg-type]
    assert [block for batch in batches for block, _ in batch] == blocks
    assert len(batches[0]) == len(batches[-1]) == 1
    for batch in batches[1:-1]:
        # Closed at whichever limit comes first, or early to leave the last block alone.
        assert len(batch) <= verify.BATCH_BLOCKS
        assert sum(len(block.txs) for block, _ in batch[:-1]) < verify.BATCH_TXS


def test_check_signatures_needs_one_verdict_per_signature() -> None:
    decoded = decode_all([tx for block in _blocks()[:4] for tx in block.txs])
    items = sum(len(tx.signatures) for tx in decoded if tx is not None)
    assert [len(ok) for ok in check_signatures(decoded, verify=lambda i: [True] * len(i))] == [
        0 if tx is None else len(tx.signatures) for tx in decoded
    ]
    for wrong in (items - 1, items + 1):
        with pytest.raises(ValueError, match="a verdict for every signature"):
            check_signatures(decoded, verify=lambda _, n=wrong: [True] * n)


def test_a_short_chain_needs_no_workers(pools: list[int]) -> None:
    blocks = _blocks()[:3]
    assert sum(len(block.txs) for block in blocks) <= verify.BATCH_TXS
    assert _prepared(blocks) == _expected(blocks)
    assert pools == []


def test_idle_work_runs_while_waiting_until_it_has_none_for_the_batch(
    small_batches: None, pools: list[int]
) -> None:
    calls = []

    def idle() -> bool:
        calls.append(1)
        return len(calls) < 5

    blocks = _blocks()
    assert _prepared(blocks, idle) == _expected(blocks)
    # Once idle says it has nothing to do, it is asked again only while the next batch is
    # waited for: it may have been given more to do by then.
    batches = len(list(verify._batches(_Store(blocks), 1, blocks[-1].height + 1)))  # type: ignore[arg-type]
    assert len(calls) <= 5 + batches


class _BrokenAtSubmit:
    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        raise BrokenProcessPool("a worker died")

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class _BrokenAtResult(_BrokenAtSubmit):
    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_exception(BrokenProcessPool("a worker died"))
        return future


@pytest.mark.parametrize("pool", [_BrokenAtSubmit, _BrokenAtResult])
def test_failing_workers_leave_the_work_to_this_process(
    small_batches: None, monkeypatch: pytest.MonkeyPatch, pool: type[_BrokenAtSubmit]
) -> None:
    monkeypatch.setattr(verify, "fork_pool", lambda limit, fresh=False: (pool(), 2))
    blocks = _blocks()
    assert _prepared(blocks) == _expected(blocks)


def _finished(result: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(result)
    return future


class _NotYet(Future[Any]):
    """A part still being checked: waiting for it fails the test instead of hanging it."""

    def result(self, timeout: float | None = None) -> Any:
        assert self.done(), "waited for a part whose transactions were not asked for yet"
        return super().result(timeout)


def test_a_batch_is_handed_out_as_its_parts_arrive() -> None:
    """The first part's transactions come out while the second part is still being checked."""
    raws = [tx for block in _blocks()[:4] for tx in block.txs]
    first, second = raws[:5], raws[5:]
    later = _NotYet()
    arriving = verify._Arriving(
        raws, [_finished(verify._prepare_txs(first)), later], None, lambda: None
    )
    expected = decode_all(raws)
    assert list(arriving.txs(0, 5)) == expected[:5]
    assert list(arriving.sig_ok(0, 5)) == check_signatures(expected[:5])
    later.set_result(verify._prepare_txs(second))
    assert list(arriving.txs(5, len(raws))) == expected[5:]
    assert list(arriving.sig_ok(5, len(raws))) == check_signatures(expected[5:])


def test_a_part_lost_with_its_worker_is_prepared_here() -> None:
    raws = [tx for block in _blocks()[:4] for tx in block.txs]
    lost: Future[Any] = Future()
    lost.set_exception(BrokenProcessPool("a worker died"))
    never: Future[Any] = Future()  # of the same broken pool: not waited for
    failures: list[int] = []
    arriving = verify._Arriving(
        raws,
        [_finished(verify._prepare_txs(raws[:3])), lost, never],
        None,
        lambda: failures.append(1),
    )
    expected = decode_all(raws)
    assert list(arriving.txs(0, len(raws))) == expected
    assert list(arriving.sig_ok(0, len(raws))) == check_signatures(expected)
    assert failures == [1]


# --- the stored state, read while waiting ------------------------------------------------------


class _StateStore:
    def __init__(self, tables: dict[str, int], failing: str | None = None) -> None:
        self.tables = tables
        self.failing = failing
        self.reads: list[str] = []

    def state_cells(self, table: str) -> Iterator[tuple[str, tuple[Any, ...]]]:
        self.reads.append(table)
        for i in range(self.tables.get(table, 0)):
            if table == self.failing and i == 300:
                raise RuntimeError(f"cannot read {table}")
            yield f"{table}-{i:05d}", (i,)


def test_stored_state_reads_in_pieces() -> None:
    names = [spec.name for spec in TABLES]
    store = _StateStore({names[0]: 600, names[1]: 250, names[2]: 0})
    stored = verify._StoredState(store)  # type: ignore[arg-type]
    assert stored.step()  # 250 rows of the first table, no more
    assert store.reads == [names[0]]
    steps = 1
    while stored.step():
        steps += 1
    assert steps < 4 + len(names)
    assert len(stored.table(names[0])) == 600
    assert len(stored.table(names[1])) == 250
    assert stored.table(names[2]) == {}
    assert not stored.step()


def test_stored_state_error_is_raised_where_its_table_is_asked_for() -> None:
    names = [spec.name for spec in TABLES]
    store = _StateStore({names[0]: 10, names[1]: 1000}, failing=names[1])
    stored = verify._StoredState(store)  # type: ignore[arg-type]
    while stored.step():
        pass
    assert len(stored.table(names[0])) == 10  # tables before it are whole
    with pytest.raises(RuntimeError, match=f"cannot read {names[1]}"):
        stored.table(names[1])
    with pytest.raises(RuntimeError):
        stored.table(names[2])


# --- the stored state against the recomputed one, compared as replay goes ------------------------

_ORG_COLUMNS = next(spec for spec in TABLES if spec.name == "org").column_names()


def _org(value: str) -> dict[str, Any]:
    return {column: f"{column}-{value}" for column in _ORG_COLUMNS}


class _CellStore:
    """Stored org rows (other tables empty), as cells in column order."""

    def __init__(self, orgs: dict[str, dict[str, Any]]) -> None:
        self.orgs = orgs

    def state_cells(self, table: str) -> Iterator[tuple[str, tuple[Any, ...]]]:
        rows = self.orgs if table == "org" else {}
        for key in sorted(rows):
            yield key, self.row_cells(table)(rows[key])

    def row_cells(self, table: str) -> Any:
        columns = next(spec for spec in TABLES if spec.name == table).column_names()
        return lambda row: tuple(row[column] for column in columns)


def _replay(
    check: verify._StateCheck, writes: list[dict[str, dict[str, Any]]], idle: bool = True
) -> MemoryState:
    """Apply each delta of org rows, letting the check do all it can after each (idle)."""
    state = MemoryState()
    for rows in writes:
        delta = Delta()
        for key, row in rows.items():
            delta.put("org", key, row)
        state.apply(delta, [])
        check.applied(state, delta)
        while idle and check.step():
            pass
    return state


def test_the_check_keeps_pace_with_replay_that_never_waits() -> None:
    stored = {f"k{i:04d}": _org(str(i)) for i in range(3000)}
    check = verify._StateCheck(_CellStore(stored))  # type: ignore[arg-type]
    writes = [{key: stored[key] for key in list(stored)[i : i + 500]} for i in range(0, 3000, 500)]
    _replay(check, writes, idle=False)
    # Read and compared as the rows were written: nothing is left for the end.
    assert not check.step()
    check.finish(_replay(verify._StateCheck(_CellStore(stored)), writes), VerifyReport())


def _finish(stored: dict[str, dict[str, Any]], writes: list[dict[str, dict[str, Any]]]) -> None:
    check = verify._StateCheck(_CellStore(stored))  # type: ignore[arg-type]
    check.finish(_replay(check, writes), VerifyReport())


def test_a_row_that_differed_when_compared_and_was_written_again_is_fine() -> None:
    _finish(
        {"a": _org("final"), "b": _org("b")},
        [{"a": _org("first"), "b": _org("b")}, {"a": _org("final")}],
    )


def test_a_row_compared_equal_then_written_again_is_compared_again() -> None:
    with pytest.raises(verify.VerifyFailure, match=f"state org row a: column {_ORG_COLUMNS[0]}"):
        _finish({"a": _org("first")}, [{"a": _org("first")}, {"a": _org("later")}])


def test_rows_missing_on_either_side_are_named() -> None:
    with pytest.raises(verify.VerifyFailure, match="row c: in the store but not in any block"):
        _finish({"a": _org("a"), "c": _org("c")}, [{"a": _org("a")}])
    with pytest.raises(verify.VerifyFailure, match="row b: missing from the store"):
        _finish({"a": _org("a")}, [{"a": _org("a"), "b": _org("b")}])
    with pytest.raises(verify.VerifyFailure, match="row b: missing from the store"):
        _finish({"a": _org("a"), "c": _org("c")}, [{"a": _org("a"), "b": _org("b")}])


# --- whole chains ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo network plus blocks of several transactions, one of them with a forged
    signature (committed as invalid and unauthenticated) and shared blob content."""
    folder = tmp_path_factory.mktemp("pipeline") / "demo"
    result = run_demo(folder, kdf="fast")
    assert result.report is not None and result.report.ok
    creds = json.loads((folder / "demo-credentials.json").read_text("utf-8"))
    with Workspace.open(folder) as ws:
        info = creds["members"]["dokter-melati"]
        doctor = ws.actor(info["id"], info["passphrase"])
        patient = creds["patients"][0]["id"]
        shared = ws.node.blobs.put(os.urandom(300))
        for round_ in range(3):
            txs = []
            for n in range(6):
                body = {
                    "record": new_id("record"),
                    "version": 1,
                    "patient": patient,
                    "resource_type": "Observation",
                    "content_hash": shared if n % 2 else ws.node.blobs.put(os.urandom(200)),
                    "content_size": 200,
                    "basis": "organisation",
                    "basis_ref": None,
                }
                tx = make_tx(
                    ws.node.network_id,
                    "record.write",
                    doctor.id,
                    doctor.identity.signer,
                    body,
                    ws.node.clock(),
                )
                txs.append(Transaction.decode(_forged(tx)) if (round_, n) == (1, 4) else tx)
            results = [f.result(30) for f in ws.node.submit_many(txs)]
            assert [r.code for r in results].count("ok") == (5 if round_ == 1 else 6)
    return folder


def _verify(folder: Path, fresh: bool = False) -> VerifyReport:
    datadir = DataDir(folder)
    genesis = Genesis.from_bytes(datadir.genesis_path.read_bytes())
    store = open_store(datadir.store_url())
    blobs = SqliteBlobStore(datadir.content_path)
    try:
        return verify_chain(store, genesis, blobs, fresh_workers=fresh)
    finally:
        store.close()
        blobs.close()


def _summary(report: VerifyReport) -> dict[str, Any]:
    fields = asdict(report)
    del fields["seconds"]
    return fields


def _without_workers(folder: Path, monkeypatch: pytest.MonkeyPatch) -> VerifyReport:
    with monkeypatch.context() as patch:
        patch.setattr(verify, "fork_pool", lambda limit, fresh=False: None)
        return _verify(folder)


def _with_workers(
    folder: Path, monkeypatch: pytest.MonkeyPatch, pools: list[int], fresh: bool = False
) -> VerifyReport:
    with monkeypatch.context() as patch:
        patch.setattr(verify, "BATCH_BLOCKS", 2)
        patch.setattr(verify, "BATCH_TXS", 3)
        started = len(pools)
        report = _verify(folder, fresh)
    if sys.platform.startswith("linux"):
        assert len(pools) == started + 1
    return report


def test_workers_give_the_same_report(
    chain: Path, pools: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = _without_workers(chain, monkeypatch)
    assert alone.ok, alone.problem
    assert alone.invalid_txs >= 1
    assert _summary(_with_workers(chain, monkeypatch, pools)) == _summary(alone)
    # Workers forked from a fresh server, as the portal starts them.
    assert _summary(_with_workers(chain, monkeypatch, pools, fresh=True)) == _summary(alone)
    assert _summary(_verify(chain)) == _summary(alone)  # the defaults


def _sql(folder: Path, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with closing(sqlite3.connect(folder / "chain.db")) as db, db:
        return db.execute(statement, params).fetchall()


@pytest.mark.parametrize(
    "tamper",
    ["authenticated", "code", "state", "blob", "blob-bytes", "digest", "index"],
)
def test_workers_name_the_same_problem(
    chain: Path, tmp_path: Path, pools: list[int], monkeypatch: pytest.MonkeyPatch, tamper: str
) -> None:
    node = tmp_path / "node"
    shutil.copytree(chain, node)
    height, idx = _sql(node, "SELECT height, idx FROM txs WHERE authenticated = 0 LIMIT 1")[0]
    if tamper == "authenticated":
        _sql(node, "UPDATE txs SET authenticated = 1 WHERE height = ? AND idx = ?", (height, idx))
    elif tamper == "code":
        _sql(node, "UPDATE txs SET code = 'ok' WHERE height = ? AND idx = ?", (height, idx))
    elif tamper == "state":
        key = _sql(node, "SELECT key FROM state_record ORDER BY key DESC LIMIT 1")[0][0]
        _sql(node, "UPDATE state_record SET version = 9 WHERE key = ?", (key,))
    elif tamper == "blob":
        digest = _sql(node, "SELECT content_hash FROM state_record_version LIMIT 1")[0][0]
        tamper_blob(node / "content.db", digest, None)
    elif tamper == "blob-bytes":
        digest = _sql(node, "SELECT content_hash FROM state_record_version LIMIT 1")[0][0]
        tamper_blob(node / "content.db", digest, b"changed")
    elif tamper == "digest":  # not a digest at all: named as a state difference
        key = _sql(node, "SELECT key FROM state_record_version LIMIT 1")[0][0]
        _sql(node, "UPDATE state_record_version SET content_hash = '../x' WHERE key = ?", (key,))
    else:
        _sql(node, "UPDATE blocks SET time = time + 1 WHERE height = ?", (height,))
    alone = _without_workers(node, monkeypatch)
    assert not alone.ok
    assert _with_workers(node, monkeypatch, pools).problem == alone.problem


# --- blobs --------------------------------------------------------------------------------------


def test_blob_verdicts_in_the_order_given(tmp_path: Path) -> None:
    """Present and sound, present and corrupt, or absent: in input order."""
    blobs = SqliteBlobStore(tmp_path / "content.db")
    digests = [blobs.put(f"content {n}".encode()) for n in range(7)]
    corrupt, absent = digests[1], digests[-1]
    tamper_blob(tmp_path / "content.db", corrupt, b"tampered")
    blobs.delete(absent)
    expected = [
        verify._CORRUPT if d == corrupt else verify._ABSENT if d == absent else verify._SOUND
        for d in digests
    ]
    assert verify._blob_verdicts(blobs, digests) == expected


def test_workers_hash_every_stored_blob_during_replay(
    chain: Path, tmp_path: Path, pools: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verdict on every stored blob, each what reading the blob after replay gives."""
    monkeypatch.setattr(verify, "BATCH_BLOCKS", 2)
    monkeypatch.setattr(verify, "BATCH_TXS", 3)
    shutil.copytree(chain, tmp_path / "node")
    datadir = DataDir(tmp_path / "node")
    genesis = Genesis.from_bytes(datadir.genesis_path.read_bytes())
    blobs = SqliteBlobStore(datadir.content_path)
    corrupt = next(blobs.iter_digests())
    tamper_blob(datadir.content_path, corrupt, b"tampered")
    store = open_store(datadir.store_url())
    scan = verify._BlobScan(blobs)
    try:
        verify.replay_store(store, genesis, VerifyReport(), blob_scan=scan)
        verdicts = scan.verdicts()
    finally:
        store.close()
    if not sys.platform.startswith("linux"):  # no forked workers: read after replay
        assert verdicts is None
        return
    assert verdicts is not None
    stored = sorted(blobs.iter_digests())
    assert sorted(verdicts) == stored
    assert verdicts[corrupt] == verify._CORRUPT
    assert [verdicts[d] for d in stored] == verify._blob_verdicts(blobs, stored)
