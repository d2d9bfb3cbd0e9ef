"""Network nodes in this process over a real etcd cluster: ordering, peers, content, alarms."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from rekam.blobs import SqliteBlobStore
from rekam.crypto import load_identity
from rekam.ledger.block import Block, Checkpoint
from rekam.ledger.tx import Transaction, make_tx
from rekam.net.auth import sign_request
from rekam.net.peer import PeerClient, PeerError
from rekam.ordering import etcd as etcd_ordering
from rekam.ordering.etcd import (
    EtcdClient,
    EtcdOrderer,
    Keys,
    block_value,
    op_delete,
    op_put,
    prefix_end,
)
from rekam.ordering.etcd_local import LocalEtcdCluster, free_ports
from rekam.records import synthetic
from rekam.service.datadir import DataDir
from rekam.service.errors import AccessDenied, ContentUnavailable
from rekam.service.network import (
    NetworkConfig,
    NetworkNode,
    cosign,
    create_network,
    first_etcd_member,
    prepare_join,
    propose_org,
    submit_proposal,
)
from rekam.service.network_demo import run_network_demo
from rekam.service.node import NotCommittedError
from rekam.service.records import WriteResult
from rekam.service.verify import verify_chain
from rekam.service.workspace import Actor, OrgSpec, Workspace
from tests.network.harness import ORGS, require_etcd, wait_for


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcdCluster]:
    """One real 3-member cluster for the module; each test founds its own network in it."""
    require_etcd()
    cluster = LocalEtcdCluster.create(tmp_path_factory.mktemp("etcd"), 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _folders(tmp: Path, etcd: LocalEtcdCluster, **settings: int) -> dict[str, Path]:
    ports = free_ports(len(ORGS))
    folders = create_network(
        tmp, "rekam-test", ORGS, etcd.endpoints, [f"127.0.0.1:{p}" for p in ports], kdf="fast"
    )
    for folder in folders.values():
        config = NetworkConfig.load(folder)
        for key, value in settings.items():
            setattr(config, key, value)
        config.save(folder)
    return folders


def _enrol(net: NetworkNode) -> None:
    ws = net.workspace
    ws.admin.enrol_member(ws.actor(net.config.org), "doctor", "pw")


def _member_of(ws: Workspace, org: str, role: str) -> Actor:
    """A newly enrolled member of ``org``, unlocked."""
    return ws.actor(ws.admin.enrol_member(ws.actor(org), role, "pw").id, "pw")


def _condition_at(ws: Workspace, org: str, seed: int) -> tuple[Actor, Actor, WriteResult]:
    """A doctor of ``org``, a patient registered there and a Condition the doctor wrote."""
    doctor = _member_of(ws, org, "doctor")
    patient = ws.actor(ws.admin.register_patient(ws.actor(org), "pw")[0].id, "pw")
    resource = synthetic.condition(random.Random(seed), patient.id, None, doctor.id)
    return doctor, patient, ws.records.write(doctor, resource, patient=patient.id)


def _consent(ws: Workspace, patient: Actor, grantee: Actor) -> None:
    """The patient's consent to ``grantee`` for every type, for treatment, for a day."""
    ws.consent.grant(
        patient, patient.id, grantee.id, resource_types=["*"], purpose="treatment", days=1
    )


def _revocations(net: NetworkNode, count: int) -> list[Transaction]:
    """``count`` distinct, well-formed transactions (one member revoked ``count`` times: the
    cutter orders what is well formed; the rules then refuse all but the first)."""
    ws = net.workspace
    org = ws.actor(net.config.org)
    member = ws.admin.enrol_member(org, "doctor", "pw")
    return [
        make_tx(
            ws.node.network_id,
            "member.revoke",
            org.id,
            org.identity.signer,
            {"member": member.id},
            ws.node.clock(),
        )
        for _ in range(count)
    ]


def _ordered_ids(net: NetworkNode) -> list[str]:
    store = net.workspace.node.store
    return [Transaction.decode(r).tx_id for b in store.iter_blocks(1) for r in b.txs]


