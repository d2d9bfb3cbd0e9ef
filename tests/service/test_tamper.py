"""Tampering with a node's stored data directly is caught by ``verify``, naming what changed.

A demo network is built once per module; each test copies its folder, edits the SQLite
database (``sqlite3`` on ``chain.db``) or the blob files behind the node's back, and checks
that ``verify_chain`` (and, for a selection, ``rekam verify``) fails and names the block,
transaction, state row, blob or checkpoint that was changed. Wrapped keys are off-chain, so
tampering with them is not a verification failure: reading the record must then fail with
the opaque ``ContentUnavailable`` instead, and leak nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rekam.blobs import SqliteBlobStore
from rekam.encoding import canonical, parse
from rekam.ledger.block import Genesis
from rekam.ledger.state import TABLE_BY_NAME
from rekam.ledger.tx import Transaction, make_tx, new_id
from rekam.service.datadir import DataDir
from rekam.service.demo import run_demo
from rekam.service.errors import ContentUnavailable
from rekam.service.proofs import make_checkpoint
from rekam.service.verify import VerifyReport, rebuild_state, verify_chain
from rekam.service.workspace import Workspace
from rekam.storage import open_store
from tests.blob_rows import tamper_blob

# Record writes added to the demo in one submission, so that one block holds several.
EXTRA_WRITES = 4


# -- the demo network, built once -------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    """The module's untouched demo folder and what the tests need to know about it."""

    folder: Path
    creds: dict[str, Any]
    head: int  # height of the last block (a checkpoint covers it)
    multi: int  # height of a block holding at least two transactions


