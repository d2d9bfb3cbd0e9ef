"""The composition root: a node opened on a data folder, with its adapters wired in.

``Workspace.create`` founds a new embedded network (genesis, organisation keys, store);
``Workspace.open`` opens an existing folder. The workspace holds the node's own organisation
identities (loaded through signer references, never from the database) and hands out the
use-case services. It is the only place that picks concrete adapters.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rekam.blobs import BlobStoreFormatError, SqliteBlobStore
from rekam.crypto import Identity, Signer, load_identity
from rekam.encoding import b64e
from rekam.ledger.block import Genesis, genesis_block
from rekam.ledger.tx import ORG_KINDS, Transaction, id_kind, make_tx
from rekam.ledger.validate import TxResult, genesis_delta
from rekam.ordering.solo import SoloOrderer
from rekam.service.admin import AdminService
from rekam.service.audit import AuditService
from rekam.service.consent import ConsentService
from rekam.service.datadir import CONFIG_FORMAT, DataDir, DataDirError, FolderLock
from rekam.service.errors import RejectedError
from rekam.service.node import Node, NotOrderedHere, now_ms
from rekam.service.patient_index import PatientIndex
from rekam.service.ports import Orderer
from rekam.service.records import RecordService
from rekam.storage import open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """A principal acting through this node, with its keys unlocked for this session."""

    id: str
    identity: Identity

    @property
    def kind(self) -> str:
        """org, member or patient."""
        return str(id_kind(self.id))


@dataclass(frozen=True)
class OrgSpec:
    """A founding organisation: its public slug, kind and display label."""

    org: str
    kind: str
    label: str

    def check(self) -> None:
        """Raise DataDirError for an unusable slug or kind."""
        if id_kind(self.org) != "org":
            raise DataDirError(
                f"organisation id {self.org!r} must be a lowercase slug (a-z, 0-9, -)"
            )
        if self.kind not in ORG_KINDS:
            raise DataDirError(f"organisation kind must be one of {', '.join(ORG_KINDS)}")


def open_blob_store(datadir: DataDir) -> SqliteBlobStore:
    """The folder's content store, with the content of a first-format folder moved into it.

    Folders of the first format kept each blob in its own file under ``blobs/``; the blobs
    move into ``content.db`` the first time the folder is opened (an interrupted move is
    finished the next time). A content file of a newer format is refused.
    """
    try:
        blobs = SqliteBlobStore(datadir.content_path)
    except BlobStoreFormatError as exc:
        raise DataDirError(str(exc)) from None
    if datadir.legacy_blob_dir.is_dir():
        try:
            moved = blobs.import_directory(datadir.legacy_blob_dir)
        except BaseException:
            blobs.close()
            raise
        log.info("moved %d blobs from the blobs folder into content.db", moved)
    return blobs


class _RefusingOrderer:
    """The orderer of a network node's folder opened without the network (to read, verify
    or inspect it): every write is refused. A solo orderer here would cut blocks of its own
    and fork this node away from the chain the network ordered."""

    def submit(self, tx: Transaction) -> None:
        """Refuse: writes on a network node are ordered through etcd by the node itself."""
        raise NotOrderedHere(
            "this folder is a node of an etcd-ordered network; write through the network "
            "(stop `rekam network run` and repeat the command, or use the running node's "
            "portal and API)"
        )

    def close(self) -> None:
        """Nothing to stop."""


class Workspace:
    """A node on a data folder: store, blobs, node, orderer and local organisation keys."""

    def __init__(
        self, datadir: DataDir, node: Node, orgs: dict[str, Identity], lock: FolderLock
    ) -> None:
        self.datadir = datadir
        self.node = node
        self.org_identities = orgs
        self._lock = lock
        self.records = RecordService(self)
        self.consent = ConsentService(self)
        self.admin = AdminService(self)
        self.audit = AuditService(self)
        # Node-local keyed search index of Patient resources (filled by RecordService).
        self.patient_index = PatientIndex(datadir.root)
        node.add_listener(self.records.on_block)
        node.add_listener(self.consent.on_block)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        network_name: str,
        orgs: Sequence[OrgSpec],
        *,
        kdf: str = "standard",
        store_url: str | None = None,
        block_max_txs: int = 500,
        block_max_wait_ms: int = 20,
        sig_processes: int = 0,
    ) -> Workspace:
        """Found a new network in an empty folder: keys, genesis, store; then open it."""
        for spec in orgs:
            spec.check()
        if len({o.org for o in orgs}) != len(orgs):
            raise DataDirError("organisation ids must be distinct")
        root.mkdir(parents=True, exist_ok=True)
        datadir = DataDir(root)
        if datadir.exists() or any(p.name != "rekam.lock" for p in root.iterdir()):
            raise DataDirError(f"{root} is not empty; choose a new folder")
        config: dict[str, Any] = {
            "format": CONFIG_FORMAT,
            "store": store_url or "sqlite:///chain.db",
            "kdf": kdf,
            "orderer": orgs[0].org,
            "orgs": {},
            "block_max_txs": block_max_txs,
            "block_max_wait_ms": block_max_wait_ms,
            # Worker processes for signature checks (0: threads in the node process).
            "sig_processes": sig_processes,
        }
        datadir.write_config(config)
        founding = []
        for spec in orgs:
            passphrase = secrets.token_urlsafe(24)
            sign_pub, enc_pub = datadir.create_keystore(spec.org, passphrase, label=spec.org)
            secret = datadir.write_secret(spec.org, passphrase)
            config["orgs"][spec.org] = (
                f"{datadir.keystore_uri(spec.org)}?passphrase-file={secret.relative_to(root)}"
            )
            datadir.set_label(spec.org, spec.label)
            founding.append(
                {
                    "org": spec.org,
                    "kind": spec.kind,
                    "sign_key": b64e(sign_pub),
                    "enc_key": b64e(enc_pub),
                }
            )
        genesis = Genesis.create(network_name, now_ms(), founding, [o.org for o in orgs])
        config["network"] = genesis.network_id
        datadir.write_config(config)
        datadir.genesis_path.write_bytes(genesis.to_bytes())
        store = open_store(datadir.store_url())
        try:
            store.initialise(genesis_block(genesis), genesis_delta(genesis))
        finally:
            store.close()
        return cls.open(root)

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        wait_for_lock: bool = True,
        orderer_factory: Callable[[Node, str, Signer], Orderer] | None = None,
    ) -> Workspace:
        """Open an existing data folder and start its node and orderer (solo by default).

        ``orderer_factory(node, orderer_org, signer)`` plugs another orderer in (the network
        mode's etcd orderer, see rekam.service.network).
        """
        datadir = DataDir(root)
        config = datadir.config()
        lock = FolderLock(root, wait=wait_for_lock).__enter__()
        try:
            genesis = Genesis.from_bytes(datadir.genesis_path.read_bytes())
            if genesis.network_id != config.get("network"):
                raise DataDirError("genesis.json does not match the network id in rekam.json")
            store = open_store(datadir.store_url())
            node = Node(
                genesis,
                store,
                open_blob_store(datadir),
                sig_processes=int(config.get("sig_processes", 0)),
            )
            orgs = {org: load_identity(uri, root) for org, uri in config["orgs"].items()}
            orderer_id = config["orderer"]
            orderer: Orderer
            if orderer_factory is not None:
                orderer = orderer_factory(node, orderer_id, orgs[orderer_id].signer)
            elif datadir.in_network:
                orderer = _RefusingOrderer()
            else:
                orderer = SoloOrderer(
                    node.cut,
                    max_txs=min(
                        int(config.get("block_max_txs", 500)), genesis.policy["max_block_txs"]
                    ),
                    max_wait=int(config.get("block_max_wait_ms", 20)) / 1000,
                )
            node.attach_orderer(orderer, orderer_id, orgs[orderer_id].signer)
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        workspace = cls(datadir, node, orgs, lock)
        workspace.records.reconcile_erasures()
        return workspace

    def close(self) -> None:
        """Flush the orderer, close the stores and release the folder lock."""
        try:
            self.node.close()
        finally:
            self.node.blobs.close()
            self.patient_index.close()
            self._lock.__exit__(None, None, None)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- principals -----------------------------------------------------------------------

    def actor(self, principal: str, passphrase: str | None = None) -> Actor:
        """Unlock a principal: a local organisation, or a member/patient with a passphrase."""
        if principal in self.org_identities:
            return Actor(principal, self.org_identities[principal])
        if passphrase is None:
            raise DataDirError("a passphrase is needed to act as this member or patient")
        path = self.datadir.keystore_path(principal)
        if not path.is_file():
            raise DataDirError("no keystore for this principal in this data folder")
        identity = load_identity(
            self.datadir.keystore_uri(principal), self.datadir.root, passphrase=passphrase
        )
        return Actor(principal, identity)

    def submit(
        self,
        actor: Actor,
        tx_type: str,
        body: Mapping[str, Any],
        *,
        wrapped_keys: Sequence[tuple[str, int, str, bytes]] = (),
    ) -> TxResult:
        """Sign a transaction as ``actor``, commit it and return its result.

        Raises RejectedError when the network refuses it (the reason code says which rule).
        """
        tx = make_tx(
            self.node.network_id, tx_type, actor.id, actor.identity.signer, body, self.node.clock()
        )
        result = self.node.submit_wait(tx, wrapped_keys=wrapped_keys)
        if not result.valid:
            raise RejectedError(result.code, result.tx_id)
        return result

    @property
    def genesis(self) -> Genesis:
        """The network's genesis."""
        return self.node.genesis
