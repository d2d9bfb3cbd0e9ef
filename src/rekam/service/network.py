"""Network mode: a node ordered by an etcd cluster, talking to other nodes over HTTP.

This module is the composition root of a network node. It opens the data folder's
``Workspace`` with the etcd orderer plugged in, serves the peer API, and does the node's
network duties:

* it follows the chain etcd orders and commits every block after validating it itself; a
  block outside etcd's window is fetched from other nodes and checked (hash link, Merkle
  root, orderer signature, every rule) before it is stored; a peer that serves a bad block is
  refused and reported;
* it signs a checkpoint every ``checkpoint_every`` blocks, publishes it through etcd and
  compares other organisations' checkpoints with its own chain: a different head for the same
  height is a split view, raised loudly, and the node stops accepting blocks;
* it fetches encrypted content it may open (a wrapped key for its organisation, members or
  patients) from the authoring node and checks it against the on-chain hash. The workspace's
  blob store is a ``PeerBlobStore``: the ordinary record read path finds content held by
  another node as if it were local, with the same checks.

A node folder holds one organisation's keys and ``network.json``::

    {"org": "klinik-a", "etcd": ["http://10.0.0.1:2379", ...],
     "listen": "127.0.0.1:7401", "peers": {"klinik-b": "http://10.0.0.2:7401"}}
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rekam.crypto import Signer, load_identity
from rekam.encoding import b64d, b64e, canonical
from rekam.ledger._errors import LedgerError
from rekam.ledger.block import Block, Checkpoint, Genesis, genesis_block
from rekam.ledger.merkle import leaf_hash
from rekam.ledger.state import is_fetching
from rekam.ledger.tx import SIGNING_DOMAIN, Transaction, make_tx, new_id, unsigned_tx
from rekam.ledger.validate import BlockResult, TxResult, check_block, genesis_delta
from rekam.net.peer import PeerClient, PeerError, PeerServer
from rekam.ordering.etcd import EtcdClient, EtcdError, EtcdOrderer, Head, Keys, prefix_end
from rekam.service.datadir import (
    CONFIG_FORMAT,
    NETWORK_FILE,
    DataDir,
    DataDirError,
    _atomic_write,
)
from rekam.service.node import now_ms
from rekam.service.ports import BlobStore
from rekam.service.proofs import BlockLog, block_leaf, results_root
from rekam.service.workspace import OrgSpec, Workspace
from rekam.storage import open_store

log = logging.getLogger(__name__)

STATUS_FILE = "node-status.json"
ALARM_FILE = "alarms.jsonl"


@dataclass
class NetworkConfig:
    """A node's place in the network (``network.json``)."""

    org: str
    etcd: list[str]
    listen: str
    peers: dict[str, str] = field(default_factory=dict)
    window: int = 1000
    lease_ttl: int = 2
    checkpoint_every: int = 50
    max_block_txs: int = 1000

    @property
    def url(self) -> str:
        """This node's peer API address."""
        return f"http://{self.listen}"

    @classmethod
    def load(cls, root: Path) -> NetworkConfig:
        """Read ``network.json`` from a node folder."""
        path = root / NETWORK_FILE
        if not path.is_file():
            raise DataDirError(f"{root} is not a network node folder (no {NETWORK_FILE})")
        doc = json.loads(path.read_text("utf-8"))
        return cls(**doc)

    def save(self, root: Path) -> None:
        """Write ``network.json``."""
        _atomic_write(root / NETWORK_FILE, json.dumps(self.__dict__, indent=2) + "\n")