def test_retried_submission_is_ordered_once(tmp_path: Path, etcd: LocalEtcdCluster) -> None:
    folders = _folders(tmp_path, etcd)
    with NetworkNode.open(folders["klinik-a"]) as net:
        ws = net.workspace
        [tx] = _revocations(net, 1)
        assert net.orderer is not None
        # A client that timed out retries: the same transaction reaches etcd three times.
        net.orderer.submit(tx)
        net.orderer.submit(tx)
        result = ws.node.submit_wait(tx, timeout=20)
        assert result.valid
        net.orderer.submit(tx)  # and once more after it committed
        _enrol(net)  # later blocks are cut after the late retry was seen
        _enrol(net)
        assert _ordered_ids(net).count(tx.tx_id) == 1
        pending = net.orderer.client.range(
            net.orderer.keys.pending, net.orderer.keys.pending + b"\xff"
        )
        assert not pending


def test_transactions_pending_before_a_node_cuts_are_ordered_and_bad_keys_dropped(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path, etcd)
    with NetworkNode.open(folders["klinik-a"]) as net:
        ws = net.workspace
        org = ws.actor("klinik-a")
        members = [ws.admin.enrol_member(org, "doctor", "pw") for _ in range(3)]
        network_id = ws.node.network_id
        txs = [
            make_tx(
                network_id,
                "member.revoke",
                org.id,
                org.identity.signer,
                {"member": m.id},
                ws.node.clock(),
            )
            for m in members
        ]
    keys = Keys(network_id)
    client = EtcdClient(etcd.endpoints)
    try:
        # Written while no node runs: the cutter's watch cannot have reported them, so the
        # read at the start of its stream must find them.
        client.txn(
            [],
            [op_put(keys.tx(tx.tx_id), tx.raw) for tx in txs]
            + [
                op_put(keys.tx("not-a-transaction"), b"garbage"),
                op_put(keys.tx("0" * 64), txs[0].raw),  # a transaction under another id
            ],
        )
        with NetworkNode.open(folders["klinik-a"]) as net:
            wait_for(lambda: net.seen([t.tx_id for t in txs]) == {t.tx_id for t in txs}, 20, "them")
            wait_for(
                lambda: not client.range(keys.pending, prefix_end(keys.pending)),
                10,
                "the pending keys to go",
            )
            ids = _ordered_ids(net)
            assert sorted(t for t in ids if t in {x.tx_id for x in txs}) == sorted(
                x.tx_id for x in txs
            )
    finally:
        client.close()