def _add_multi_tx_block(ws: Workspace, creds: dict[str, Any]) -> None:
    """Commit a few record writes submitted at once (one block of several transactions).

    The demo commits one transaction per block; the swap test needs a block with two. The
    writes use real blobs (random bytes) so the chain still verifies.
    """
    doctor_info = creds["members"]["dokter-melati"]
    doctor = ws.actor(doctor_info["id"], doctor_info["passphrase"])
    patient = creds["patients"][0]["id"]
    now = ws.node.clock()
    txs = []
    for _ in range(EXTRA_WRITES):
        content = os.urandom(600)
        body = {
            "record": new_id("record"),
            "version": 1,
            "patient": patient,
            "resource_type": "Observation",
            "content_hash": ws.node.blobs.put(content),
            "content_size": len(content),
            "basis": "organisation",
            "basis_ref": None,
        }
        txs.append(
            make_tx(
                ws.node.network_id, "record.write", doctor.id, doctor.identity.signer, body, now
            )
        )
    results = [f.result(30) for f in ws.node.submit_many(txs)]
    assert all(r.valid for r in results), [r.code for r in results]
    # A checkpoint of the new head, so that truncating the chain has a witness.
    make_checkpoint(
        ws.node.store, ws.node.network_id, {o: i.signer for o, i in ws.org_identities.items()}
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    folder = tmp_path_factory.mktemp("tamper") / "demo"
    result = run_demo(folder, kdf="fast")
    assert result.report is not None and result.report.ok, result.report
    creds = json.loads((folder / "demo-credentials.json").read_text("utf-8"))
    with Workspace.open(folder) as ws:
        _add_multi_tx_block(ws, creds)
    with closing(sqlite3.connect(folder / "chain.db")) as db:
        head = db.execute("SELECT max(height) FROM blocks").fetchone()[0]
        multi = db.execute("SELECT min(height) FROM blocks WHERE tx_count >= 2").fetchone()[0]
        checkpoint = db.execute("SELECT max(height) FROM checkpoints").fetchone()[0]
    assert multi is not None, "no block holds two transactions"
    assert checkpoint == head
    return Demo(folder, creds, head, multi)


@pytest.fixture
def node(demo: Demo, tmp_path: Path) -> Path:
    """A private copy of the demo folder, free to tamper with."""
    copy = tmp_path / "node"
    shutil.copytree(demo.folder, copy)
    return copy


# -- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tx:
    height: int
    idx: int
    tx_id: str
    type: str
    raw: bytes


def _sql(folder: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the node's database behind its back (committed at once)."""
    with closing(sqlite3.connect(folder / "chain.db")) as db, db:
        return db.execute(statement, params).fetchall()


def _txs(folder: Path, where: str = "1", params: tuple[Any, ...] = ()) -> list[Tx]:
    rows = _sql(
        folder,
        f"SELECT height, idx, tx_id, type, raw FROM txs WHERE {where} ORDER BY height, idx",
        params,
    )
    return [Tx(int(h), int(i), str(t), str(ty), bytes(r)) for h, i, t, ty, r in rows]


def _first_tx(folder: Path, tx_type: str) -> Tx:
    return _txs(folder, "type = ?", (tx_type,))[0]


def _state_key(folder: Path, table: str, where: str = "1", params: tuple[Any, ...] = ()) -> str:
    rows = _sql(folder, f"SELECT key FROM state_{table} WHERE {where} ORDER BY key LIMIT 1", params)
    assert rows, f"no {table} row matches {where}"
    return str(rows[0][0])


def _verify(folder: Path) -> VerifyReport:
    """verify_chain straight on the stored files (no workspace, nothing reconciled first)."""
    datadir = DataDir(folder)
    genesis = Genesis.from_bytes(datadir.genesis_path.read_bytes())
    store = open_store(datadir.store_url())
    blobs = SqliteBlobStore(datadir.content_path)
    try:
        return verify_chain(store, genesis, blobs)
    finally:
        store.close()
        blobs.close()


def _rekam(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("rekam")
    command = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from rekam.cli.main import app; app()"]
    )
    # A wide console, so rich never folds the message (and the ids in it) across lines.
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _cli_verify(folder: Path) -> tuple[int, str]:
    done = _rekam("verify", "-d", str(folder))
    output = " ".join((done.stdout + "\n" + done.stderr).split())
    return done.returncode, output


def assert_fails(folder: Path, *expected: str, cli: bool = False) -> str:
    """Verification fails and its problem contains every expected fragment; returns it."""
    report = _verify(folder)
    assert not report.ok, "tampering went unnoticed"
    problem = report.problem
    assert problem is not None
    for fragment in expected:
        assert fragment in problem, f"{fragment!r} not named in {problem!r}"
    if cli:
        code, output = _cli_verify(folder)
        assert code == 1, output
        assert f"FAILED: {problem}" in output, output
    return problem


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


# -- control ----------------------------------------------------------------------------------


def test_untampered_copy_verifies(node: Path, demo: Demo) -> None:
    report = _verify(node)
    assert report.ok, report.problem
    assert report.height == demo.head
    assert report.checkpoint == demo.head
    code, output = _cli_verify(node)
    assert code == 0, output
    assert output.startswith("OK: ")
    assert f"to height {demo.head}" in output


# -- blocks and transactions ------------------------------------------------------------------


def test_flipped_byte_in_tx_raw(node: Path) -> None:
    tx = _first_tx(node, "record.write")
    middle = len(tx.raw) // 2
    _sql(
        node,
        "UPDATE txs SET raw = ? WHERE height = ? AND idx = ?",
        (_flip(tx.raw, middle), tx.height, tx.idx),
    )
    assert_fails(node, f"block {tx.height}: Merkle root does not match", cli=True)


@pytest.mark.parametrize(
    ("column", "value"),
    [("valid", 0), ("code", "not_authorised"), ("authenticated", 0)],
)
def test_changed_stored_result(node: Path, column: str, value: object) -> None:
    tx = _first_tx(node, "consent.grant")
    _sql(
        node,
        f"UPDATE txs SET {column} = ? WHERE height = ? AND idx = ?",
        (value, tx.height, tx.idx),
    )
    assert_fails(
        node,
        f"block {tx.height} transaction {tx.idx} ({tx.tx_id[:16]})",
        cli=column == "valid",
    )


def test_changed_block_header_time(node: Path, demo: Demo) -> None:
    height = demo.multi - 3
    header = parse(bytes(_sql(node, "SELECT header FROM blocks WHERE height = ?", (height,))[0][0]))
    header["time"] += 1
    _sql(node, "UPDATE blocks SET header = ? WHERE height = ?", (canonical(header), height))
    assert_fails(node, f"block {height}: orderer signature does not verify", cli=True)


def test_deleted_last_block(node: Path, demo: Demo) -> None:
    gone = _txs(node, "height = ?", (demo.head,))
    _sql(node, "DELETE FROM txs WHERE height = ?", (demo.head,))
    _sql(node, "DELETE FROM blocks WHERE height = ?", (demo.head,))
    problem = assert_fails(node, "in the store but not in any block", cli=True)
    # The named row is one the deleted block made: keyed by its record or transaction ids.
    made = {t.tx_id for t in gone} | {Transaction.decode(t.raw).body["record"] for t in gone}
    named = re.match(r"state \w+ row (\S+): ", problem)
    assert named is not None and named.group(1) in made, problem


def test_deleted_last_block_and_rebuilt_state(node: Path, demo: Demo) -> None:
    """Truncate the chain and make state agree with it: the checkpoint still gives it away."""
    _sql(node, "DELETE FROM txs WHERE height = ?", (demo.head,))
    _sql(node, "DELETE FROM blocks WHERE height = ?", (demo.head,))
    store = open_store(DataDir(node).store_url())
    try:
        rebuild_state(store, Genesis.from_bytes((node / "genesis.json").read_bytes()))
    finally:
        store.close()
    assert_fails(node, f"checkpoint at {demo.head}: head does not match block {demo.head}")


def test_swapped_tx_order_within_block(node: Path, demo: Demo) -> None:
    first, second = _txs(node, "height = ?", (demo.multi,))[:2]
    _sql(node, "UPDATE txs SET idx = -1 WHERE height = ? AND idx = 0", (demo.multi,))
    _sql(node, "UPDATE txs SET idx = 0 WHERE height = ? AND idx = 1", (demo.multi,))
    _sql(node, "UPDATE txs SET idx = 1 WHERE height = ? AND idx = -1", (demo.multi,))
    assert [t.tx_id for t in _txs(node, "height = ?", (demo.multi,))[:2]] == [
        second.tx_id,
        first.tx_id,
    ]
    assert_fails(node, f"block {demo.multi}: Merkle root does not match")


def test_changed_block_signature(node: Path, demo: Demo) -> None:
    height = demo.multi - 1
    signature = bytes(_sql(node, "SELECT signature FROM blocks WHERE height = ?", (height,))[0][0])
    _sql(node, "UPDATE blocks SET signature = ? WHERE height = ?", (_flip(signature, 10), height))
    assert_fails(node, f"block {height}: orderer signature does not verify")


# -- state tables -----------------------------------------------------------------------------


def _edit_row(node: Path, demo: Demo, table: str) -> tuple[str, str]:
    """Change one column of one state row; returns (key, column)."""
    if table == "consent":
        key = _state_key(node, "consent", "revoked = 0")
        _sql(node, "UPDATE state_consent SET revoked = 1 WHERE key = ?", (key,))
        return key, "revoked"
    if table == "record":
        key = demo.creds["records"]["condition"]
        _sql(node, "UPDATE state_record SET version = version + 1 WHERE key = ?", (key,))
        return key, "version"
    key = demo.creds["members"]["dokter-kenanga"]["id"]
    _sql(node, "UPDATE state_member SET role = 'admin' WHERE key = ?", (key,))
    return key, "role"


@pytest.mark.parametrize("table", ["consent", "record", "member"])
def test_edited_state_row(node: Path, demo: Demo, table: str) -> None:
    key, column = _edit_row(node, demo, table)
    assert_fails(
        node,
        f"state {table} row {key}: column {column} differs from the blocks",
        cli=table == "consent",
    )


def _copy_row(node: Path, table: str, key: str, new_key: str, **changes: Any) -> None:
    columns = TABLE_BY_NAME[table].column_names()
    names = ", ".join(f'"{c}"' for c in columns)
    select = ", ".join("?" if c in changes else f'"{c}"' for c in columns)
    params = [changes[c] for c in columns if c in changes]
    _sql(
        node,
        f"INSERT INTO state_{table} (key, {names}) "
        f"SELECT ?, {select} FROM state_{table} WHERE key = ?",
        (new_key, *params, key),
    )


@pytest.mark.parametrize("table", ["member", "consent"])
def test_added_state_row(node: Path, demo: Demo, table: str) -> None:
    if table == "member":
        # A forged enrolment: a copy of a doctor under a new id.
        new_key = new_id("member")
        _copy_row(node, "member", demo.creds["members"]["dokter-melati"]["id"], new_key)
    else:
        # A forged consent letting the pharmacist see everything.
        new_key = new_id("consent")
        pharmacist = demo.creds["members"]["apoteker-sentosa"]["id"]
        _copy_row(
            node,
            "consent",
            _state_key(node, "consent"),
            new_key,
            grantee=pharmacist,
            grantee_kind="member",
            resource_types='["*"]',
        )
    assert_fails(node, f"state {table} row {new_key}: in the store but not in any block")


@pytest.mark.parametrize("table", ["consent", "event"])
def test_deleted_state_row(node: Path, demo: Demo, table: str) -> None:
    if table == "consent":
        key = _state_key(node, "consent")
    else:
        # Hide the emergency access from the patient's history.
        key = _state_key(node, "event", "kind = ?", ("emergency.open",))
    _sql(node, f"DELETE FROM state_{table} WHERE key = ?", (key,))
    assert_fails(node, f"state {table} row {key}: missing from the store")


@pytest.mark.parametrize("edit", ["consent", "added", "deleted"])
def test_rebuild_restores_state(node: Path, demo: Demo, edit: str) -> None:
    if edit == "consent":
        _edit_row(node, demo, "consent")
    elif edit == "added":
        _copy_row(node, "member", demo.creds["members"]["dokter-melati"]["id"], new_id("member"))
    else:
        _sql(node, "DELETE FROM state_record WHERE key = ?", (demo.creds["records"]["condition"],))
    assert_fails(node, "state ")
    done = _rekam("rebuild", "-d", str(node))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt" in done.stdout
    report = _verify(node)
    assert report.ok, report.problem
    code, output = _cli_verify(node)
    assert code == 0 and output.startswith("OK: "), output


# -- blobs ------------------------------------------------------------------------------------


def _version(node: Path, demo: Demo) -> tuple[str, str, bytes]:
    """The key of the diagnosis' first version, its content hash and its stored content."""
    key = f"{demo.creds['records']['condition']}@1"
    digest = str(
        _sql(node, "SELECT content_hash FROM state_record_version WHERE key = ?", (key,))[0][0]
    )
    data = SqliteBlobStore(node / "content.db").get(digest)
    assert data is not None
    return key, digest, data


@pytest.mark.parametrize("content", ["random", "other-blob", "flipped"])
def test_overwritten_blob(node: Path, demo: Demo, content: str) -> None:
    key, digest, original = _version(node, demo)
    if content == "random":
        data = os.urandom(len(original))
    elif content == "flipped":
        data = _flip(original, len(original) - 1)
    else:
        # Valid ciphertext of another record version, under this version's name.
        blobs = SqliteBlobStore(node / "content.db")
        other = next(d for d in blobs.iter_digests() if d != digest)
        data = blobs.get(other) or b""
    assert hashlib.sha256(data).hexdigest() != digest
    tamper_blob(node / "content.db", digest, data)
    assert_fails(
        node, f"blob of {key}: content does not match its on-chain hash", cli=content == "random"
    )


def test_deleted_blob(node: Path, demo: Demo) -> None:
    key, digest, _ = _version(node, demo)
    tamper_blob(node / "content.db", digest, None)
    assert_fails(node, f"blob of {key}: missing", cli=True)


# -- checkpoint -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["one", "all"])
def test_tampered_checkpoint_signature(node: Path, demo: Demo, which: str) -> None:
    height, sigs = _sql(node, "SELECT height, sigs FROM checkpoints ORDER BY height DESC LIMIT 1")[
        0
    ]
    doc = json.loads(sigs)
    assert len(doc) >= 2
    for entry in doc[:1] if which == "one" else doc:
        sig = entry["sig"]
        entry["sig"] = sig[:5] + ("B" if sig[5] == "A" else "A") + sig[6:]
    _sql(node, "UPDATE checkpoints SET sigs = ? WHERE height = ?", (json.dumps(doc), height))
    org = doc[0]["by"]
    assert_fails(
        node, f"checkpoint at {height}: signature by {org} does not verify", cli=which == "one"
    )


def test_tampered_older_checkpoint(node: Path) -> None:
    heights = [h for (h,) in _sql(node, "SELECT height FROM checkpoints ORDER BY height")]
    assert len(heights) >= 2, "the fixture makes a checkpoint in the demo and one after it"
    oldest = heights[0]
    (sigs,) = _sql(node, "SELECT sigs FROM checkpoints WHERE height = ?", (oldest,))[0]
    doc = json.loads(sigs)
    for entry in doc:
        entry["sig"] = ("A" if entry["sig"][0] != "A" else "B") + entry["sig"][1:]
    _sql(node, "UPDATE checkpoints SET sigs = ? WHERE height = ?", (json.dumps(doc), oldest))
    assert_fails(node, f"checkpoint at {oldest}: signature by")


@pytest.mark.parametrize(
    ("column", "value"),
    [("hash", "ab" * 32), ("prev", "cd" * 32), ("time", 1), ("tx_count", 99)],
)
def test_edited_block_index_column(node: Path, column: str, value: object) -> None:
    (height,) = _sql(node, "SELECT height FROM blocks WHERE height > 0 ORDER BY height LIMIT 1")[0]
    _sql(node, f"UPDATE blocks SET {column} = ? WHERE height = ?", (value, height))
    assert_fails(
        node, f"block {height}: stored hash, prev, time or tx_count differ from its header"
    )


def test_edited_stored_tx_type(node: Path) -> None:
    tx = _first_tx(node, "record.write")
    _sql(node, "UPDATE txs SET type = 'consent.grant' WHERE tx_id = ?", (tx.tx_id,))
    assert_fails(node, "stored tx_type 'consent.grant'")


# -- wrapped keys: off-chain, so not a verify failure, but the content must stay sealed -------


def _read_as_doctor(folder: Path, demo: Demo, record: str) -> dict[str, Any]:
    info = demo.creds["members"]["dokter-melati"]
    with Workspace.open(folder) as ws:
        doctor = ws.actor(info["id"], info["passphrase"])
        return ws.records.read(doctor, record, version=1).resource


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


@pytest.mark.parametrize("how", ["flip", "truncate", "other-record", "delete"])
def test_tampered_wrapped_keys(node: Path, demo: Demo, how: str) -> None:
    record = demo.creds["records"]["condition"]
    plaintext = _read_as_doctor(node, demo, record)  # readable before tampering
    rows = _sql(
        node,
        "SELECT recipient, wrapped FROM wrapped_keys WHERE record = ? AND version = 1",
        (record,),
    )
    assert len(rows) >= 3  # patient, author, the organisations, the grantees
    other = bytes(
        _sql(node, "SELECT wrapped FROM wrapped_keys WHERE record != ? LIMIT 1", (record,))[0][0]
    )
    # Every copy of this version's key, so no fallback (the doctor's org, the custodian) opens it.
    for recipient, stored in rows:
        wrapped = bytes(stored)
        if how == "delete":
            _sql(
                node,
                "DELETE FROM wrapped_keys WHERE record = ? AND version = 1 AND recipient = ?",
                (record, recipient),
            )
            continue
        changed = {
            "flip": _flip(wrapped, len(wrapped) // 2),
            "truncate": wrapped[:-1],
            "other-record": other,  # a valid wrapping, of another record's key
        }[how]
        _sql(
            node,
            "UPDATE wrapped_keys SET wrapped = ? "
            "WHERE record = ? AND version = 1 AND recipient = ?",
            (changed, record, recipient),
        )
    # Wrapped keys are not on the chain: verification still passes.
    assert _verify(node).ok
    info = demo.creds["members"]["dokter-melati"]
    with Workspace.open(node) as ws:
        doctor = ws.actor(info["id"], info["passphrase"])
        with pytest.raises(ContentUnavailable) as caught:
            ws.records.read(doctor, record, version=1)
        events = [
            e for e in ws.audit.history(demo.creds["patients"][0]["id"]) if e.record == record
        ]
    exc = caught.value
    assert type(exc) is ContentUnavailable
    # Opaque: a fixed message, no chained cause, nothing of the content or the keys.
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None
    shown = " ".join([str(exc), repr(exc), *map(str, exc.args), *traceback.format_exception(exc)])
    for value in _leaves(plaintext):
        if len(value) >= 6 and not value.startswith(("p-", "r-", "m-")):
            assert value not in shown, f"plaintext {value!r} leaked"
    # The access itself was on the chain before the content was refused.
    assert events and events[-1].kind == "access.read"
    assert events[-1].actor == info["id"] and events[-1].allowed is True