def create_network(
    out: Path,
    name: str,
    orgs: Sequence[OrgSpec],
    etcd: Sequence[str],
    listen: Sequence[str],
    *,
    kdf: str = "standard",
    window: int = 1000,
) -> dict[str, Path]:
    """Found a network and lay out one node folder per founding organisation.

    The founding folder (every organisation's keys) exists only while this runs; each node
    folder keeps only its own organisation's keystore. Deliver each folder to its
    organisation over a secure channel.
    """
    if len(listen) != len(orgs):
        raise DataDirError("give one listen address per organisation")
    out.mkdir(parents=True, exist_ok=True)
    founding = out / ".founding"
    Workspace.create(founding, name, orgs, kdf=kdf).close()
    urls = {o.org: f"http://{addr}" for o, addr in zip(orgs, listen, strict=True)}
    folders: dict[str, Path] = {}
    try:
        for spec, addr in zip(orgs, listen, strict=True):
            folder = out / spec.org
            shutil.copytree(founding, folder, ignore=shutil.ignore_patterns("rekam.lock"))
            datadir = DataDir(folder)
            config = datadir.config()
            config["orgs"] = {spec.org: config["orgs"][spec.org]}
            config["orderer"] = spec.org
            datadir.write_config(config)
            for other in orgs:
                if other.org != spec.org:
                    datadir.keystore_path(other.org).unlink()
                    (folder / "secrets" / f"{other.org}.pass").unlink()
            NetworkConfig(
                spec.org,
                list(etcd),
                addr,
                {o: u for o, u in urls.items() if o != spec.org},
                window=window,
            ).save(folder)
            folders[spec.org] = folder
    finally:
        shutil.rmtree(founding, ignore_errors=True)
    return folders


class PeerBlobStore:
    """A node's blob store that fetches content it misses from other nodes.

    Reads go to the local store first; on a miss, ``fetch(digest)`` asks the peers for the
    record version with that on-chain content hash (``NetworkNode.fetch_content``: the
    content is kept only if its SHA-256 equals the hash on the chain, together with the
    wrapped keys the peer holds for this node) and the local store is read again. Writes and
    deletions are local. This keeps the record service unaware of the network.
    """

    def __init__(self, local: BlobStore, fetch: Callable[[str], bool]) -> None:
        self.local = local
        self._fetch = fetch

    def put(self, data: bytes) -> str:
        """Store bytes locally; returns their SHA-256 hex."""
        return self.local.put(data)

    def get(self, digest: str) -> bytes | None:
        """The bytes with this digest: local, else fetched from a peer and checked, else None."""
        data = self.local.get(digest)
        if data is None and self._fetch(digest):
            data = self.local.get(digest)
        return data

    def get_many(self, digests: Sequence[str]) -> list[bytes | None]:
        """The bytes with each digest, as ``get`` gives them, in the order given."""
        found = self.local.get_many(digests)
        pairs = zip(digests, found, strict=True)
        return [self.get(digest) if data is None else data for digest, data in pairs]

    def partition(self, parts: int) -> list[tuple[int, int]]:
        """Parts of the local store, for ``scan``."""
        return self.local.partition(parts)

    def scan(self, part: tuple[int, int]) -> Iterator[tuple[str, bytes]]:
        """Every locally stored blob in one part."""
        return self.local.scan(part)

    def refresh(self, digest: str) -> bool:
        """Ask the peers again for this content's keys wrapped since it was fetched."""
        return self._fetch(digest)

    def delete(self, digest: str) -> bool:
        """Remove local content (erasure)."""
        return self.local.delete(digest)

    def iter_digests(self) -> Iterator[str]:
        """Every locally stored digest."""
        return self.local.iter_digests()

    def close(self) -> None:
        """Close the local store."""
        self.local.close()