def test_a_backlog_beyond_the_cutters_list_is_ordered_oldest_first_and_once(
    tmp_path: Path, etcd: LocalEtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cutter keeps at most PENDING_READ pending transactions in memory; the rest wait in
    etcd and are read, oldest first, as its list empties."""
    monkeypatch.setattr(etcd_ordering, "PENDING_READ", 8)
    folders = _folders(tmp_path, etcd)
    with NetworkNode.open(folders["klinik-a"]) as net:
        txs = _revocations(net, 30)
    keys = Keys(txs[0].network)
    client = EtcdClient(etcd.endpoints)
    try:
        for tx in txs:  # one put each: each gets its own, later, create revision
            client.put(keys.tx(tx.tx_id), tx.raw)
        with NetworkNode.open(folders["klinik-a"]) as net:
            wanted = {tx.tx_id for tx in txs}
            wait_for(lambda: wanted <= net.seen(list(wanted)), 30, "the whole backlog")
            ordered = [t for t in _ordered_ids(net) if t in wanted]
            assert ordered == [tx.tx_id for tx in txs]  # once each, in submission order
            assert not client.range(keys.pending, prefix_end(keys.pending))
    finally:
        client.close()


def test_a_stalled_watch_costs_latency_not_transactions(
    tmp_path: Path, etcd: LocalEtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the watch on pending transactions silent, the cutter's own periodic read of the
    pending keys still finds what was submitted."""

    def stalled(self: EtcdOrderer) -> None:
        self._stop.wait()  # a stream that never says anything

    monkeypatch.setattr(EtcdOrderer, "_watch_pending", stalled)
    folders = _folders(tmp_path, etcd)
    with NetworkNode.open(folders["klinik-a"]) as net:
        txs = _revocations(net, 3)
        for tx in txs:
            assert net.workspace.node.submit_wait(tx, timeout=20).tx_id == tx.tx_id
        assert sum(_ordered_ids(net).count(tx.tx_id) for tx in txs) == 3


def test_founding_nodes_start_at_different_etcd_members(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path, etcd)
    members = len(etcd.endpoints)
    firsts = {org: first_etcd_member(folder, org, members) for org, folder in folders.items()}
    assert sorted(firsts.values()) == list(range(members))
    # An organisation that is not a founder still gets a member.
    assert 0 <= first_etcd_member(folders["klinik-a"], "klinik-baru", members) < members


def test_peer_requests_must_be_signed_by_an_organisation(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path, etcd)
    with NetworkNode.open(folders["klinik-a"]) as net:
        url = net.config.url
        b_dir = folders["klinik-b"]
        b_identity = load_identity(DataDir(b_dir).config()["orgs"]["klinik-b"], b_dir)
        good = PeerClient(net.network_id, "klinik-b", b_identity.signer)
        assert good.head(url)["height"] == net.workspace.node.head.height
        good.close()
        # Claiming another organisation with one's own key is refused.
        liar = PeerClient(net.network_id, "apotek-c", b_identity.signer)
        with pytest.raises(PeerError, match="401"):
            liar.head(url)
        liar.close()
        with httpx.Client() as http:
            assert http.get(url + "/peer/head").status_code == 401  # unsigned
            headers = sign_request(
                net.network_id, "klinik-b", b_identity.signer, "GET", "/peer/head"
            )
            assert http.get(url + "/peer/head", headers=headers).status_code == 200
            assert http.get(url + "/peer/head", headers=headers).status_code == 401  # replay
            # Signed for one path, sent to another.
            other = sign_request(net.network_id, "klinik-b", b_identity.signer, "GET", "/peer/head")
            assert http.get(url + "/peer/blocks?start=1&end=2", headers=other).status_code == 401
            stale = dict(
                sign_request(net.network_id, "klinik-b", b_identity.signer, "GET", "/peer/head")
            )
            stale["x-rekam-time"] = str(int(stale["x-rekam-time"]) - 120_000)
            assert http.get(url + "/peer/head", headers=stale).status_code == 401


def _answer_json(handler: BaseHTTPRequestHandler, value: object) -> None:
    """Answer a fake peer's request with 200 and a JSON body."""
    body = json.dumps(value).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Tamperer(BaseHTTPRequestHandler):
    """A peer that serves real blocks with one transaction byte flipped."""

    source: NetworkNode

    def do_GET(self) -> None:
        query = dict(p.split("=") for p in self.path.split("?", 1)[1].split("&"))
        raws = self.source.blocks_bytes(int(query["start"]), int(query["end"]))
        block = Block.from_bytes(raws[0])
        txs = list(block.txs)
        txs[0] = txs[0][:-2] + bytes([txs[0][-2] ^ 1]) + txs[0][-1:]
        raws[0] = Block(block.header, block.signature, tuple(txs)).to_bytes()
        _answer_json(self, {"blocks": [base64.b64encode(r).decode() for r in raws]})

    def log_message(self, *args: object) -> None:
        """Quiet."""


def test_a_peer_serving_a_tampered_block_is_refused_and_reported(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    # etcd keeps 3 blocks: a node joining later must fetch the rest from peers.
    folders = _folders(tmp_path, etcd, window=3)
    with NetworkNode.open(folders["klinik-a"]) as a:
        for _ in range(8):
            _enrol(a)
        _Tamperer.source = a
        evil = ThreadingHTTPServer(("127.0.0.1", 0), _Tamperer)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            config = NetworkConfig.load(folders["klinik-b"])
            # The tampering peer is asked first; klinik-a (registered in etcd) after it.
            config.peers = {"evil-peer": f"http://127.0.0.1:{evil.server_address[1]}"}
            config.save(folders["klinik-b"])
            with NetworkNode.open(folders["klinik-b"], cut_blocks=False) as b:
                target = a.workspace.node.head
                assert b.wait_for_height(target.height, 30)
                assert b.block_hash(target.height) == target.hash
                bad = [x for x in b.alarms if x["kind"] == "bad_peer_block"]
                assert bad and "evil-peer" in bad[0]["detail"]
                assert (folders["klinik-b"] / "alarms.jsonl").is_file()
        finally:
            evil.shutdown()


def test_a_different_head_in_a_cosigned_checkpoint_is_a_split_view(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path, etcd, checkpoint_every=1)
    with NetworkNode.open(folders["klinik-a"]) as a:
        ws = a.workspace
        org = ws.actor("klinik-a")
        member = ws.admin.enrol_member(org, "doctor", "pw")
        _enrol(a)
        height = a.workspace.node.head.height
        b_dir = folders["klinik-b"]
        b_signer = load_identity(DataDir(b_dir).config()["orgs"]["klinik-b"], b_dir).signer
        body = {
            "network": a.network_id,
            "height": height,
            "head": hashlib.sha256(b"another block").hexdigest(),
            "blocks_root": hashlib.sha256(b"another log").hexdigest(),
        }
        forged = Checkpoint(body, (("klinik-b", b_signer.sign(Checkpoint(body, ()).message())),))
        assert a.orderer is not None
        client = EtcdClient(etcd.endpoints)
        client.put(
            a.orderer.keys.checkpoints + b"%012d/klinik-b" % height,
            json.dumps(forged.to_json()).encode(),
        )
        client.close()
        wait_for(lambda: any(x["kind"] == "split_view" for x in a.alarms), 10, "the alarm")
        assert a.orderer.halted is not None
        # A halted node accepts no further block: a valid write now cannot commit here.
        tx = make_tx(
            ws.node.network_id,
            "member.revoke",
            org.id,
            org.identity.signer,
            {"member": member.id},
            ws.node.clock(),
        )
        with pytest.raises(NotCommittedError):
            ws.node.submit_wait(tx, timeout=3)
        assert a.workspace.node.head.height == height


def test_demo_across_three_nodes_and_content_only_where_it_may_be_opened(
    tmp_path: Path,
) -> None:
    require_etcd()
    result = run_network_demo(tmp_path / "demo", kdf="fast")
    assert result.agreed, result.heads
    assert len(result.heads) == 3
    assert "read without consent at klinik-kenanga: denied and recorded" in result.story
    assert any("read with consent at klinik-kenanga" in line for line in result.story)
    assert any("dispensed at apotek-sentosa" in line for line in result.story)
    # The pharmacy was never given the diagnosis: its node holds no copy of it.
    nodes = tmp_path / "demo" / "nodes"
    melati, kenanga, sentosa = (
        set(SqliteBlobStore(nodes / org / "content.db").iter_digests())
        for org in ("klinik-melati", "klinik-kenanga", "apotek-sentosa")
    )
    assert kenanga and kenanga < melati
    assert len(sentosa & melati) == 1  # only the shared prescription came over
    # Every node verifies: content it was never sent is counted, not reported missing...
    for org in ("klinik-melati", "klinik-kenanga", "apotek-sentosa"):
        out = subprocess.run(
            [sys.executable, "-m", "rekam.cli.main", "verify", "-d", str(nodes / org)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith("OK")
    assert "not held by this node" in out.stdout  # the pharmacy's node
    # ... but content it holds a key for must be there.
    with Workspace.open(nodes / "apotek-sentosa") as ws:
        held = ws.node.store.wrapped_versions()
        assert held
        versions = dict(ws.node.store.state_rows("record_version"))
        digest = next(
            v["content_hash"] for v in versions.values() if (v["record"], v["version"]) in held
        )
        ws.node.blobs.delete(digest)
        report = verify_chain(ws.node.store, ws.genesis, ws.node.blobs, held_content_only=True)
    assert report.problem is not None and "missing" in report.problem


def test_content_is_refused_to_a_node_without_a_key(tmp_path: Path, etcd: LocalEtcdCluster) -> None:
    folders = _folders(tmp_path, etcd)
    with NetworkNode.open(folders["klinik-a"]) as a, NetworkNode.open(folders["klinik-b"]) as b:
        wa, wb = a.workspace, b.workspace
        doctor = wa.actor(wa.admin.enrol_member(wa.actor("klinik-a"), "doctor", "pw").id, "pw")
        other = wb.actor(wb.admin.enrol_member(wb.actor("klinik-b"), "doctor", "pw").id, "pw")
        patient = wa.admin.register_patient(wa.actor("klinik-a"), "pw")[0].id
        rec = wa.records.write(
            doctor, synthetic.condition(random.Random(1), patient, None, doctor.id), patient=patient
        )
        assert b.wait_for_height(wa.node.head.height, 20)
        assert not b.ensure_content(rec.record, 1)
        assert wb.node.blobs.get(rec.content_hash) is None
        with pytest.raises(AccessDenied):
            wb.records.read(other, rec.record)


def test_etcd_keeps_checkpoints_and_node_registrations_of_the_window_only(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path, etcd, window=3, checkpoint_every=1)
    client = EtcdClient(etcd.endpoints)
    try:
        with NetworkNode.open(folders["klinik-a"]) as a:
            assert a.orderer is not None
            keys = a.orderer.keys
            # A node that left long ago (its head is far behind) and an unreadable entry.
            ghost = {"org": "ghost", "url": "http://127.0.0.1:9", "height": 0, "hash": "0"}
            client.put(keys.nodes + b"ghost", json.dumps(ghost).encode())
            client.put(keys.nodes + b"junk", b"not json")
            for _ in range(12):
                _enrol(a)
                # Let the node publish each checkpoint before the next block.
                height = a.workspace.node.head.height
                wait_for(
                    lambda h=height: client.get(keys.checkpoint(h, "klinik-a")) is not None,
                    10,
                    "the checkpoint in etcd",
                )
            head = a.workspace.node.head.height
            assert head >= 12
            heights = [
                int(kv.key[len(keys.checkpoints) :].split(b"/")[0])
                for kv in client.range(keys.checkpoints, prefix_end(keys.checkpoints))
            ]
            # Trimmed every 3 blocks to the last 3: nothing older than two windows is left.
            assert heights and min(heights) >= head - 6
            assert client.get(keys.checkpoint(1, "klinik-a")) is None
            assert client.get(keys.nodes + b"ghost") is None
            assert client.get(keys.nodes + b"junk") is None
            # The running node's own registration stays, or comes back at its next publish.
            wait_for(
                lambda: client.get(keys.nodes + b"klinik-a") is not None, 10, "the registration"
            )
            # Only the last window of blocks is kept, as before.
            assert client.get(keys.block(1)) is None
            # Every checkpoint this node signed is still in its own store.
            assert a.workspace.node.store.latest_checkpoint() is not None
    finally:
        client.close()


def test_an_invalid_block_in_etcd_is_refused_and_reported(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path, etcd)
    with NetworkNode.open(folders["klinik-a"]) as a:
        _enrol(a)
        _enrol(a)
    # Reopened without cutting: only the block written below is offered to the follower.
    with NetworkNode.open(folders["klinik-a"], cut_blocks=False) as a:
        assert a.orderer is not None
        head = a.workspace.node.head
        real = next(iter(a.workspace.node.store.iter_blocks(head.height, head.height + 1)))
        txs = list(real.txs)
        txs[0] = txs[0][:-2] + bytes([txs[0][-2] ^ 1]) + txs[0][-1:]
        forged = Block(real.header, real.signature, tuple(txs))
        client = EtcdClient(etcd.endpoints)
        try:
            client.put(a.orderer.keys.block(head.height + 1), block_value(forged))
            wait_for(lambda: any(x["kind"] == "invalid_block" for x in a.alarms), 10, "the alarm")
            assert a.workspace.node.head == head
            client.txn([], [op_delete(a.orderer.keys.block(head.height + 1))])
        finally:
            client.close()


class _WrongContent(BaseHTTPRequestHandler):
    """A peer that answers content requests with other bytes than the chain's."""

    def do_GET(self) -> None:
        _answer_json(self, {"blob": base64.b64encode(b"not the record").decode(), "keys": []})

    def log_message(self, *args: object) -> None:
        """Quiet."""


def test_the_ordinary_read_fetches_content_from_the_authoring_node_and_checks_it(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path, etcd)
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _WrongContent)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with (
            NetworkNode.open(folders["klinik-a"]) as a,
            NetworkNode.open(folders["klinik-b"], cut_blocks=False) as b,
        ):
            wa, wb = a.workspace, b.workspace
            doctor, patient, rec = _condition_at(wa, "klinik-a", seed=2)
            reader = _member_of(wb, "klinik-b", "doctor")
            _consent(wa, patient, reader)
            assert b.wait_for_height(wa.node.head.height, 20)
            assert b.local_blobs.get(rec.content_hash) is None

            # A peer answering for klinik-a with other bytes: refused, reported, nothing kept.
            real = b.config.peers["klinik-a"]
            b.config.peers["klinik-a"] = f"http://127.0.0.1:{evil.server_address[1]}"
            with pytest.raises(ContentUnavailable):
                wb.records.read(reader, rec.record)
            assert any(x["kind"] == "bad_peer_content" for x in b.alarms)
            assert b.local_blobs.get(rec.content_hash) is None
            assert wb.node.store.get_wrapped_key(rec.record, 1, reader.id) is None

            # The ordinary read path fetches it from klinik-a's node, checks it and opens it.
            b.config.peers["klinik-a"] = real
            read = wb.records.read(reader, rec.record)
            assert read.resource == wa.records.read(doctor, rec.record).resource
            stored = b.local_blobs.get(rec.content_hash)
            assert stored is not None and hashlib.sha256(stored).hexdigest() == rec.content_hash
    finally:
        evil.shutdown()


def test_a_later_consent_to_another_member_is_read_with_the_content_already_held(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path, etcd)
    with (
        NetworkNode.open(folders["klinik-a"]) as a,
        NetworkNode.open(folders["klinik-b"], cut_blocks=False) as b,
    ):
        wa, wb = a.workspace, b.workspace
        _doctor, patient, rec = _condition_at(wa, "klinik-a", seed=3)
        first = _member_of(wb, "klinik-b", "doctor")
        second = _member_of(wb, "klinik-b", "nurse")
        _consent(wa, patient, first)
        assert b.wait_for_height(wa.node.head.height, 20)
        wb.records.read(first, rec.record)
        assert b.local_blobs.get(rec.content_hash) is not None  # held since the first read
        # A later consent to another member of the same organisation: the content is here,
        # that member's key is not yet; the read asks the custodian's node for it.
        _consent(wa, patient, second)
        assert b.wait_for_height(wa.node.head.height, 20)
        assert wb.node.store.get_wrapped_key(rec.record, 1, second.id) is None
        read = wb.records.read(second, rec.record)
        assert read.resource == wb.records.read(first, rec.record).resource
        assert wb.node.store.get_wrapped_key(rec.record, 1, second.id) is not None


def test_a_new_organisation_needs_a_majority_then_its_node_joins(
    tmp_path: Path, etcd: LocalEtcdCluster
) -> None:
    folders = _folders(tmp_path / "net", etcd, window=3)
    a_dir, b_dir = folders["klinik-a"], folders["klinik-b"]
    with NetworkNode.open(a_dir) as a:
        for _ in range(5):
            _enrol(a)  # more blocks than etcd's window: the new node needs its peers
        lab = tmp_path / "lab-d"
        request = prepare_join(
            lab,
            a_dir / "genesis.json",
            OrgSpec("lab-d", "lab", "Lab D"),
            etcd.endpoints,
            f"127.0.0.1:{free_ports(1)[0]}",
            kdf="fast",
        )
        store = a.workspace.node.store
        # One signature of three organisations is no majority: refused, the id stays free.
        alone = propose_org(a_dir, request)
        tx_id = submit_proposal(a_dir, alone)
        wait_for(lambda: store.get_tx(tx_id) is not None, 20, "the lone proposal's result")
        record = store.get_tx(tx_id)
        assert record is not None and not record.valid and record.code == "quorum"
        assert store.get("org", "lab-d") is None
        # Cosigned by a second organisation: two of three, a majority.
        cosigned = cosign(b_dir, alone)
        submit_proposal(a_dir, cosigned)
        wait_for(lambda: store.get("org", "lab-d") is not None, 20, "the enrolment")
        with NetworkNode.open(lab) as d:
            assert d.orderer is not None and not d.orderer.leading
            target = a.workspace.node.head
            assert d.wait_for_height(target.height, 30)
            assert d.block_hash(target.height) == target.hash
            assert d.workspace.node.store.get("org", "lab-d") is not None


def test_network_create_gives_each_node_only_its_own_keys(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rekam.cli.main import app

    out = tmp_path / "nodes"
    args = ["network", "create", "--out", str(out), "--network", "rekam-test", "--kdf", "fast"]
    for i, spec in enumerate(ORGS):
        args += [
            "--org",
            f"{spec.org}:{spec.kind}:{spec.label}",
            "--listen",
            f"127.0.0.1:{7400 + i}",
        ]
    args += ["--etcd", "http://127.0.0.1:2379"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(s.org for s in ORGS)  # no founding copy
    genesis = {(out / s.org / "genesis.json").read_bytes() for s in ORGS}
    assert len(genesis) == 1
    for spec in ORGS:
        folder = out / spec.org
        keys = sorted(p.stem for p in (folder / "keys" / "orgs").iterdir())
        secrets = sorted(p.stem for p in (folder / "secrets").iterdir())
        assert keys == [spec.org] and secrets == [spec.org]
        config = NetworkConfig.load(folder)
        assert config.org == spec.org and spec.org not in config.peers
        assert set(config.peers) == {s.org for s in ORGS} - {spec.org}