class NetworkNode:
    """A running network node: workspace, etcd orderer, peer API and network duties."""

    def __init__(self, root: Path, config: NetworkConfig) -> None:
        self.root = root
        self.config = config
        self.alarms: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.RLock()
        # Serialises commits from the follower and from catching up. Not ``_lock``: the
        # node runs block listeners (``_on_block``, which takes ``_lock``) on its store
        # thread while ``commit`` waits for that very block.
        self._commit_lock = threading.Lock()
        first = first_etcd_member(root, config.org, len(config.etcd))
        self._etcd = EtcdClient(config.etcd, first=first)
        # Status duties use their own client with a short timeout, so a lost quorum does not
        # keep the status file from being refreshed.
        self._etcd_status = EtcdClient(config.etcd, timeout=0.5, first=first)
        self.orderer: EtcdOrderer | None = None
        self.ws: Workspace | None = None
        self._blobs: BlobStore | None = None
        self._log: BlockLog | None = None
        self._to_publish: list[Checkpoint] = []
        self._ckpt_seen: set[tuple[int, str]] = set()
        self._server: PeerServer | None = None
        self._peers: PeerClient | None = None
        self._status_thread: threading.Thread | None = None
        self.load: LoadGenerator | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, *, serve: bool = True, cut_blocks: bool = True) -> NetworkNode:
        """Open a node folder, join the etcd-ordered chain and start the peer API."""
        net = cls(root, NetworkConfig.load(root))
        cfg = net.config

        def factory(node: Any, org: str, signer: Any) -> EtcdOrderer:
            net.orderer = EtcdOrderer(
                net._etcd,
                node.network_id,
                net,
                org,
                signer,
                clock=node.clock,
                max_txs=min(cfg.max_block_txs, node.genesis.policy["max_block_txs"]),
                window=cfg.window,
                lease_ttl=cfg.lease_ttl,
                cut_blocks=cut_blocks,
            )
            return net.orderer

        genesis = Genesis.from_bytes(DataDir(root).genesis_path.read_bytes())
        # Only the genesis orderers' keys may sign blocks; other organisations just follow.
        cut_blocks = cut_blocks and cfg.org in genesis.orderers
        net.ws = Workspace.open(root, orderer_factory=factory)
        try:
            ws = net.ws
            # Content this node misses is fetched from peers on read (see PeerBlobStore).
            net._blobs = ws.node.blobs
            ws.node.blobs = PeerBlobStore(net._blobs, net.fetch_content)
            net._log = BlockLog.build(ws.node.store)
            ws.node.add_listener(net._on_block)
            identity = ws.org_identities[cfg.org]
            net._peers = PeerClient(ws.node.network_id, cfg.org, identity.signer)
            if serve:
                host, port = cfg.listen.rsplit(":", 1)
                net._server = PeerServer(net, host, int(port))
                net._server.start()
            assert net.orderer is not None
            net.orderer.start()
            net._status_thread = threading.Thread(
                target=net._status_loop, name="rekam-net-status", daemon=True
            )
            net._status_thread.start()
        except BaseException:
            net.close()
            raise
        return net

    def close(self) -> None:
        """Stop network duties, the peer API and the node (the orderer gives up its lease)."""
        self._stop.set()
        if self._status_thread is not None:
            self._status_thread.join(timeout=10)
        if self._server is not None:
            self._server.stop()
        if self.ws is not None:
            self.ws.close()
        if self._peers is not None:
            self._peers.close()
        self._etcd_status.close()

    def __enter__(self) -> NetworkNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workspace(self) -> Workspace:
        """The node's workspace (use cases: records, consent, admin, audit)."""
        assert self.ws is not None
        return self.ws

    @property
    def network_id(self) -> str:
        """The network id (for the peer API)."""
        return self.workspace.node.network_id

    @property
    def local_blobs(self) -> BlobStore:
        """The content this node holds itself (no fetching from peers)."""
        assert self._blobs is not None
        return self._blobs

    # -- the orderer's view of this node (rekam.ordering.etcd.Chain) ----------------------

    def committed_head(self) -> Head:
        """The node's last committed block."""
        head = self.workspace.node.head
        return Head(head.height, head.hash, head.time)

    def block_hash(self, height: int) -> str | None:
        """The hash of the committed block at a height."""
        for index in self.workspace.node.store.block_index(height, height + 1):
            return index.hash
        return None

    def seen(self, tx_ids: Sequence[str]) -> set[str]:
        """Which transactions the committed chain holds already.

        Read on the store's second connection, so the cutter does not wait while a block is
        written; a block being written may not show yet, and the cutter counts the
        transactions of the blocks it cut that its node has not stored itself.
        """
        store = self.workspace.node.store
        if is_fetching(store):
            _, found = store.fetch({}, tx_ids)
            return {tx_id for tx_id, present in found.items() if present}
        store.prefetch({}, tx_ids)
        return {t for t in tx_ids if store.tx_seen(t)}

    def commit(self, block: Block) -> None:
        """Validate and store the next block with the core's rules."""
        with self._commit_lock:
            if self.workspace.node.head.height + 1 == block.height:
                self.workspace.node.commit(block)

    def deliver(self, block: Block, txs: list[Transaction] | None) -> Future[BlockResult]:
        """Queue the next block in the node's staged pipeline (signatures, rules, storage)."""
        return self.workspace.node.deliver(block, txs)

    def catch_up(self, height: int, until: int) -> bool:
        """Fetch blocks ``height``.. (below ``until``) from peers, checking every one."""
        assert self._peers is not None
        progressed = False
        for org, url in self.peer_urls().items():
            try:
                raws = self._peers.blocks(url, height, until)
            except PeerError as exc:
                log.info("peer %s: %s", org, exc)
                continue
            for raw in raws:
                try:
                    block = Block.from_bytes(raw)
                    node = self.workspace.node
                    check_block(node.store, node.genesis, node.head, block)
                except LedgerError as exc:
                    self.alarm("bad_peer_block", height, f"peer {org} served a bad block: {exc}")
                    break
                try:
                    self.commit(block)
                except LedgerError as exc:
                    self.alarm("bad_peer_block", block.height, f"peer {org}: {exc}")
                    break
                progressed = True
            if progressed:
                return True
        return progressed

    def alarm(self, kind: str, height: int, detail: str) -> None:
        """Record and shout an alarm; a split view also stops this node accepting blocks."""
        entry = {"kind": kind, "height": height, "detail": detail, "time": int(time.time())}
        with self._lock:
            self.alarms.append(entry)
        log.error("ALARM %s at height %d: %s", kind, height, detail)
        with open(self.root / ALARM_FILE, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
        if kind == "split_view" and self.orderer is not None:
            self.orderer.halted = f"split view at height {height}"

    # -- the peer API's backend (rekam.net.peer.PeerBackend) ------------------------------

    def org_key(self, org: str) -> bytes | None:
        """An active organisation's signing key on this node's chain."""
        row = self.workspace.node.store.get("org", org)
        if row is None or not row["active"]:
            return None
        return b64d(row["sign_key"])

    def head_info(self) -> dict[str, Any]:
        """This node's organisation, height and head hash."""
        head = self.workspace.node.head
        return {"org": self.config.org, "height": head.height, "hash": head.hash}

    def blocks_bytes(self, start: int, end: int) -> list[bytes]:
        """Transport bytes of committed blocks."""
        return [b.to_bytes() for b in self.workspace.node.store.iter_blocks(start, end)]

    def content_for(self, org: str, record: str, version: int) -> dict[str, Any] | None:
        """Content and the wrapped keys ``org`` may hold: its own, its members', its patients'."""
        store = self.workspace.node.store
        row = store.get("record_version", f"{record}@{version}")
        if row is None:
            return None
        candidates = [org, *[key for key, _ in store.query("member", {"org": org})]]
        patient = store.get("patient", row["patient"])
        if patient is not None and patient["home_org"] == org:
            candidates.append(row["patient"])
        keys = [
            (who, wrapped)
            for who in candidates
            if (wrapped := store.get_wrapped_key(record, version, who)) is not None
        ]
        if not keys:
            return None
        # Only what this node holds: asking further peers from here could bounce a request
        # around the network.
        blob = self.local_blobs.get(row["content_hash"])
        if blob is None:
            return None
        return {"blob": blob, "keys": keys}

    # -- content --------------------------------------------------------------------------

    def fetch_content(self, digest: str) -> bool:
        """Fetch the content with this on-chain hash from peers (``PeerBlobStore``'s misses).

        True when the node now holds it. Content no record version on this chain points at,
        or of an erased record, is never fetched.
        """
        store = self.workspace.node.store
        # content_hash has no index: this scans the version table, once per missing version.
        for _, row in store.query("record_version", {"content_hash": digest}):
            record = store.get("record", row["record"])
            if record is None or record["erased"]:
                continue
            if self.ensure_content(str(row["record"]), int(row["version"])):
                return True
        return False

    def ensure_content(self, record: str, version: int) -> bool:
        """Fetch a version's content and this node's keys from the author's or custodian's node.

        The authoring organisation's node is asked first, then the patient's home
        organisation's, then any other peer. The content is stored only when its SHA-256
        equals the on-chain hash (a peer serving other bytes is reported with the
        ``bad_peer_content`` alarm and the next peer is asked), and only wrapped keys meant for
        this organisation, its members or its patients are kept. Asking again for content the
        node holds picks up keys wrapped for it since (a later consent). True when the node
        now holds the content.
        """
        assert self._peers is not None
        store = self.workspace.node.store
        row = store.get("record_version", f"{record}@{version}")
        if row is None:
            return False
        author = store.get("member", row["author"])
        patient = store.get("patient", row["patient"])
        sources = [o for o in (author and author["org"], patient and patient["home_org"]) if o]
        urls = self.peer_urls()
        for org in dict.fromkeys([*sources, *sorted(urls)]):
            if org == self.config.org or org not in urls:
                continue
            try:
                found = self._peers.content(urls[org], record, version)
            except PeerError as exc:
                log.info("content from %s: %s", org, exc)
                continue
            if found is None:
                continue
            blob, keys = found
            if hashlib.sha256(blob).hexdigest() != row["content_hash"]:
                self.alarm("bad_peer_content", 0, f"peer {org} served content with a wrong hash")
                continue
            self.local_blobs.put(blob)
            mine = [(record, version, who, key) for who, key in keys if self._ours(who)]
            store.put_wrapped_keys(mine)
            return True
        return self.local_blobs.get(row["content_hash"]) is not None

    def _ours(self, principal: str) -> bool:
        """This organisation, one of its members or one of its patients."""
        if principal == self.config.org:
            return True
        store = self.workspace.node.store
        member = store.get("member", principal)
        if member is not None:
            return bool(member["org"] == self.config.org)
        patient = store.get("patient", principal)
        return patient is not None and patient["home_org"] == self.config.org

    # -- peers, checkpoints, status -------------------------------------------------------

    def peer_urls(self) -> dict[str, str]:
        """Other organisations' peer API addresses: configured, then as registered in etcd."""
        urls = dict(self.config.peers)
        assert self.orderer is not None
        try:
            for kv in self._etcd.range(
                self.orderer.keys.nodes, prefix_end(self.orderer.keys.nodes)
            ):
                doc = json.loads(kv.value)
                urls.setdefault(str(doc["org"]), str(doc["url"]))
        except EtcdError:
            pass  # etcd down: the configured peers still serve blocks
        urls.pop(self.config.org, None)
        return urls

    def _on_block(self, block: Block, result: BlockResult) -> None:
        """Extend the block log; sign a checkpoint at every ``checkpoint_every`` blocks."""
        assert self._log is not None
        root = results_root([(r.tx_id, r.code) for r in result.results])
        self._log.results.append(root)
        self._log.log.append(leaf_hash(block_leaf(block.hash, root)))
        if block.height % self.config.checkpoint_every:
            return
        body = {
            "network": self.network_id,
            "height": block.height,
            "head": block.hash,
            "blocks_root": self._log.root(block.height + 1).hex(),
        }
        signer = self.workspace.org_identities[self.config.org].signer
        checkpoint = Checkpoint(
            body, ((self.config.org, signer.sign(Checkpoint(body, ()).message())),)
        )
        self.workspace.node.store.put_checkpoint(checkpoint)
        with self._lock:
            self._to_publish.append(checkpoint)

    def _status_loop(self) -> None:
        rounds = 0
        while not self._stop.wait(0.5):
            self._write_status()
            rounds += 1
            # etcd is written through Raft (a disk sync on every member): registering and
            # reading checkpoints once a second is plenty, the local file twice.
            if rounds % 2:
                continue
            try:
                self._publish()
                self._compare_checkpoints()
            except EtcdError as exc:
                log.debug("status: %s", exc)
            except Exception:
                log.exception("network status duty failed")

    def _publish(self) -> None:
        assert self.orderer is not None
        keys = self.orderer.keys
        head = self.workspace.node.head
        info = {
            "org": self.config.org,
            "url": self.config.url,
            "height": head.height,
            "hash": head.hash,
            "seen": int(time.time()),
        }
        self._etcd_status.put(keys.nodes + self.config.org.encode(), json.dumps(info).encode())
        with self._lock:
            pending, self._to_publish = self._to_publish, []
        for checkpoint in pending:
            key = keys.checkpoint(checkpoint.body["height"], self.config.org)
            self._etcd_status.put(key, json.dumps(checkpoint.to_json()).encode())

    def _compare_checkpoints(self) -> None:
        """Check others' checkpoints against this chain; a different head is a split view."""
        assert self.orderer is not None
        keys = self.orderer.keys
        head = self.workspace.node.head.height
        for kv in self._etcd_status.range(keys.checkpoints, keys.checkpoints + b"%012d0" % head):
            height_s, org = kv.key[len(keys.checkpoints) :].decode().split("/", 1)
            height = int(height_s)
            if org == self.config.org or (height, org) in self._ckpt_seen:
                continue
            try:
                checkpoint = Checkpoint.from_json(json.loads(kv.value))
            except (LedgerError, ValueError):
                continue
            key = self.org_key(org)
            if key is None or org not in checkpoint.valid_signers({org: key}):
                continue  # not signed by who it claims: ignore, it proves nothing
            self._ckpt_seen.add((height, org))
            mine = self.block_hash(height)
            assert self._log is not None
            if (
                mine != checkpoint.body["head"]
                or self._log.root(height + 1).hex() != (checkpoint.body["blocks_root"])
            ):
                self.alarm("split_view", height, f"{org} signed a different head for this height")
                continue
            self.workspace.node.store.put_checkpoint(checkpoint)

    def status(self) -> dict[str, Any]:
        """This node's head, role, alarms and view of etcd."""
        head = self.workspace.node.head
        orderer = self.orderer
        return {
            "org": self.config.org,
            "url": self.config.url,
            "height": head.height,
            "hash": head.hash,
            "leading": bool(orderer and orderer.leading),
            "blocks_cut": orderer.blocks_cut if orderer else 0,
            "halted": orderer.halted if orderer else None,
            "etcd_error": orderer.etcd_error if orderer else None,
            "alarms": list(self.alarms),
            "load": self.load.stats() if self.load is not None else None,
            "pid": os.getpid(),
            "time": time.time(),
        }

    def _write_status(self) -> None:
        _atomic_write(self.root / STATUS_FILE, json.dumps(self.status()) + "\n")

    def wait_for_height(self, height: int, timeout: float = 30.0) -> bool:
        """Wait (bounded) until this node has committed ``height``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.workspace.node.head.height >= height:
                return True
            time.sleep(0.01)
        return False


class LoadGenerator:
    """A steady write load from this node: pre-signed record writes by a load-test member.

    Every acknowledged transaction id is appended to ``log_path`` (fsynced) so a test can
    check later that no acknowledged write was lost. Refusals are counted with their reason.
    """

    def __init__(self, net: NetworkNode, rate: float, log_path: Path) -> None:
        self.net = net
        self.rate = rate
        self.log_path = log_path
        self.acked = 0
        self.refused: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rekam-load", daemon=True)

    def stats(self) -> dict[str, Any]:
        """Acknowledged and refused counts (refusals by reason)."""
        with self._lock:
            return {"acked": self.acked, "refused": dict(self.refused)}

    def start(self) -> None:
        """Enrol the load member and patient, then submit at the set rate."""
        self.net.load = self
        ws = self.net.workspace
        org = ws.actor(self.net.config.org)
        member = ws.admin.enrol_member(org, "doctor", "load-pass")
        self._doctor = ws.actor(member.id, "load-pass")
        self._patient = ws.admin.register_patient(org, "load-pass")[0].id
        self._blob = ws.node.blobs.put(os.urandom(600))
        self._thread.start()

    def stop(self) -> None:
        """Stop submitting (outstanding futures still log when they resolve)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _tx(self) -> Transaction:
        ws = self.net.workspace
        body = {
            "record": new_id("record"),
            "version": 1,
            "patient": self._patient,
            "resource_type": "Observation",
            "content_hash": self._blob,
            "content_size": 600,
            "basis": "organisation",
            "basis_ref": None,
        }
        return make_tx(
            ws.node.network_id,
            "record.write",
            self._doctor.id,
            self._doctor.identity.signer,
            body,
            ws.node.clock(),
        )

    def _done(self, tx_id: str, ok: bool, reason: str) -> None:
        with self._lock:
            if ok:
                self.acked += 1
                with open(self.log_path, "a", encoding="utf-8") as out:
                    out.write(tx_id + "\n")
                    out.flush()
                    os.fsync(out.fileno())
            else:
                self.refused[reason] = self.refused.get(reason, 0) + 1

    def _run(self) -> None:
        tick = 0.05
        per_tick = max(1, round(self.rate * tick))
        node = self.net.workspace.node
        while not self._stop.wait(tick):
            for _ in range(per_tick):
                if self._stop.is_set():
                    break
                tx = self._tx()
                try:
                    future = node.submit(tx)
                except Exception as exc:
                    self._done(tx.tx_id, False, type(exc).__name__)
                    break
                future.add_done_callback(functools.partial(self._resolved, tx.tx_id))

    def _resolved(self, tx_id: str, future: Future[TxResult]) -> None:
        error = future.exception()
        if error is not None:
            self._done(tx_id, False, type(error).__name__)
        else:
            result = future.result()
            self._done(tx_id, result.valid, result.code)


def first_etcd_member(root: Path, org: str, members: int) -> int:
    """Which etcd member this node talks to first: founders take one each, in turn.

    Every node lists the members in the same order; starting them all at the first one made
    that member serve every gateway request (JSON and base64 work, as much CPU as a node).
    Founding organisations go round the members in the genesis order; an organisation that
    joined later gets one by a hash of its id.
    """
    try:
        founders = [
            str(o["org"]) for o in Genesis.from_bytes(DataDir(root).genesis_path.read_bytes()).orgs
        ]
    except (OSError, LedgerError, KeyError, TypeError, ValueError):
        founders = []
    if org in founders:
        return founders.index(org) % max(1, members)
    return zlib.crc32(org.encode()) % max(1, members)


class CommitLog:
    """A block listener writing ``<unix time> <tx id> ...`` per committed block (benchmarks)."""

    def __init__(self, path: Path) -> None:
        self._out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the node

    def __call__(self, block: Block, result: BlockResult) -> None:
        """Append one line for the block (ids only: nothing identifying)."""
        ids = " ".join(r.tx_id for r in result.results)
        self._out.write(f"{time.time():.6f} {ids}\n")
        self._out.flush()


def read_commit_log(path: Path) -> dict[str, float]:
    """When each transaction committed, from a ``CommitLog`` file."""
    seen: dict[str, float] = {}
    if not path.is_file():
        return seen
    for line in path.read_text("utf-8").splitlines():
        parts = line.split()
        if len(parts) < 2 or not line.endswith(parts[-1]):
            continue
        when = float(parts[0])
        for tx_id in parts[1:]:
            seen.setdefault(tx_id, when)
    return seen


def read_status(root: Path) -> dict[str, Any] | None:
    """A running node's last written status, or None."""
    path = root / STATUS_FILE
    try:
        doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return doc


def cluster_view(root: Path) -> dict[str, Any]:
    """Status from etcd: the ordered head, every registered node's head and lag, member health."""
    config = NetworkConfig.load(root)
    network = json.loads((root / "rekam.json").read_text("utf-8"))["network"]
    client = EtcdClient(config.etcd, timeout=1.0)
    try:
        keys = Keys(network)
        view: dict[str, Any] = {"members": client.member_status()}
        try:
            kv = client.get(keys.head)
            head = Head.from_bytes(kv.value) if kv else None
            view["ordered"] = {"height": head.height, "hash": head.hash} if head else None
            leader = client.get(keys.leader)
            view["cutter"] = leader.value.decode() if leader else None
            nodes = []
            for kv in client.range(keys.nodes, prefix_end(keys.nodes)):
                doc = json.loads(kv.value)
                if head is not None:
                    doc["lag"] = head.height - int(doc["height"])
                nodes.append(doc)
            view["nodes"] = nodes
        except EtcdError as exc:
            view["error"] = str(exc)
        return view
    finally:
        client.close()


# -- adding an organisation ---------------------------------------------------------------
#
# A new organisation makes its own keys and node folder (``prepare_join``) and hands its
# public keys to the network. An existing organisation proposes the ``org.enrol``
# transaction, others cosign it until a majority of active organisations has signed (the
# ledger's quorum rule), and any of them submits it to etcd. Once it is committed, the new
# node catches up and takes part; it does not cut blocks (only genesis orderers sign blocks).


def prepare_join(
    out: Path,
    genesis_file: Path,
    spec: OrgSpec,
    etcd: Sequence[str],
    listen: str,
    *,
    kdf: str = "standard",
) -> dict[str, str]:
    """Create a new organisation's node folder and keys; returns its public enrolment request."""
    spec.check()
    genesis = Genesis.from_bytes(genesis_file.read_bytes())
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise DataDirError(f"{out} is not empty; choose a new folder")
    datadir = DataDir(out)
    config: dict[str, Any] = {
        "format": CONFIG_FORMAT,
        "store": "sqlite:///chain.db",
        "kdf": kdf,
        "orderer": spec.org,
        "orgs": {},
        "network": genesis.network_id,
    }
    datadir.write_config(config)
    passphrase = secrets.token_urlsafe(24)
    sign_pub, enc_pub = datadir.create_keystore(spec.org, passphrase, label=spec.org)
    secret = datadir.write_secret(spec.org, passphrase)
    config["orgs"][spec.org] = (
        f"{datadir.keystore_uri(spec.org)}?passphrase-file={secret.relative_to(out)}"
    )
    datadir.write_config(config)
    datadir.set_label(spec.org, spec.label)
    datadir.genesis_path.write_bytes(genesis.to_bytes())
    store = open_store(datadir.store_url())
    try:
        store.initialise(genesis_block(genesis), genesis_delta(genesis))
    finally:
        store.close()
    NetworkConfig(spec.org, list(etcd), listen).save(out)
    return {
        "org": spec.org,
        "kind": spec.kind,
        "sign_key": b64e(sign_pub),
        "enc_key": b64e(enc_pub),
    }


def _org_signer(folder: Path) -> tuple[str, Signer, Genesis]:
    config = NetworkConfig.load(folder)
    uri = DataDir(folder).config()["orgs"][config.org]
    genesis = Genesis.from_bytes(DataDir(folder).genesis_path.read_bytes())
    return config.org, load_identity(uri, folder).signer, genesis


def propose_org(folder: Path, request: Mapping[str, str]) -> dict[str, Any]:
    """An ``org.enrol`` transaction for a request, signed by this folder's organisation."""
    org, signer, genesis = _org_signer(folder)
    body = {k: request[k] for k in ("org", "kind", "sign_key", "enc_key")}
    tx = unsigned_tx(genesis.network_id, "org.enrol", org, body, now_ms())
    return {"tx": tx, "sigs": [_signature(tx, org, signer)]}


def cosign(folder: Path, proposal: Mapping[str, Any]) -> dict[str, Any]:
    """Add this folder's organisation's signature to a proposal (read it before signing)."""
    org, signer, _ = _org_signer(folder)
    sigs = [s for s in proposal["sigs"] if s["by"] != org]
    return {"tx": proposal["tx"], "sigs": [*sigs, _signature(proposal["tx"], org, signer)]}


def _signature(tx: Mapping[str, Any], org: str, signer: Signer) -> dict[str, str]:
    message = SIGNING_DOMAIN + canonical(tx)
    return {"by": org, "key": b64e(signer.public_key), "sig": b64e(signer.sign(message))}


def submit_proposal(folder: Path, proposal: Mapping[str, Any]) -> str:
    """Submit a (cosigned) proposal to the ordering service; returns its transaction id."""
    config = NetworkConfig.load(folder)
    tx = Transaction.decode(canonical({"tx": proposal["tx"], "sigs": proposal["sigs"]}))
    client = EtcdClient(config.etcd)
    try:
        client.put(Keys(tx.network).tx(tx.tx_id), tx.raw)
    finally:
        client.close()
    return tx.tx_id
